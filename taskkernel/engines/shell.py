"""IPython's InteractiveShell wired to an engine, as ipykernel's ZMQInteractiveShell is wired to ZMQ.

What IPython would print or ask a terminal for becomes an engine event or an execute_reply
payload instead, exactly where ipykernel makes the same substitution:

- the display publisher emits display_data, update_display_data (`display(..., display_id=...)`
  and `handle.update()`) and clear_output;
- the display hook emits execute_result and keeps IPython's own output cache (`_`, `__`, `Out`,
  a trailing `;` suppressing the value);
- the pager (`obj?`, `%pinfo`, `%prun`'s report) writes a `page` payload, `exit()` an `ask_exit`
  payload, `set_next_input` a `set_next_input` payload;
- `%matplotlib inline` works through matplotlib-inline's backend; GUI event loops (`qt`, `tk`)
  are refused, as there is no display in the sandbox;
- `get_ipython().kernel` and `'IPKernelApp' in get_ipython().config` are there, as libraries look
  for them to detect a notebook (tqdm.auto, ipywidgets' Output widget, plotly's renderer choice):
  the kernel object gives the parent request (`get_parent()`) and the comm manager.

Both engines use it: the ipython engine runs every cell with the shell, the python engine makes one
only when a cell needs IPython (engines/python.py).
"""

from __future__ import annotations

import base64
import importlib.machinery
import importlib.util
import json
import os
import sys
from typing import Any

from IPython.core import page
from IPython.core.autocall import ExitAutocall
from IPython.core.displayhook import DisplayHook
from IPython.core.displaypub import DisplayPublisher
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from traitlets import Any as AnyTrait
from traitlets import Type, default
from traitlets.config import Config

from taskkernel import messages

INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
GUI_FREE = (None, "inline", "agg")


class EnginePublisher(DisplayPublisher):
    """display(), update_display() and clear_output() become the engine's events."""

    def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kwargs) -> None:
        msg_type = "update_display_data" if update else "display_data"
        self.shell.engine.emit(msg_type, {"data": data, "metadata": metadata or {}, "transient": transient or {}})

    def clear_output(self, wait: bool = False) -> None:
        self.shell.engine.emit("clear_output", {"wait": bool(wait)})


class EngineDisplayHook(DisplayHook):
    """A cell's value becomes execute_result; IPython keeps `_`, `__`, `___` and `Out` itself."""

    def write_output_prompt(self) -> None:
        """No `Out[n]:` prompt: the front end draws its own."""

    def write_format_data(self, format_dict, md_dict=None) -> None:
        self.shell.engine.emit("execute_result", {"execution_count": self.prompt_count, "data": format_dict,
                                                  "metadata": md_dict or {}})


class EngineExitAutocall(ExitAutocall):
    """`exit()` / `quit()`, with ipykernel's `keep_kernel` argument."""

    def __call__(self, keep_kernel: bool = False) -> None:
        self._ip.keepkernel_on_exit = keep_kernel
        self._ip.ask_exit()


class EngineIOPub:
    """What `get_ipython().kernel.iopub_socket` is: a name for the feed, which Session.send takes."""

    def __repr__(self) -> str:
        return "<taskkernel feed (IOPub)>"


class EngineSession:
    """`get_ipython().kernel.session`: what code that publishes IOPub messages itself calls
    (`session.send(kernel.iopub_socket, "display_data", content, parent=...)`, as nbclient's
    update-display-id notebook and some libraries do). A message sent to the IOPub socket is an
    event of the engine, published on the feed under the request the calling thread works for
    (the worker keeps only the output types a cell may publish); to any other stream, nothing.
    """

    def __init__(self, kernel: "EngineKernel"):
        self.kernel = kernel
        self.session = messages.new_id()
        self.username = "taskkernel"

    def msg(self, msg_type: str, content: dict | None = None, parent: dict | None = None,
            header: dict | None = None, metadata: dict | None = None) -> dict:
        """A message as jupyter_client's Session.msg builds one (what `send` is given or sends)."""
        header = header or {"msg_id": messages.new_id(), "msg_type": msg_type, "session": self.session,
                            "username": self.username, "date": messages.now_iso(),
                            "version": messages.PROTOCOL_VERSION}
        parent_header = (parent or {}).get("header", parent or {})
        return {"header": header, "msg_id": header["msg_id"], "msg_type": header["msg_type"],
                "parent_header": dict(parent_header), "content": content if content is not None else {},
                "metadata": metadata or {}}

    def send(self, stream, msg_or_type, content: dict | None = None, parent: dict | None = None,
             ident=None, buffers=None, track: bool = False, header: dict | None = None,
             metadata: dict | None = None) -> dict:
        msg = msg_or_type if isinstance(msg_or_type, dict) else self.msg(msg_or_type, content, parent, header,
                                                                          metadata)
        if stream is self.kernel.iopub_socket:
            self.kernel.shell.engine.emit(msg["header"]["msg_type"], _json_ready(msg["content"]))
        return msg


def _json_ready(content: dict) -> dict:
    """Content as it travels (jupyter_client's Session sends its JSON): bytes become base64."""
    def default(value):
        if isinstance(value, (bytes, bytearray, memoryview)):
            return base64.b64encode(bytes(value)).decode("ascii")
        return repr(value)

    return json.loads(json.dumps(content, default=default))


