"""Thin Celery tasks: each hands its arguments to the worker's runtime and returns."""

from __future__ import annotations

import functools

from celery import Celery
from kombu import Exchange, Queue

EVALUATE = "taskkernel.evaluate"
CALL = "taskkernel.call"


def register_tasks(app: Celery) -> None:
    @app.task(name=EVALUATE, bind=True, ignore_result=True, acks_late=True)
    def evaluate(self, cell_id: str, notebook_id: str) -> str:
        """Run one cell of the notebook this worker is pinned to."""
        runtime = getattr(self.app, "taskkernel_runtime", None)
        if runtime is None:
            raise RuntimeError("this process is not a taskkernel worker (no runtime)")
        return runtime.run_cell(cell_id, notebook_id)

    @app.task(name=CALL, bind=True, ignore_result=True, acks_late=True)
    def call(self, notebook_id: str, op: str, args: dict, reply_key: str) -> None:
        """Push, pull, checkpoint or restore, in queue order with the notebook's cells."""
        runtime = getattr(self.app, "taskkernel_runtime", None)
        if runtime is None:
            raise RuntimeError("this process is not a taskkernel worker (no runtime)")
        runtime.run_call(notebook_id, op, args, reply_key)


def send_evaluate(app: Celery, queue: str, cell_id: str, notebook_id: str) -> None:
    """Queue a cell on its notebook's worker queue."""
    app.send_task(EVALUATE, args=[cell_id, notebook_id], ignore_result=True, **_direct(queue))


def send_call(app: Celery, queue: str, notebook_id: str, op: str, args: dict, reply_key: str) -> None:
    """Queue a namespace operation behind the notebook's queued cells."""
    app.send_task(CALL, args=[notebook_id, op, args, reply_key], ignore_result=True, **_direct(queue))


@functools.lru_cache(maxsize=4096)
def _direct_queue(queue: str) -> Queue:
    return Queue(queue, Exchange(""), routing_key=queue, no_declare=True)


def _direct(queue: str) -> dict:
    """Publish through the anonymous exchange straight onto the queue's list (one LPUSH): through
    a named exchange, kombu's Redis transport reads the exchange's bindings on every publish. The
    worker declared its queue when it started; the bounded set of slot names keeps the cache small."""
    return {"queue": _direct_queue(queue)}
