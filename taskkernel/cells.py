"""Cell records in Redis: recording a cell with its Celery task, reading cells, aborting and failing them.

The scripts here act once, as the notebook's do (see taskkernel.notebooks): repeating one changes
nothing more. `CellStore` is a part of `NotebookStore`, which mixes it in.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import NamedTuple

import redis

from taskkernel import keys, messages
from taskkernel.celery_wire import PUSH_TASK_LUA_FUNCTION
from taskkernel.exceptions import (CellNotFound, IdempotencyKeyReused, NotebookGone, NotebookNotFound,
                                   SubmitUncertain)
from taskkernel.feed import PUBLISH_LUA_FUNCTION, message_argv
from taskkernel.messages import as_text
from taskkernel.states import CellState

# Record a cell, queue it behind the notebook's others and push its Celery task onto the queue of
# the notebook's worker, all at once, at most once per cell id and per Idempotency-Key.  KEYS:
# notebook, cell, cells, pending, feed stream, idempotency key.  ARGV: cell id, the task message's
# two halves (joined around the JSON-quoted queue name, as kombu's Redis transport stores a message:
# celery_wire.task_message), how long the idempotency key keeps the cell (ms; 0: no key), then
# the cell hash as field/value pairs.  Returns false (no such notebook), {''} (it has no worker
# right now), {'=', cell id, newest feed stream id} (that cell was recorded already: by this very
# call, retried after its answer was lost, or under the same idempotency key), or {queue, position,
# newest feed stream id}: the stream id lets a waiting caller read the cell's reply without a race
# and without another call.
_SUBMIT_LUA = PUSH_TASK_LUA_FUNCTION + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'deleting' then return false end
local prior = false
if ARGV[4] ~= '0' then prior = redis.call('GET', KEYS[6]) end
if not prior and redis.call('EXISTS', KEYS[2]) == 1 then prior = ARGV[1] end
local newest = redis.call('XREVRANGE', KEYS[5], '+', '-', 'COUNT', 1)
newest = newest[1] and newest[1][1] or '0-0'
if prior then return {'=', prior, newest} end
local queue = redis.call('HGET', KEYS[1], 'queue')
if not queue or queue == '' then return {''} end
local position = redis.call('HINCRBY', KEYS[1], 'cells', 1)
redis.call('HSET', KEYS[2], 'position', position, unpack(ARGV, 5))
redis.call('RPUSH', KEYS[3], ARGV[1])
redis.call('RPUSH', KEYS[4], ARGV[1])
push_task(queue, ARGV[2], ARGV[3])
if ARGV[4] ~= '0' then redis.call('SET', KEYS[6], ARGV[1], 'PX', ARGV[4]) end
return {queue, position, newest}
"""

# Push a Celery task message onto the queue of the notebook's worker, behind its queued cells.
# KEYS: notebook.  ARGV: the message's two halves (celery_wire.task_message).  Returns false (no
# such notebook), '' (it has no worker right now) or the queue.
_ENQUEUE_LUA = PUSH_TASK_LUA_FUNCTION + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'deleting' then return false end
local queue = redis.call('HGET', KEYS[1], 'queue')
if not queue or queue == '' then return '' end
push_task(queue, ARGV[1], ARGV[2])
return queue
"""

# Put back the task of a notebook's oldest queued cell when its message left the queue without
# reaching the worker. kombu's BRPOP takes a message off the list before the worker has it, and
# kombu keeps no copy (no ack emulation): a Redis shutdown persists the pop but drops the replies
# of its last event-loop iteration, so a cell submitted (or a BRPOP served) in that iteration is
# queued for good, its message gone. The worker runs this whenever its broker connection starts
# again, before it consumes: the lost message can only be the oldest (a BRPOP takes the tail),
# so it goes back to the tail (RPUSH: next to be taken). A message that was not lost after all
# is harmless: the claim runs a cell once.  KEYS: notebook, worker, cell, pending.  ARGV: worker
# id, cell id, cell key prefix, the task message's two halves (celery_wire.task_message).
# Returns the queue, or false (the notebook is not this worker's in its epoch, the cell is not
# its oldest queued one, or its message is still on the queue).
_REQUEUE_LOST_LUA = """
local nb = redis.call('HMGET', KEYS[1], 'worker', 'epoch', 'queue')
if nb[1] ~= ARGV[1] or not nb[3] or nb[3] == '' then return false end
if (nb[2] or '') ~= (redis.call('HGET', KEYS[2], 'epoch') or '') then return false end
if redis.call('HGET', KEYS[3], 'state') ~= 'queued' then return false end
for _, c in ipairs(redis.call('LRANGE', KEYS[4], 0, -1)) do
  if c == ARGV[2] then break end
  if redis.call('HGET', ARGV[3] .. c, 'state') == 'queued' then return false end
