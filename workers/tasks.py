"""Thin Celery tasks: each hands its arguments to the worker's runtime and returns."""

from __future__ import annotations

from celery import Celery

EVALUATE = "taskkernel.evaluate"


def register_tasks(app: Celery) -> None:
    @app.task(name=EVALUATE, bind=True, ignore_result=True, acks_late=True)
    def evaluate(self, cell_id: str, notebook_id: str) -> str:
        """Run one cell of the notebook this worker is pinned to."""
        runtime = getattr(self.app, "taskkernel_runtime", None)
        if runtime is None:
            raise RuntimeError("this process is not a taskkernel worker (no runtime)")
        return runtime.run_cell(cell_id, notebook_id)


def send_evaluate(app: Celery, queue: str, cell_id: str, notebook_id: str) -> None:
    """Queue a cell on its notebook's worker queue."""
    app.send_task(EVALUATE, args=[cell_id, notebook_id], queue=queue, ignore_result=True)
