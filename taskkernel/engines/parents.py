"""Which request each engine thread works for: the parent header its output is published under.

As on ipykernel: the main thread works for the running cell; the reader thread, while it hands
a comm message to a widget, works for that comm message; a thread a cell starts keeps working
for that cell after the cell has ended, so its late output is the old cell's, never the next
one's (as ipykernel 6.29 associated new threads with the cell that started them; ipykernel 7
publishes a thread's output under the latest request instead, which issue 14 rules out). Any
other thread works for whatever the main thread works for.
"""

from __future__ import annotations

import threading

Parent = dict  # {"msg_id", "msg_type"}; {} for no request

_local = threading.local()
_main: dict = {"parent": {}}
_original_start = threading.Thread.start


def current() -> Parent:
    """The parent header of what the calling thread is doing now."""
    parent = getattr(_local, "parent", None)
    if parent is not None:
        return parent
    inherited = getattr(threading.current_thread(), "_taskkernel_parent", None)
    return inherited if inherited is not None else _main["parent"]


def set_main(parent: Parent) -> None:
    """The main thread starts working for `parent` (a cell)."""
    _main["parent"] = parent
    _local.parent = parent


class working_for:
    """`with working_for(parent):` the calling thread works for `parent` (a comm message)."""

    def __init__(self, parent: Parent):
        self.parent = parent

    def __enter__(self) -> None:
        self._before = getattr(_local, "parent", None)
        _local.parent = self.parent

    def __exit__(self, *exc) -> None:
        _local.parent = self._before


def _start(thread: threading.Thread) -> None:
    if getattr(thread, "_taskkernel_parent", None) is None:
        thread._taskkernel_parent = current()
    _original_start(thread)


def install() -> None:
    """Make every thread started from now on remember the request it was started for."""
    threading.Thread.start = _start
