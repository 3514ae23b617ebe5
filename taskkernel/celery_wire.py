"""Celery's wire format, known once: the app factory, the task names, the task messages, kombu's queues.

The API and the gateway build task messages here and push them themselves (inside the submit
script); the workers consume them with Celery. Neither side needs the other's modules: the tasks
are registered by the workers (workers/tasks.py), not by the app factory.
"""

from __future__ import annotations

import base64
import json
import uuid

from celery import Celery
from kombu import serialization

from taskkernel import connections
from taskkernel.settings import Settings

EVALUATE = "taskkernel.evaluate"
CALL = "taskkernel.call"


def make_celery(settings: Settings) -> Celery:
    """A Celery app on the settings' Redis: JSON only, no result backend, one cell at a time.

    Results travel on taskkernel's own feed, not Celery's result backend (whose pub/sub leaks in
    long-lived producers). One consumer per queue with prefetch 1 runs cells in order; a cell
    delivered twice (possible only with TASKKERNEL_ACK_EMULATION=1 and a visibility timeout
    shorter than a cell) is dropped by the runtime's claim.
    """
    broker, sentinel_options = connections.celery_broker(settings.redis_url)
    app = Celery("taskkernel", broker=broker, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={
            # Redelivery is never relied on: a cell is claimed once (Lua), and the supervisor fails
            # the running cell and aborts the queue when a worker dies. Without ack emulation kombu
            # skips two MULTI/EXEC per cell and keeps no unacked hash to sweep.
            "ack_emulation": bool(settings.ack_emulation),
            "visibility_timeout": settings.visibility_timeout_s,
            "unacked_restore_interval": settings.unacked_restore_interval_s,
            "unacked_restore_throttle": 1,
            # kombu re-issues its BRPOP every polling_interval seconds while idle (1 s by default): a
            # message still arrives at once; idle CPU per worker measured 0.057% -> 0.037% of a core
            "polling_interval": 4,
            **sentinel_options,  # a redis+sentinel:// URL: kombu asks the sentinels for the primary
        },
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_pool_limit=max(10, settings.api_threads),
        worker_redirect_stdouts=False,
        worker_hijack_root_logger=False,
        worker_enable_remote_control=bool(settings.task_events),  # inspect/ping, Flower; a pidbox per worker
        worker_send_task_events=bool(settings.task_events),
        task_send_sent_event=bool(settings.task_events),
        task_create_missing_queues=True,
        task_default_queue="taskkernel.default",
    )
    return app


_QUEUE_MARK = "\x00queue\x00"


class TaskMessages:
    """Builds the task messages the API and the gateway push, with `app`'s protocol-2 builder."""

    def __init__(self, app: Celery):
        self.app = app

    def evaluate(self, cell_id: str, notebook_id: str) -> tuple[str, str]:
        """The Celery message that runs a cell, for the submit script to push (see task_message)."""
        return task_message(self.app, EVALUATE, [cell_id, notebook_id])

    def call(self, notebook_id: str, op: str, args: dict, reply_key: str) -> tuple[str, str]:
        """The Celery message of a namespace operation (push, pull, checkpoint, restore)."""
        return task_message(self.app, CALL, [notebook_id, op, args, reply_key])


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


# How kombu's Redis transport keeps a queue: a list named after it, LPUSHed by producers and
# BRPOPed by the consumer, with the message's routing key JSON-quoted inside it (task_message's
# two halves go around it). A Lua function for the scripts that push a task (taskkernel.cells).
PUSH_TASK_LUA_FUNCTION = """
local function push_task(queue, before, after)
  redis.call('LPUSH', queue, before .. cjson.encode(queue) .. after)
end
"""


def queue_lists(queue: str) -> list[str]:
    """The Redis lists kombu keeps for one queue (its priority steps use suffixed copies)."""
    return [queue] + [f"{queue}\x06\x16{p}" for p in (1, 2, 3, 4, 5, 6, 7, 8, 9)]


def binding_pattern(queue_pattern: str) -> str:
    """A SCAN MATCH pattern of kombu's exchange-binding keys that name queues matching `queue_pattern`."""
    return f"_kombu.binding*{queue_pattern}"
