"""The IPython engine: IPython's InteractiveShell (magics, `!cmd`, its display system and tracebacks).

It speaks the same Engine interface as the plain Python engine; only evaluation, result
formatting, errors and is_complete differ. Output still goes through the worker's fd capture.
"""

from __future__ import annotations

from typing import Any

from taskkernel.engines.python import PythonEngine


class CellFailed(Exception):
    """Raised after IPython has shown an error, carrying Jupyter's error content."""

    def __init__(self, content: dict):
        super().__init__(content.get("evalue", ""))
        self.content = content


class IPythonEngine(PythonEngine):
    """Runs cells with IPython.core.interactiveshell.InteractiveShell."""

    def start(self) -> None:
        from IPython.core.displaypub import DisplayPublisher
        from IPython.core.interactiveshell import InteractiveShell

        engine = self

        class Publisher(DisplayPublisher):
            """display() in a cell becomes display_data on the feed."""

            def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kwargs):
                engine.emit("display_data", {"data": data, "metadata": metadata or {},
                                             "transient": transient or {}})

            def clear_output(self, wait=False):
                engine.emit("clear_output", {"wait": wait})

        from traitlets.config import Config

        config = Config()
        config.HistoryManager.hist_file = ":memory:"  # workers must not share one sqlite history file
        shell = InteractiveShell.instance(config=config, colors="nocolor", autoindent=False)
        shell.display_pub = Publisher(shell=shell, parent=shell)
        # the value is reported as execute_result by the protocol: no "Out[n]:" printed as well
        shell.displayhook.write_output_prompt = lambda: None
        shell.displayhook.write_format_data = lambda *args, **kwargs: None
        shell._showtraceback = self._record_traceback
        self.shell = shell
        self.namespace = shell.user_ns
        self._error: dict | None = None
        startup = self.spec.get("startup_code", "")
        if startup:
            shell.run_cell(startup, store_history=False, silent=True)

    def _record_traceback(self, etype, evalue, stb) -> None:
        self._error = {"ename": getattr(etype, "__name__", str(etype)), "evalue": str(evalue),
                       "traceback": list(stb)}

    def evaluate(self, code: str, cell_name: str) -> Any:
        self._error = None
        self.running_user_code = True
        try:
            result = self.shell.run_cell(code, store_history=True)
        finally:
            self.running_user_code = False
        if not result.success:
            raise CellFailed(self._error or {"ename": "Error", "evalue": repr(result.error_in_exec
                                                                           or result.error_before_exec),
                                             "traceback": []})
        return result.result

    def format_error(self, exc: BaseException) -> dict:
        if isinstance(exc, CellFailed):
            return exc.content
        return super().format_error(exc)

    def format_result(self, value: Any) -> tuple[dict, dict]:
        data, metadata = self.shell.display_formatter.format(value)
        return data, metadata
