"""The IPython engine: every cell runs through IPython's InteractiveShell, as on ipykernel.

Magics (`%timeit`, `%matplotlib inline`), shell escapes (`!ls`), `obj?`, top-level `await`,
IPython's display system and output cache, its tracebacks: the shell does it all, wired to the
engine's events by engines/shell.py. It speaks the same Engine interface as the plain Python
engine (completion and namespace operations are inherited from it).
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
    """Runs cells with the engine's EngineShell (an IPython InteractiveShell)."""

    def start(self) -> None:
        from taskkernel.engines.shell import make_shell

        shell = make_shell(self)
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
        """Run the cell with the shell; its display hook has already emitted the value, so None."""
        self._error = None
        try:
            self.enter_user_code()
            result = self.shell.run_cell(code, store_history=self.store_history, silent=self.silent)
        finally:
            self.running_user_code = False
        if not result.success:
            raise CellFailed(self._error or {"ename": "Error", "evalue": repr(result.error_in_exec
                                                                           or result.error_before_exec),
                                             "traceback": []})
        return None

    def format_error(self, exc: BaseException) -> dict:
        if isinstance(exc, CellFailed):
            return exc.content
        return super().format_error(exc)

    def user_expressions(self, expressions: dict) -> dict:
        return self.shell.user_expressions(expressions)

    def format_result(self, value: Any) -> tuple[dict, dict]:
        data, metadata = self.shell.display_formatter.format(value)
        return data, metadata

    def after_cell(self) -> None:
        """Figures are shown by matplotlib-inline's post_execute hook, inside run_cell, as on ipykernel."""

    def take_payload(self) -> list[dict]:
        return self.shell.take_payload()
