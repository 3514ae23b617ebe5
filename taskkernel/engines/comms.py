"""Comms in the engine: the `comm` package's hooks, wired to the worker's socket (widgets, tqdm).

ipywidgets, tqdm.notebook and every other comm user call `comm.create_comm()` and
`comm.get_comm_manager()`, hooks the `comm` package leaves for a kernel to replace; ipykernel
replaces them with its own, and so does `install` here. What a comm publishes (comm_open,
comm_msg, comm_close, with buffers) becomes an engine event under the parent the calling thread
works for (engines/parents.py). What a front end sends reaches `deliver` on the engine's reader
thread, even while a cell runs, so a loop polling `slider.value` sees the slider move.
"""

from __future__ import annotations

from collections.abc import Callable

import comm
from comm.base_comm import BaseComm, CommManager

from taskkernel.engines import parents

# (msg_type, content, metadata, buffers, parent): how an event leaves the engine
Publish = Callable[[str, dict, dict, list, dict], None]

MANAGER = CommManager()
_publish: list[Publish] = []


class EngineComm(BaseComm):
    """A comm whose messages go out on the engine's socket."""

    kernel = True  # ipywidgets asks `comm.kernel is not None` before it sends state

    def publish_msg(self, msg_type: str, data=None, metadata=None, buffers=None, **keys) -> None:
        if not _publish:
            return
        content = {"data": data or {}, "comm_id": self.comm_id, **keys}  # comm_open: target_name too
        _publish[0](msg_type, content, metadata or {}, [bytes(b) for b in buffers or ()], parents.current())


def install(publish: Publish) -> None:
    """Replace the `comm` package's hooks: comms made in this process publish through `publish`."""
    _publish[:] = [publish]
    comm.create_comm = EngineComm
    comm.get_comm_manager = lambda: MANAGER


def deliver(msg_type: str, content: dict, buffers: list[bytes], parent: dict) -> None:
    """Hand a front end's comm_open / comm_msg / comm_close to its comm, working for `parent`
    (the request's header: output the handler prints is that request's, as on ipykernel)."""
    handler = {"comm_open": MANAGER.comm_open, "comm_msg": MANAGER.comm_msg,
               "comm_close": MANAGER.comm_close}[msg_type]
    msg = {"header": {**parent, "msg_type": msg_type}, "parent_header": {}, "metadata": {},
           "content": content, "buffers": list(buffers)}
    with parents.working_for(parent):
        handler(None, None, msg)


def info(target_name: str | None = None) -> dict:
    """comm_info_reply content: the open comms, of `target_name` when given."""
    return {"status": "ok", "comms": {comm_id: {"target_name": c.target_name}
                                      for comm_id, c in list(MANAGER.comms.items())
                                      if target_name is None or c.target_name == target_name}}
