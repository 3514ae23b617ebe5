"""The engine template: the protocol lives here, an engine implements only the hooks.

As in ipykernel's kernelbase, the base class numbers executions, turns exceptions in user code
into `error` content, turns the cell's value into an `execute_result` and collects the cell's
outputs; a subclass implements `evaluate`, `complete`, `inspect` and `is_complete`. Engines know
nothing of Celery, Redis or HTTP: they run in the sandboxed engine process (engines/process.py)
and emit (msg_type, content) pairs through a callback.
"""

from __future__ import annotations

import base64
import json
import signal
import threading
from collections.abc import Callable
from typing import Any

Emit = Callable[[str, dict], None]

# _repr_*_ method -> mime type, in the order Jupyter front ends prefer them
REPR_METHODS = (
    ("_repr_html_", "text/html"),
    ("_repr_markdown_", "text/markdown"),
    ("_repr_svg_", "image/svg+xml"),
    ("_repr_png_", "image/png"),
    ("_repr_jpeg_", "image/jpeg"),
    ("_repr_json_", "application/json"),
    ("_repr_latex_", "text/latex"),
    ("_repr_javascript_", "application/javascript"),
)
BINARY_MIMES = ("image/png", "image/jpeg")


def mime_bundle(obj: Any) -> tuple[dict, dict]:
    """The (data, metadata) mime bundle of an object, as IPython's display formatter builds it."""
    data: dict = {"text/plain": repr(obj)}
    metadata: dict = {}
    mimebundle = getattr(obj, "_repr_mimebundle_", None)
    if callable(mimebundle) and not isinstance(obj, type):
        try:
            got = mimebundle()
            if isinstance(got, tuple):
                got, meta = got
                metadata.update(meta or {})
            data.update({k: _encode(k, v) for k, v in (got or {}).items() if v is not None})
        except Exception:
            pass
    for method, mime in REPR_METHODS:
        fn = getattr(obj, method, None)
        if not callable(fn) or isinstance(obj, type) or mime in data:
            continue
        try:
            value = fn()
        except Exception:
            continue
        if isinstance(value, tuple):
            value, meta = value
            metadata[mime] = meta
        if value is not None:
            data[mime] = _encode(mime, value)
    return data, metadata


def _encode(mime: str, value: Any) -> Any:
    if mime in BINARY_MIMES and isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    if mime == "application/json" and isinstance(value, str):
        return json.loads(value)
    return value


