"""Comms in the engine: the `comm` package's hooks, wired to the worker's socket (widgets, tqdm).

ipywidgets, tqdm.notebook and every other comm user call `comm.create_comm()` and
`comm.get_comm_manager()`, hooks the `comm` package leaves for a kernel to replace; ipykernel
replaces them with its own, and so does `install` here, the moment `comm` is first imported (a
notebook without widgets never loads it). What a comm publishes (comm_open, comm_msg,
comm_close, with buffers) becomes an engine event under the parent the calling thread works for
(engines/parents.py). What a front end sends reaches `deliver` on the engine's comm thread,
even while a cell runs, so a loop polling `slider.value` sees the slider move.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable

from taskkernel.engines import parents

# (msg_type, content, metadata, buffers, parent): how an event leaves the engine
Publish = Callable[[str, dict, dict, list, dict], None]

_publish: list[Publish] = []
_on_import: list[Callable[[], object]] = []  # run once `comm` is wired (the python engine makes its shell)
_manager: list = []  # the engine's one CommManager, once `comm` is imported


def _wire(comm) -> None:
    """Replace the hooks of the just-imported `comm` module with the engine's."""
    from comm.base_comm import BaseComm, CommManager

    class EngineComm(BaseComm):
        """A comm whose messages go out on the engine's socket."""

        kernel = True  # ipywidgets asks `comm.kernel is not None` before it sends state

        def publish_msg(self, msg_type: str, data=None, metadata=None, buffers=None, **keys) -> None:
            content = {"data": data or {}, "comm_id": self.comm_id, **keys}  # comm_open: target_name too
            if _publish:
                _publish[0](msg_type, content, metadata or {}, [bytes(b) for b in buffers or ()], parents.current())

    _manager[:] = [CommManager()]
    comm.create_comm = EngineComm
    comm.get_comm_manager = lambda: _manager[0]
    for callback in _on_import:
        callback()


class _WireOnImport:
    """Finds `comm` as usual, then wires it before anyone else sees it (a meta path finder and
    loader by protocol: importlib.abc would load importlib.resources, tempfile and more)."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "comm":
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec("comm")
        finally:
            sys.meta_path.insert(0, self)
        if spec is None:
            return None
        self._loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        _wire(module)
        sys.meta_path[:] = [f for f in sys.meta_path if f is not self]


def install(publish: Publish, on_import: Callable[[], object] | None = None) -> None:
    """Comms made in this process publish through `publish` (wired when `comm` is imported, and
    then `on_import` runs: widgets need `get_ipython()`, which the python engine makes on demand)."""
    _publish[:] = [publish]
    _on_import[:] = [on_import] if on_import is not None else []
    if "comm" in sys.modules:
        _wire(sys.modules["comm"])
    else:
        sys.meta_path.insert(0, _WireOnImport())


def manager():
    """The engine's CommManager (importing `comm` if no cell has yet)."""
    if not _manager:
        import comm  # noqa: F401 - wired on import

    return _manager[0]


def deliver(msg_type: str, content: dict, buffers: list[bytes], parent: dict) -> None:
    """Hand a front end's comm_open / comm_msg / comm_close to its comm, working for `parent`
    (the request's header: output the handler prints is that request's, as on ipykernel)."""
    mgr = manager()
    handler = {"comm_open": mgr.comm_open, "comm_msg": mgr.comm_msg, "comm_close": mgr.comm_close}[msg_type]
    msg = {"header": {**parent, "msg_type": msg_type}, "parent_header": {}, "metadata": {},
           "content": content, "buffers": list(buffers)}
    with parents.working_for(parent):
        handler(None, None, msg)


def info(target_name: str | None = None) -> dict:
    """comm_info_reply content: the open comms, of `target_name` when given."""
    comms = _manager[0].comms if _manager else {}
    return {"status": "ok", "comms": {comm_id: {"target_name": c.target_name} for comm_id, c in list(comms.items())
                                      if target_name is None or c.target_name == target_name}}
