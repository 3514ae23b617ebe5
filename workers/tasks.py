"""Thin Celery tasks: each hands its arguments to the worker's runtime and returns."""

from __future__ import annotations

import base64
import json
import logging
import uuid

from celery import Celery
from celery.worker.strategy import default as default_strategy
from kombu import serialization

log = logging.getLogger("taskkernel.worker")

EVALUATE = "taskkernel.evaluate"
CALL = "taskkernel.call"


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


_QUEUE_MARK = "\x00queue\x00"


def evaluate_message(app: Celery, cell_id: str, notebook_id: str) -> tuple[str, str]:
    """The Celery message that runs a cell, for the API's submit script to push (see task_message)."""
    return task_message(app, EVALUATE, [cell_id, notebook_id])


def call_message(app: Celery, notebook_id: str, op: str, args: dict, reply_key: str) -> tuple[str, str]:
    """The Celery message of a namespace operation (push, pull, checkpoint, restore)."""
    return task_message(app, CALL, [notebook_id, op, args, reply_key])


def task_message(app: Celery, name: str, args: list) -> tuple[str, str]:
    """A Celery task message as kombu's Redis transport keeps it on a queue's list, split in two
    where the JSON-quoted queue name goes (`delivery_info.routing_key`).

    The API's submit script joins the halves around the queue of the notebook's worker and LPUSHes
    the result, as kombu would: recording a cell and enqueueing its Celery task are then one atomic
    step (no queued cell without its task, none sent to a worker the notebook just left) and one
    Redis call instead of `send_task`'s producer machinery plus a second round trip. The headers and
    body come from Celery's own protocol-2 builder; tests compare the whole with what `send_task`
    writes. No task-sent event is emitted for such messages (the worker's events are).
    """
    task_id = str(uuid.uuid4())
    headers, properties, body, _ = app.amqp.as_task_v2(task_id, name, args=args, ignore_result=True)
    content_type, encoding, data = serialization.dumps(body, serializer="json")
    raw = data if isinstance(data, bytes) else data.encode(encoding)
    envelope = {
        "body": base64.b64encode(raw).decode("ascii"),
        "content-encoding": encoding,
        "content-type": content_type,
        "headers": headers,
        "properties": {
            **properties,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": _QUEUE_MARK},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    before, after = json.dumps(envelope).split(json.dumps(_QUEUE_MARK))
    return before, after


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