class Engine:
    """Base class of every engine type; subclass it and implement the hooks."""

    language = "python"
    # complete/inspect/is_complete may wait (on a Jupyter kernel busy with a cell): the engine
    # process then answers each on a thread of its own, so an interrupt behind one is not held up
    requests_wait = False

    def __init__(self, spec: dict | None = None):
        self.spec = spec or {}
        self.execution_count = 0
        self._emit: Emit | None = None
        self.emit_elsewhere: Emit | None = None  # events between cells (a widget callback, a thread)
        self.silent = False  # the running cell's request said silent (no result, count not advanced)
        self.store_history = True
        self._running_user_code = False
        self.on_user_code: Callable[[bool], None] | None = None  # told when running_user_code changes
        self.interrupt_pending = False  # the running cell was interrupted before its code began
        self.allow_stdin = False  # the running cell's request allowed stdin (input_request)
        # an event under a parent of its own: (msg_type, content, parent, metadata, buffers); set by
        # the engine process, for engines whose events come from elsewhere (a Jupyter kernel's iopub)
        self.publish: Callable[..., None] = lambda *args, **kwargs: None

    @property
    def running_user_code(self) -> bool:
        """Whether the cell's own code runs (on the main thread): SIGINT raises KeyboardInterrupt
        only then. Set on the main thread; `on_user_code` hears of each change (the engine process
        puts Python's own SIGINT handler in place for exactly that time, see process.py)."""
        return self._running_user_code

    @running_user_code.setter
    def running_user_code(self, running: bool) -> None:
        if self.on_user_code is not None:
            self.on_user_code(running)  # before the flag the interrupter reads, both ways
        self._running_user_code = running

    def enter_user_code(self) -> None:
        """Mark the cell's own code as running; call it inside the try whose finally clears
        running_user_code. An interrupt that came while the cell was still being set up (parsed,
        compiled) takes effect here, so no interrupt of a running cell is ever lost."""
        self.running_user_code = True
        if self.interrupt_pending:
            self.interrupt_pending = False
            raise KeyboardInterrupt

    # --- hooks an engine implements --------------------------------------------------------

    def interrupt_user_code(self) -> None:
        """Interrupt the cell's running code: SIGINT to the engine's main thread, whose handler raises
        KeyboardInterrupt (an engine that runs the code elsewhere, a Jupyter kernel, overrides it)."""
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    def perform(self, op: str, request: dict, buffers: list[bytes]):
        """Answer a request op itself ((reply, buffers)), or NotImplemented for the engine process's own."""
        return NotImplemented

    def start(self) -> None:
        """Prepare the namespace (start-up code, display hooks); runs once in the engine process."""

    def evaluate(self, code: str, cell_name: str) -> Any:
        """Run `code`; return the value of its last expression (or None). Exceptions propagate."""
        raise NotImplementedError

    def format_error(self, exc: BaseException) -> dict:
        """`error` content (ename, evalue, traceback lines) for an exception raised by user code."""
        return {"ename": type(exc).__name__, "evalue": str(exc), "traceback": [f"{type(exc).__name__}: {exc}"]}

    def format_result(self, value: Any) -> tuple[dict, dict]:
        """The (data, metadata) mime bundle of a cell's value."""
        return mime_bundle(value)

    def after_cell(self) -> None:
        """Called after every cell, while its outputs are still collected (e.g. to show figures)."""

    def take_payload(self) -> list[dict]:
        """The execute_reply payloads the cell wrote (pager text, ask_exit), as ipykernel returns them."""
        return []

    def user_expressions(self, expressions: dict) -> dict:
        """execute_reply's user_expressions: each expression's mime bundle or error, as ipykernel's."""
        results = {}
        ns = getattr(self, "namespace", None)
        for name, expr in expressions.items():
            try:
                if ns is None:
                    raise NotImplementedError("this engine has no Python namespace")
                data, metadata = self.format_result(eval(str(expr), ns))  # noqa: S307 - the user's own code
                results[name] = {"status": "ok", "data": data, "metadata": metadata}
            except Exception as exc:
                results[name] = {"status": "error", **self.format_error(exc)}
        return results

    def complete(self, code: str, cursor_pos: int) -> dict:
        return {"matches": [], "cursor_start": cursor_pos, "cursor_end": cursor_pos, "metadata": {}}

    def inspect(self, code: str, cursor_pos: int, detail_level: int = 0) -> dict:
        return {"found": False, "data": {}, "metadata": {}}

    def is_complete(self, code: str) -> dict:
        return {"status": "unknown"}

    # --- the protocol -------------------------------------------------------------------------

    def display(self, *objs: Any, metadata: dict | None = None, display_id: str | bool | None = None,
                update: bool = False, clear: bool = False, **kwargs) -> "DisplayHandle | None":
        """Emit each object as display_data on the running cell (what `display()` in a cell calls).

        As IPython's display(): `display_id=True` makes a new id, and a DisplayHandle is returned
        whenever an id is given; `update=True` emits update_display_data for that id instead;
        `clear=True` clears the cell's output first (clear_output with wait).
        """
        if display_id is True:
            display_id = new_display_id()
        if clear:
            self.clear_output(wait=True)
        transient = {"display_id": display_id} if display_id else {}
        for obj in objs:
            data, meta = mime_bundle(obj)
            self.emit("update_display_data" if update else "display_data",
                      {"data": data, "metadata": {**meta, **(metadata or {})}, "transient": dict(transient)})
        return DisplayHandle(self, display_id) if display_id and not update else None

    def clear_output(self, wait: bool = False) -> None:
        """Clear the running cell's output; with `wait`, when its next output arrives (as in Jupyter)."""
        self.emit("clear_output", {"wait": bool(wait)})

    def emit(self, msg_type: str, content: dict) -> None:
        emit = self._emit or self.emit_elsewhere
        if emit is not None:
            emit(msg_type, content)

    def execute(self, code: str, emit: Emit, *, silent: bool = False, store_history: bool = True,
                user_expressions: dict | None = None) -> dict:
        """Run one cell, emitting execute_input, outputs and an error; return execute_reply content.

        As on ipykernel: `silent` shows no value and does not advance the execution count (nor
        does `store_history=False`); `user_expressions` are evaluated after a cell that succeeded.
        """
        self._emit = emit
        self.silent, self.store_history = silent, store_history and not silent
        if self.store_history:
            self.execution_count += 1
        count = self.execution_count
        if not silent:
            emit("execute_input", {"code": code, "execution_count": count})
        try:
            value = self.evaluate(code, f"<cell-{count}>")
            if value is not None and not silent:
                data, metadata = self.format_result(value)
                emit("execute_result", {"execution_count": count, "data": data, "metadata": metadata})
            self._after_cell_safely()
            return {"status": "ok", "execution_count": count,
                    "user_expressions": self.user_expressions(user_expressions or {}),
                    "payload": self.take_payload()}
        except BaseException as exc:  # noqa: BLE001 - user code may raise anything, even SystemExit
            if isinstance(exc, GeneratorExit):
                raise
            self._after_cell_safely()
            self.take_payload()  # a failed cell's payloads are dropped (the reply has no room for them)
            error = self.format_error(exc)
            emit("error", error)
            return {"status": "error", "execution_count": count, **error}
        finally:
            self._emit = None

    def _after_cell_safely(self) -> None:
        try:
            self.after_cell()
        except Exception as exc:  # a broken figure must not break the cell's reply
            self.emit("stream", {"name": "stderr", "text": f"[taskkernel] after_cell failed: {exc!r}\n"})


def new_display_id() -> str:
    import uuid

    return uuid.uuid4().hex


class DisplayHandle:
    """What `display(x, display_id=...)` returns: shows or updates that display (IPython's API)."""

    def __init__(self, engine: Engine, display_id: str):
        self.engine, self.display_id = engine, display_id

    def __repr__(self) -> str:
        return f"<DisplayHandle display_id={self.display_id}>"

    def display(self, obj: Any, **kwargs) -> None:
        self.engine.display(obj, display_id=self.display_id, **kwargs)

    def update(self, obj: Any, **kwargs) -> None:
        self.engine.display(obj, display_id=self.display_id, update=True, **kwargs)