end
for _, m in ipairs(redis.call('LRANGE', nb[3], 0, -1)) do
  if string.find(m, ARGV[2], 1, true) then return false end
end
redis.call('RPUSH', nb[3], ARGV[4] .. cjson.encode(nb[3]) .. ARGV[5])
return nb[3]
"""

# Abort every queued cell of a notebook.  KEYS: pending list, cells-by-status counter.  ARGV: cell
# key prefix, now.  Returns the aborted cell ids (counted as "aborted"); cells already running are
# left to finish or fail.
_ABORT_LUA = """
local aborted = {}
for _, c in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local ck = ARGV[1] .. c
  if redis.call('HGET', ck, 'state') == 'queued' then
    redis.call('HSET', ck, 'state', 'done', 'status', 'aborted', 'completed', ARGV[2])
    table.insert(aborted, c)
  end
end
redis.call('DEL', KEYS[1])
if #aborted > 0 then redis.call('HINCRBY', KEYS[2], 'aborted', #aborted) end
return aborted
"""

# End a running cell that its worker cannot finish (it died, its notebook restarted): write its
# record, count it and publish its ending in one step, only while it is running (so a cell ends,
# is counted and is announced once, whoever races to end it: its own worker's completion acts only
# while the cell runs too).  KEYS: cell, cells-by-status counter, feed seq, feed stream.  ARGV:
# feed channel, stream maxlen, n, n field/value pairs of the record, then the messages
# (feed.message_argv).  Returns the number of messages published, or false when the cell was no
# longer running.
_FAIL_LUA = PUBLISH_LUA_FUNCTION + """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return false end
local n = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], unpack(ARGV, 4, 3 + 2 * n))
redis.call('HINCRBY', KEYS[2], 'error', 1)
return publish_messages(KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV, 4 + 2 * n, nil)
"""


class Submitted(NamedTuple):
    """What `NotebookStore.submit` recorded: the cell, the queue it went to ('' when it was recorded
    before), the feed stream position its reply comes after, and whether an earlier request with
    the same Idempotency-Key recorded it."""

    cell: dict
    queue: str
    position: str
    replayed: bool


class SubmitCall(NamedTuple):
    """One call of the submit script: the cell it records, and the script's keys and arguments."""

    cell: dict
    record: dict
    keys: list
    args: list

    def queued(self, got) -> "Submitted":
        """What the script's answer {queue, position, newest stream id} means: the cell is queued."""
        return Submitted(messages.cell_from_redis({**self.record, "position": str(got[1])}), as_text(got[0]),
                         as_text(got[2]), replayed=False)


SUBMIT_LUA = _SUBMIT_LUA


