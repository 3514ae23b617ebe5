"""The side channel to one worker: requests that must not queue behind a running cell.

Completion, inspection, is_complete and interrupt go to a thread in the worker through a Redis
list, not through the worker's Celery queue, where they would wait for the running cell to end.
A request is JSON `{"id", "op", "args", "reply"}` pushed on `taskkernel:worker:<w>:rpc`; the
answer `{"ok": bool, "result" | "error"}` is pushed on the request's own reply list.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import redis

from taskkernel import keys
from taskkernel.exceptions import (
    BadRequest,
    EngineUnavailable,
    NoCheckpoint,
    NotebookGone,
    NotSupportedByEngine,
    VariableNotFound,
)
from taskkernel.messages import new_id

REPLY_TTL_S = 60
# error codes a worker may answer with -> the exception the API raises
WORKER_ERRORS = {"variable_not_found": VariableNotFound, "no_checkpoint": NoCheckpoint,
                 "notebook_gone": NotebookGone, "bad_request": BadRequest, "not_supported": BadRequest,
                 "not_supported_by_engine": NotSupportedByEngine}
MAX_BLOCK_S = 4.0  # below redis-py's default 5 s socket timeout
MOVED_CHECK_S = 0.25  # how often a wait checks that the worker asked still serves the notebook
MOVED = object()  # what a wait returns when it did (the caller asks the notebook's new worker)


def call(client: redis.Redis, worker_id: str, op: str, args: dict | None = None, timeout_s: float = 10.0,
         wait: bool = True, still_there: Callable[[], bool] | None = None):
    """Ask worker `worker_id` to perform `op`; return its result, or None when not waiting.

    With `still_there`, asked every MOVED_CHECK_S while waiting: when it says False (the worker
    was retired, the notebook restarted) the wait ends at once with MOVED instead of running out.
    Raises EngineUnavailable when no answer comes within `timeout_s` seconds.
    """
    request_id = new_id()
    reply_key = keys.reply(request_id)
    request = {"id": request_id, "op": op, "args": args or {}, "reply": reply_key if wait else ""}
    pipe = client.pipeline(transaction=False)
    pipe.rpush(keys.worker_rpc(worker_id), json.dumps(request))
    pipe.expire(keys.worker_rpc(worker_id), REPLY_TTL_S)
    pipe.execute()
    if not wait:
        return None
    return wait_reply(client, reply_key, op, timeout_s, still_there)


def wait_reply(client: redis.Redis, reply_key: str, op: str, timeout_s: float,
               still_there: Callable[[], bool] | None = None):
    """The answer pushed on `reply_key`; EngineUnavailable on timeout, or the worker's error;
    MOVED as soon as `still_there()` says the worker asked is no longer the notebook's."""
    deadline = time.monotonic() + timeout_s
    answer = None
    block_s = MOVED_CHECK_S if still_there is not None else MAX_BLOCK_S
    while answer is None and time.monotonic() < deadline:
        answer = client.blpop([reply_key], timeout=max(0.01, min(block_s, deadline - time.monotonic())))
        if answer is None and still_there is not None and not still_there():
            return MOVED
    if answer is None:
        raise EngineUnavailable(f"the notebook's worker did not answer {op!r} within {timeout_s:g} s "
                                "(a long cell may be running ahead of it)", op=op)
    reply = json.loads(answer[1])
    if not reply["ok"]:
        raise WORKER_ERRORS.get(reply.get("code", ""), EngineUnavailable)(
            f"{op} failed in the worker: {reply['error']}", op=op)
    return reply["result"]


def next_request(client: redis.Redis, worker_id: str, timeout_s: float = 1.0) -> dict | None:
    """The worker's side: wait up to `timeout_s` for the next request."""
    item = client.blpop([keys.worker_rpc(worker_id)], timeout=timeout_s)
    return json.loads(item[1]) if item else None


def answer(client: redis.Redis, request: dict, *, result=None, error: str | None = None, code: str = "") -> None:
    if not request.get("reply"):
        return
    body = {"ok": error is None, "result": result} if error is None else {"ok": False, "error": error, "code": code}
    pipe = client.pipeline(transaction=False)
    pipe.rpush(request["reply"], json.dumps(body))
    pipe.expire(request["reply"], REPLY_TTL_S)
    pipe.execute()
