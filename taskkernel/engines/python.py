"""The plain Python engine: a namespace dict, REPL semantics, jedi completion, rich display.

Cells are plain Python, compiled and run by this engine (no IPython on the way of a cell that does
not need it: it costs nothing until then). A cell that is not valid Python but is valid IPython
(`%matplotlib inline`, `!ls`, `obj?`, `%%time`) is turned into Python by IPython's own input
transformers, and a cell that mentions IPython (`from IPython.display import clear_output`), gets
an IPython shell (engines/shell.py) over the same namespace, made once, so magics, IPython's
display functions and the pager behave as on the ipython engine. Top-level `await` works.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import linecache
import os
import rlcompleter
import sys
import threading
import time
import traceback
from typing import Any

from taskkernel.engines.base import Engine

COMPLETION_BUDGET_S = 2.0
TOP_LEVEL_AWAIT = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
IPYTHON_NAMES = ("IPython", "get_ipython")  # a cell mentioning one gets the IPython shell first
FIRST_COMPLETION_WAIT_S = 6.0  # jedi's import and first inference: ~3 s on a loaded 2-core machine


def _internal_dirs() -> tuple[str, ...]:
    """Where taskkernel's own code lives (its frames, such as the interrupt handler's, are not shown)."""
    dirs = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
    spec = importlib.util.find_spec("taskkernel.workers")
    if spec and spec.submodule_search_locations:
        dirs += [os.path.abspath(p) for p in spec.submodule_search_locations]
    return tuple(d + os.sep for d in dirs)


INTERNAL_DIRS = _internal_dirs()  # past this, jedi is skipped in favour of rlcompleter


class PythonEngine(Engine):
    """Evaluates cells in one persistent namespace, as the Python REPL does."""

    def __init__(self, spec: dict | None = None):
        super().__init__(spec)
        self.namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
        self.shell = None  # IPython's shell over self.namespace, made when a cell first needs it
        self._loop = None  # the asyncio loop of cells with top-level await (asyncio imported then)

    def start(self) -> None:
        self.namespace["display"] = self.display
        startup = self.spec.get("startup_code", "")
        if startup:
            exec(compile(startup, "<startup>", "exec"), self.namespace)

    # --- evaluate -----------------------------------------------------------------------------

    def evaluate(self, code: str, cell_name: str) -> Any:
        # a warning shows again in every cell that raises it, as on ipykernel (Python would show
        # it once per line number of the namespace)
        self.namespace.pop("__warningregistry__", None)
        if self.shell is None and any(name in code for name in IPYTHON_NAMES):
            self.ensure_shell()
        if self.shell is not None:
            # `get_ipython().execution_count` while a cell runs, as IPython's own run_cell leaves it:
            # the cell's number, or (IPython >= 9.8, which counts before running) one past it
            import IPython

            ahead = self.store_history and IPython.version_info >= (9, 8)
            self.shell.execution_count = self.execution_count + (1 if ahead else 0)
        try:
            tree = ast.parse(code, filename=cell_name, mode="exec")
        except SyntaxError:
            transformed = self._from_ipython_syntax(code)
            if transformed is None:
                raise
            code = transformed
            tree = ast.parse(code, filename=cell_name, mode="exec")
        linecache.cache[cell_name] = (len(code), None, code.splitlines(keepends=True), cell_name)
        last_expr = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last_expr = ast.Expression(tree.body.pop().value)
        body = compile(tree, cell_name, "exec", flags=TOP_LEVEL_AWAIT)
        try:
            self.enter_user_code()
            self._run(body)
            value = self._run(compile(last_expr, cell_name, "eval", flags=TOP_LEVEL_AWAIT)) if last_expr else None
        finally:
            self.running_user_code = False
        if value is not None:
            self.namespace["_"] = value
        return value

    def _run(self, code) -> Any:
        """eval() a compiled cell; one with top-level await runs on the engine's event loop."""
        result = eval(code, self.namespace)
        if code.co_flags & inspect.CO_COROUTINE:
            if self._loop is None:
                import asyncio  # ~2 MiB an engine pays only once a cell awaits

                self._loop = asyncio.new_event_loop()
            result = self._loop.run_until_complete(result)
        return result

    def _from_ipython_syntax(self, code: str) -> str | None:
        """The Python that IPython's input transformers make of `code` (magics, `!`, `?`), or None
        when they change nothing (the cell is simply not valid)."""
        from IPython.core.inputtransformer2 import TransformerManager

        transformed = TransformerManager().transform_cell(code)
        if transformed.rstrip("\n") == code.rstrip("\n"):
            return None
        self.ensure_shell()
        return transformed

    def ensure_shell(self):
        """IPython's shell over this namespace (`get_ipython()`), made on first use."""
        if self.shell is None:
            from taskkernel.engines.shell import make_shell

            self.shell = make_shell(self, user_ns=self.namespace)
        return self.shell

    def take_payload(self) -> list[dict]:
        return self.shell.take_payload() if self.shell is not None else []

    def format_error(self, exc: BaseException) -> dict:
        """A traceback of the user's frames only: the worker's own frames are cut off."""
        tb = exc.__traceback__
        while tb is not None and not tb.tb_frame.f_code.co_filename.startswith("<cell-"):
            tb = tb.tb_next
        if isinstance(exc, SyntaxError) or tb is None:
            lines = traceback.format_exception_only(type(exc), exc)
        else:
            frames = [f for f in traceback.extract_tb(tb) if not os.path.abspath(f.filename).startswith(INTERNAL_DIRS)]
            lines = ["Traceback (most recent call last):\n"] + traceback.format_list(frames) + \
                traceback.format_exception_only(type(exc), exc)
        text = "".join(lines).rstrip("\n")
        return {"ename": type(exc).__name__, "evalue": str(exc), "traceback": text.split("\n")}

    def after_cell(self) -> None:
        """Show the figures a cell drew with matplotlib, as the inline backend does (and, once a
        shell was made, run its post_execute hooks: matplotlib-inline's after `%matplotlib inline`)."""
        if self.shell is not None:
            self.shell.events.trigger("post_execute")
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is None:
            return
        import io

        for number in pyplot.get_fignums():
            figure = pyplot.figure(number)
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", bbox_inches="tight")
            self.display(_PNG(buffer.getvalue(), repr(figure)))
        pyplot.close("all")

    # --- introspection ------------------------------------------------------------------------

    def complete(self, code: str, cursor_pos: int) -> dict:
        """jedi's completions. jedi is warmed up by the first completion a notebook asks for, not at
        start (it costs ~45 MiB and seconds, which notebooks that never complete should not pay);
        rlcompleter answers if it is not ready within FIRST_COMPLETION_WAIT_S or fails."""
        cursor_pos = _clamp(cursor_pos, code)
        try:
            if not _jedi.ready.is_set():
                _jedi.warm_up()
                if not _jedi.ready.wait(FIRST_COMPLETION_WAIT_S):
                    raise TimeoutError("jedi is still warming up")
            matches, start = self._complete_jedi(code, cursor_pos)
        except Exception:
            matches, start = self._complete_rl(code, cursor_pos)
        return {"matches": matches, "cursor_start": start, "cursor_end": cursor_pos, "metadata": {},
                "status": "ok"}

    def _complete_jedi(self, code: str, cursor_pos: int) -> tuple[list[str], int]:
        import jedi

        line, column = _line_column(code, cursor_pos)
        started = time.monotonic()
        completions = jedi.Interpreter(code, [dict(self.namespace)]).complete(line, column)
        if time.monotonic() - started > COMPLETION_BUDGET_S:
            raise TimeoutError("jedi took too long")
        matches, start = [], cursor_pos
        for completion in completions:
            typed = len(completion.name_with_symbols) - len(completion.complete)
            start = cursor_pos - typed
            matches.append(completion.name_with_symbols)
        return matches, start

    def _complete_rl(self, code: str, cursor_pos: int) -> tuple[list[str], int]:
        prefix = code[:cursor_pos]
        token_start = len(prefix)
        while token_start > 0 and (prefix[token_start - 1].isalnum() or prefix[token_start - 1] in "._"):
            token_start -= 1
        token = prefix[token_start:]
        completer = rlcompleter.Completer(self.namespace)
        matches, state = [], 0
        dot = token.rfind(".") + 1  # attributes are offered from after the last dot, as jedi does
        while state < 1000:
            match = completer.complete(token, state)
            if match is None:
                break
            matches.append(match.rstrip("(")[dot:])
            state += 1
        return matches, token_start + dot

    def inspect(self, code: str, cursor_pos: int, detail_level: int = 0) -> dict:
        import jedi

        cursor_pos = _clamp(cursor_pos, code)
        line, column = _line_column(code, cursor_pos)
        script = jedi.Interpreter(code, [dict(self.namespace)])
        names = script.help(line, column) or script.infer(line, column)
        if not names:
            return {"status": "ok", "found": False, "data": {}, "metadata": {}}
        name = names[0]
        parts = []
        signatures = [s.to_string() for s in name.get_signatures()] if hasattr(name, "get_signatures") else []
        if signatures:
            parts.append("Signature: " + signatures[0])
        parts.append(f"Type:      {name.type}")
        doc = name.docstring(raw=True) or name.docstring()
        if doc:
            parts.append("Docstring:\n" + doc)
        return {"status": "ok", "found": True, "data": {"text/plain": "\n".join(parts)}, "metadata": {}}

    def is_complete(self, code: str) -> dict:
        """complete / incomplete (with an indent hint) / invalid, by IPython's rules, as ipykernel answers."""
        from IPython.core.inputtransformer2 import TransformerManager

        status, indent = TransformerManager().check_complete(code)
        reply = {"status": status}
        if status == "incomplete":
            reply["indent"] = " " * (indent or 0)
        return reply


class _JediWarmUp:
    """Imports jedi and runs one completion in a background thread, once per engine process."""

    def __init__(self):
        self.ready = threading.Event()
        self._started = threading.Lock()

    def warm_up(self) -> None:
        if self._started.acquire(blocking=False):
            threading.Thread(target=self._run, name="taskkernel-jedi", daemon=True).start()

    def _run(self) -> None:
        try:
            import jedi

            jedi.Interpreter("import os\nos.pa", [{}]).complete(2, 5)
            self.ready.set()
        except Exception:  # completion stays with rlcompleter
            pass


_jedi = _JediWarmUp()


class _PNG:
    """A PNG to display (what a matplotlib figure becomes at the end of a cell)."""

    def __init__(self, png: bytes, text: str):
        self.png, self.text = png, text

    def _repr_png_(self) -> bytes:
        return self.png

    def __repr__(self) -> str:
        return self.text


def _clamp(pos: int, code: str) -> int:
    return max(0, min(len(code), pos))


def _line_column(code: str, cursor_pos: int) -> tuple[int, int]:
    before = code[:cursor_pos]
    line = before.count("\n") + 1
    column = len(before) - (before.rfind("\n") + 1)
    return line, column