class CellStore:
    """The cell half of `NotebookStore`: its methods use the store's Redis client, feed and scripts."""

    def submit(self, notebook_id: str, code: str, task_message: Callable[[str], tuple[str, str]], *,
               stop_on_error: bool = False, worker_timeout_s: float = 10.0, idempotency_key: str = "",
               idempotency_ttl_s: float = 24 * 3600.0, options: dict | None = None) -> "Submitted":
        """Record a queued cell and enqueue the Celery task that runs it (`task_message(cell_id)`
        gives its two halves). Waits up to `worker_timeout_s` for a restarting notebook.

        With `idempotency_key`, a submit with the same key within `idempotency_ttl_s` seconds
        returns the cell the first one recorded (`replayed`) and queues nothing. Raises
        NotebookNotFound, NotebookGone, IdempotencyKeyReused (the key came with other code), and
        SubmitUncertain when Redis failed while the cell was being recorded (it may run).
        """
        call = self.submit_call(notebook_id, code, task_message, stop_on_error=stop_on_error,
                                idempotency_key=idempotency_key, idempotency_ttl_s=idempotency_ttl_s,
                                options=options)
        cell = call.cell
        while True:
            try:
                # redis-py retries a call that timed out: the script is a no-op the second time
                got = self.durability.run(self.redis, self._submit, call.keys, call.args)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                raise SubmitUncertain(
                    f"Redis failed while cell {cell['id']} was being recorded ({exc}): it may run; GET the "
                    "cell to know, or repeat the request with the same Idempotency-Key",
                    notebook_id=notebook_id, cell_id=cell["id"]) from exc
            if not got:
                if self.exists(notebook_id):
                    raise NotebookGone(f"notebook {notebook_id} is being deleted", notebook_id=notebook_id)
                raise NotebookNotFound(notebook_id)
            if got[0] == b"=":
                prior = self.get_cell(as_text(got[1]), notebook_id)
                if prior["code"] != code:
                    raise IdempotencyKeyReused(
                        "this Idempotency-Key already submitted a cell with other code",
                        notebook_id=notebook_id, cell_id=prior["id"])
                return Submitted(prior, "", as_text(got[2]), replayed=prior["id"] != cell["id"])
            if got[0]:
                break
            self.wait_for_worker(notebook_id, worker_timeout_s)
        return call.queued(got)

    def submit_call(self, notebook_id: str, code: str, task_message: Callable[[str], tuple[str, str]], *,
                    stop_on_error: bool = False, idempotency_key: str = "",
                    idempotency_ttl_s: float = 24 * 3600.0, options: dict | None = None) -> "SubmitCall":
        """The submit script's keys and arguments for a new cell (see `submit`); the gateway runs
        them on its event loop's own Redis client (SUBMIT_LUA)."""
        cell = {
            "id": messages.new_id(),
            "notebook_id": notebook_id,
            "code": code,
            "state": CellState.QUEUED,
            "status": None,
            "stop_on_error": stop_on_error,
            "submitted": messages.now_iso(),
        }
        if options:  # the execute_request's flags (silent, store_history, allow_stdin, user_expressions)
            cell["options"] = json.dumps(options)
        digest = hashlib.sha256(idempotency_key.encode()).hexdigest() if idempotency_key else ""
        if digest:
            cell["idempotency"] = digest
        record = messages.cell_to_redis(cell)
        message = task_message(cell["id"])
        ttl_ms = max(1, int(idempotency_ttl_s * 1000)) if digest else 0
        return SubmitCall(
            cell, record,
            [keys.notebook(notebook_id), keys.cell(cell["id"]), keys.notebook_cells(notebook_id),
             keys.notebook_pending(notebook_id), keys.feed_stream(notebook_id), keys.idempotency(notebook_id, digest)],
            [cell["id"], *message, ttl_ms, *messages.hash_pairs(record)])

    def enqueue(self, notebook_id: str, message: tuple[str, str], *, worker_timeout_s: float = 10.0) -> str:
        """Push a task message onto the notebook's worker queue, behind its cells, in one script (so
        it never lands on the queue of a worker the notebook just left); returns the queue. Waits
        up to `worker_timeout_s` for a restarting notebook."""
        while True:
            got = self._enqueue(keys=[keys.notebook(notebook_id)], args=list(message))
            if got is None:
                if self.exists(notebook_id):
                    raise NotebookGone(f"notebook {notebook_id} is being deleted", notebook_id=notebook_id)
                raise NotebookNotFound(notebook_id)
            if got:
                return as_text(got)
            self.wait_for_worker(notebook_id, worker_timeout_s)

    def requeue_lost(self, worker_id: str, task_message: Callable[[str, str], tuple[str, str]]) -> str | None:
        """Queue again the task of the oldest queued cell of the notebook pinned to `worker_id` if
        its message is gone from the queue (lost with a broker connection: _REQUEUE_LOST_LUA);
        `task_message(cell_id, notebook_id)` builds it. Returns that cell's id, or None."""
        notebook_id = as_text(self.redis.hget(keys.worker(worker_id), "notebook") or b"")
        if not notebook_id:
            return None
        pending = [as_text(c) for c in self.redis.lrange(keys.notebook_pending(notebook_id), 0, -1)]
        pipe = self.redis.pipeline(transaction=False)
        for cell_id in pending:
            pipe.hget(keys.cell(cell_id), "state")
        oldest = next((c for c, state in zip(pending, pipe.execute()) if as_text(state or b"") == CellState.QUEUED),
                      None)
        if oldest is None:
            return None
        queue = self._requeue_lost(
            keys=[keys.notebook(notebook_id), keys.worker(worker_id), keys.cell(oldest),
                  keys.notebook_pending(notebook_id)],
            args=[worker_id, oldest, keys.cell(""), *task_message(oldest, notebook_id)])
        return oldest if queue else None

    def get_cell(self, cell_id: str, notebook_id: str | None = None) -> dict:
        raw = self.redis.hgetall(keys.cell(cell_id))
        if not raw:
            raise CellNotFound(cell_id)
        cell = messages.cell_from_redis(raw)
        if notebook_id is not None and cell["notebook_id"] != notebook_id:
            raise CellNotFound(cell_id)
        return cell

    def list_cells(self, notebook_id: str) -> list[dict]:
        ids = self.redis.lrange(keys.notebook_cells(notebook_id), 0, -1)
        pipe = self.redis.pipeline(transaction=False)
        for cell_id in ids:
            pipe.hgetall(keys.cell(as_text(cell_id)))
        return [messages.cell_from_redis(raw) for raw in pipe.execute() if raw]

    def abort_pending(self, notebook_id: str, *, reason: str) -> list[str]:
        """Abort every queued cell of the notebook and say so on the feed; return their ids."""
        aborted = [as_text(c) for c in self._abort(keys=[keys.notebook_pending(notebook_id), keys.METRICS_CELLS],
                                              args=[keys.cell(""), messages.now_iso()])]
        self.feed.publish(notebook_id, *[
            messages.make_message("execute_reply", {"status": "aborted", "execution_count": None,
                                                    "reason": reason},
                                  notebook_id=notebook_id, cell_id=cell_id)
            for cell_id in aborted
        ])
        return aborted

    def fail_cell(self, notebook_id: str, cell_id: str, error: dict) -> bool:
        """End a running cell with an error that did not come from the engine (a dead worker, a
        restart) and publish its ending; returns False, writing nothing, when it was not running."""
        key = keys.cell(cell_id)
        state, outputs = self.redis.hmget(key, "state", "outputs")
        if as_text(state or b"") != CellState.RUNNING:
            return False
        output = {"output_type": "error", **error}
        finished = messages.cell_to_redis({
            "state": CellState.DONE, "status": "error", "error": error,
            "outputs": json.loads(outputs or b"[]") + [output],
            "completed": messages.now_iso(),
        })
        ending = message_argv([
            messages.make_message("error", error, notebook_id=notebook_id, cell_id=cell_id),
            messages.make_message("execute_reply", {"status": "error", "execution_count": None, **error},
                                  notebook_id=notebook_id, cell_id=cell_id),
            messages.status("idle", notebook_id=notebook_id, cell_id=cell_id),
        ])
        return bool(self._fail(
            keys=[key, keys.METRICS_CELLS, keys.feed_seq(notebook_id), keys.feed_stream(notebook_id)],
            args=[keys.feed_channel(notebook_id), self.feed.maxlen, len(finished), *messages.hash_pairs(finished),
                  *ending]))
