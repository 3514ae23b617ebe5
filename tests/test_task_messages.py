"""The API pushes each cell's Celery task itself (inside the submit script): the message must be the
one Celery's own send_task would have written, so any Celery worker consumes it unchanged."""

import base64
import json

import pytest
import redis
from kombu import Exchange, Queue

from taskkernel.celery_wire import EVALUATE, TaskMessages, make_celery
from taskkernel.settings import Settings

pytestmark = pytest.mark.timeout(30)

PER_MESSAGE = {("headers", "id"), ("headers", "root_id"), ("properties", "correlation_id"),
               ("properties", "delivery_tag"), ("properties", "reply_to"), ("headers", "origin")}


def _flatten(message: dict) -> dict:
    flat = {}
    for part in ("headers", "properties"):
        for key, value in message[part].items():
            if (part, key) not in PER_MESSAGE:
                flat[(part, key)] = value
    flat["body"] = json.loads(base64.b64decode(message["body"]))
    flat.update({k: message[k] for k in ("content-type", "content-encoding")})
    return flat


def test_the_pushed_evaluate_message_is_what_send_task_writes(redis_server):
    url = redis_server.db_url(2)
    client = redis.Redis.from_url(url)
    admin = redis.Redis.from_url(redis_server.db_url(2, admin=True))
    admin.flushdb()
    queue = "taskkernel.test-host.7"
    try:
        app = make_celery(Settings(redis_url=url))
        direct = Queue(queue, Exchange(""), routing_key=queue, no_declare=True)  # straight onto the list
        app.send_task(EVALUATE, args=["c" * 32, "n" * 32], ignore_result=True, queue=direct)
        theirs = json.loads(client.rpop(queue))
        before, after = TaskMessages(app).evaluate("c" * 32, notebook_id="n" * 32)
        ours = json.loads(before + json.dumps(queue) + after)
        assert ours["properties"]["delivery_info"] == {"exchange": "", "routing_key": queue}
        assert _flatten(ours) == _flatten(theirs)
        assert ours["headers"]["id"] == ours["headers"]["root_id"] == ours["properties"]["correlation_id"]
        assert ours["headers"]["id"] != theirs["headers"]["id"]
        assert set(ours) == set(theirs) and set(ours["headers"]) == set(theirs["headers"])
        assert set(ours["properties"]) == set(theirs["properties"])
    finally:
        admin.flushdb()
