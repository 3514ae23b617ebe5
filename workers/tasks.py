"""Thin Celery tasks: each hands its arguments to the worker's runtime and returns."""

from __future__ import annotations

from celery import Celery

from taskkernel.celery_wire import CALL, EVALUATE


def register_tasks(app: Celery, runtime) -> None:
    """Register the evaluate and call tasks on `app`, bound to this worker's `runtime`
    (workers.runtime.Runtime), after the fork: each worker process has its own."""

    @app.task(name=EVALUATE, ignore_result=True, acks_late=True)
    def evaluate(cell_id: str, notebook_id: str) -> str:
        """Run one cell of the notebook this worker is pinned to."""
        return runtime.run_cell(cell_id, notebook_id)

    @app.task(name=CALL, ignore_result=True, acks_late=True)
    def call(notebook_id: str, op: str, args: dict, reply_key: str) -> None:
        """Push, pull, checkpoint or restore, in queue order with the notebook's cells."""
        runtime.run_call(notebook_id, op, args, reply_key)
