"""Thin Celery tasks: each hands its arguments to the worker's runtime and returns."""

from __future__ import annotations

import logging

from celery import Celery
from celery.worker.strategy import default as default_strategy

from taskkernel.celery_wire import CALL, EVALUATE

log = logging.getLogger("taskkernel.worker")


def register_tasks(app: Celery) -> None:
    @app.task(name=EVALUATE, bind=True, ignore_result=True, acks_late=True,
              Strategy="taskkernel.workers.tasks:run_in_consumer")
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


def run_in_consumer(task, app: Celery, consumer, **kwargs):
    """Celery execution strategy of the evaluate task: run it as soon as the consumer receives it.

    A taskkernel worker is a solo worker with prefetch 1 whose only business is its notebook's
    cells, and the runtime does what Celery's request layer would (it claims the cell once, limits
    its time, reports its errors on the feed). So the cell runs straight from the message, then
    the message is acknowledged as acks_late would: measured ~0.1 ms less per cell than Celery's
    Request, pool and tracer (bench/ANALYSIS.md). With task events on (Flower) or a message in an
    older protocol, Celery's default strategy handles it, so events and compatibility are kept.
    """
    default = default_strategy(task, app, consumer, **kwargs)
    if consumer.event_dispatcher is not None and consumer.event_dispatcher.enabled:
        return default
    connection_errors = consumer.connection_errors

    def on_message(message, body, ack, reject, callbacks, **options):
        if body is not None or "args" in message.payload or message.headers.get("eta"):
            return default(message, body, ack, reject, callbacks, **options)
        try:
            args, kwargs_, _embed = message.decode()
            task(*args, **kwargs_)
        except Exception:
            log.exception("task %s %s failed", message.headers.get("task"), message.headers.get("id"))
        finally:
            ack(log, connection_errors)  # as celery.worker.request.Request.acknowledge does

    return on_message