class EngineKernel:
    """What `get_ipython().kernel` is to a library: the request being answered, the comms, and the
    IOPub socket with its session, for code that publishes messages itself."""

    implementation = "taskkernel"

    def __init__(self, shell: "EngineShell"):
        self.shell = shell
        self.iopub_socket = EngineIOPub()
        self.session = EngineSession(self)

    @property
    def comm_manager(self):
        from taskkernel.engines import comms

        return comms.manager()

    def get_parent(self, channel: str = "shell") -> dict:
        """The request the calling thread works for, as a message (ipykernel's get_parent); {} for none."""
        from taskkernel.engines import parents

        header = parents.current()
        return {"header": dict(header), "parent_header": {}, "metadata": {}, "content": {}} if header else {}

    @property
    def _parent_header(self) -> dict:  # ipykernel < 6 spelling, still read by some libraries
        return self.get_parent()


class EngineShell(InteractiveShell):
    """An InteractiveShell whose output goes to `engine` (an Engine: anything with `emit`)."""

    displayhook_class = Type(EngineDisplayHook)
    display_pub_class = Type(EnginePublisher)
    engine = AnyTrait(None, allow_none=True)
    keepkernel_on_exit: bool | None = None

    @property
    def kernel(self) -> EngineKernel:
        kernel = self.__dict__.get("_engine_kernel")
        if kernel is None:
            kernel = self.__dict__["_engine_kernel"] = EngineKernel(self)
        return kernel

    def get_parent(self) -> dict:
        return self.kernel.get_parent()

    @property
    def parent_header(self) -> dict:
        return self.get_parent()

    def set_parent(self, parent: dict) -> None:
        """ipykernel points its streams at `parent` here; an engine's threads know their parent already."""

    @default("exiter")
    def _exiter_default(self):
        return EngineExitAutocall(self)

    def init_environment(self) -> None:
        # as ipykernel: no terminal to page in, so subprocesses must not wait on a pager
        os.environ["PAGER"] = "cat"
        os.environ["GIT_PAGER"] = "cat"

    def init_hooks(self) -> None:
        super().init_hooks()
        self.set_hook("show_in_pager", page.as_hook(self._page_payload), 99)

    def _page_payload(self, strg, start: int = 0, screen_lines: int = 0, pager_cmd=None) -> None:
        data = strg if isinstance(strg, dict) else {"text/plain": strg}
        self.payload_manager.write_payload({"source": "page", "data": data, "start": max(0, start)})

    def ask_exit(self) -> None:
        """ipykernel stops its kernel process here; an engine lives on (its notebook is deleted or
        restarted through the API), so only the `ask_exit` payload tells the front end."""
        self.payload_manager.write_payload({"source": "ask_exit", "keepkernel": bool(self.keepkernel_on_exit)})

    def set_next_input(self, text: str, replace: bool = False) -> None:
        self.payload_manager.write_payload({"source": "set_next_input", "text": text, "replace": replace})

    def enable_gui(self, gui: str | None = None) -> None:
        if gui not in GUI_FREE:
            raise UsageError(f"the {gui!r} event loop needs a display, which a taskkernel engine does not have; "
                             "use %matplotlib inline")
        self.active_eventloop = gui

    def take_payload(self) -> list[dict]:
        """The payloads the running cell wrote, for its execute_reply; cleared for the next cell."""
        payload = self.payload_manager.read_payload()
        self.payload_manager.clear_payload()
        return payload


def announce_ipykernel() -> None:
    """Put ipykernel's shell module in sys.modules, loaded only when first touched (LazyLoader).

    tqdm.auto chooses its notebook bar when `ipykernel.zmqshell` is imported: it sees it, at no
    cost until something reads an attribute of it (then the real module loads). `ipykernel`
    itself is not announced: ipywidgets would then import it (ZMQ, jupyter_client: ~15 MiB) to
    read its version, where the `comm` package serves it as well. Without ipykernel installed,
    nothing is announced.
    """
    if "ipykernel" in sys.modules or "ipykernel.zmqshell" in sys.modules:
        return
    package = importlib.util.find_spec("ipykernel")
    if package is None or not package.submodule_search_locations:
        return
    shell = importlib.machinery.PathFinder.find_spec("ipykernel.zmqshell", list(package.submodule_search_locations))
    if shell is None:
        return
    shell.loader = importlib.util.LazyLoader(shell.loader)
    module = importlib.util.module_from_spec(shell)
    sys.modules[shell.name] = module
    shell.loader.exec_module(module)


def make_shell(engine: Any, user_ns: dict | None = None) -> EngineShell:
    """The process's one EngineShell (IPython's singleton, so `get_ipython()` finds it)."""
    if not os.environ.get("MPLBACKEND"):
        # as ipykernel does at start: matplotlib's default is the inline backend, below anything
        # the user chooses (matplotlib.use, %matplotlib, an engine file's [env])
        os.environ["MPLBACKEND"] = INLINE_BACKEND
    config = Config()
    config.HistoryManager.hist_file = ":memory:"  # workers must not share one sqlite history file
    config.IPKernelApp.kernel_class = "taskkernel"  # what tqdm.auto and others test for a notebook
    announce_ipykernel()
    shell = EngineShell.instance(config=config, colors="nocolor", autoindent=False, user_ns=user_ns)
    shell.engine = engine
    return shell
