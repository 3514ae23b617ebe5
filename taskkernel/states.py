"""The states a notebook, a cell and a worker record can be in (their `state` field), named once.

The Lua scripts that move records between states write the same strings (taskkernel/cells.py,
assignment.py, notebooks.py, workers/runtime.py).
"""

from __future__ import annotations

from enum import StrEnum


class NotebookState(StrEnum):
    """A notebook record's state (GET /api/notebooks/<id> shows it)."""

    IDLE = "idle"  # pinned to a worker, no cell running
    BUSY = "busy"  # a cell is running
    RESTARTING = "restarting"  # detached from its old worker, waiting for a fresh one
    RESTARTED = "restarted"  # on a fresh worker after a restart, no cell run since
    DELETING = "deleting"  # a delete is under way: no new cells


class CellState(StrEnum):
    """A cell record's state; a done cell's `status` says how it ended."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"


class WorkerState(StrEnum):
    """A worker record's state, as its supervisor and the assignment write it."""

    STARTING = "starting"  # forked, its engine not ready yet
    IDLE = "idle"  # warm, in its engine's idle set
    ASSIGNED = "assigned"  # pinned to a notebook
    RETIRING = "retiring"  # told to stop; never reused


def encoded(state: StrEnum) -> bytes:
    """The state as redis-py returns it (bytes), for comparisons with raw replies."""
    return state.value.encode()
