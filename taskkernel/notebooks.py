"""Notebook and cell records in Redis, and the notebook -> worker assignment.

All state lives in Redis so that any number of API processes and supervisors can serve at once.
Transitions that several processes race for (taking an idle worker, recording a cell, claiming a
queued cell, aborting the queue, failing a running cell, deleting a notebook) are single Lua
scripts, and each acts once: repeating one (a retry after a lost answer, a second DELETE) changes
nothing more.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable
from typing import NamedTuple

import redis

from taskkernel import files, keys, messages, workspace
from taskkernel.messages import as_text
from taskkernel.exceptions import (CellNotFound, IdempotencyKeyReused, NoLease, NotebookGone, NotebookNotFound,
                                   NoWorkerAvailable, QuotaExceeded, SubmitUncertain)
from taskkernel.feed import PUBLISH_LUA_FUNCTION, FeedPublisher, message_argv

# Take the idle worker of `engine` on the live host with the most idle workers, pin it to the
# notebook, and write the notebook record.  KEYS: hosts set, notebook hash, notebooks zset,
# per-engine notebook counts.  ARGV: engine, notebook id, now, idle prefix, host prefix, worker
# prefix, is_new ("1"/"0"), max notebooks in total (0: no limit), max of this engine (0: none).
# Quotas are checked in the same script that adds the notebook, so concurrent creates cannot
# overshoot them. Taking a worker nudges its host's supervisor (a "refill" on its command list,
# keys.host_commands) so the warm pool is topped up at once, not at the supervisor's next tick.
# A notebook pinned again on another host than its last records that its files stayed behind
# (files_lost_host, files_lost_at): a notebook's directory is on its host's disk.
_ASSIGN_LUA = """
if ARGV[7] == '1' then
  if tonumber(ARGV[8]) > 0 and redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[8]) then
    return {'', '', 'quota', 'total'}
  end
  if tonumber(ARGV[9]) > 0 and tonumber(redis.call('HGET', KEYS[4], ARGV[1]) or '0') >= tonumber(ARGV[9]) then
    return {'', '', 'quota', 'engine'}
  end
end
local best, bestn = nil, 0
for _, h in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[5] .. h) == 1 then
    local n = redis.call('SCARD', ARGV[4] .. ARGV[1] .. ':' .. h)
    if n > bestn then best, bestn = h, n end
  end
end
if not best then return false end
local w = redis.call('SPOP', ARGV[4] .. ARGV[1] .. ':' .. best)
redis.call('RPUSH', ARGV[5] .. best .. ':commands', '{"op": "refill"}')
local wk = ARGV[6] .. w
redis.call('HSET', wk, 'state', 'assigned', 'notebook', ARGV[2])
local info = redis.call('HMGET', wk, 'host', 'queue', 'pid')
if ARGV[7] == '1' then
  redis.call('HSET', KEYS[2], 'id', ARGV[2], 'engine', ARGV[1], 'state', 'idle', 'created', ARGV[3],
             'last_activity', ARGV[3], 'execution_count', 0, 'restarts', 0, 'cells', 0)
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
  redis.call('HINCRBY', KEYS[4], ARGV[1], 1)
else
  if redis.call('EXISTS', KEYS[2]) == 0 or redis.call('HGET', KEYS[2], 'state') == 'deleting' then
    redis.call('HSET', wk, 'state', 'retiring')
    return {w, info[1], 'gone'}
  end
  redis.call('HSET', KEYS[2], 'state', 'restarted', 'execution_count', 0, 'last_activity', ARGV[3])
  redis.call('HINCRBY', KEYS[2], 'restarts', 1)
  -- the directory is on its old host's disk: pinned to another host, the notebook starts without it
  local previous = redis.call('HGET', KEYS[2], 'host')
  if previous and previous ~= '' and previous ~= info[1] then
    redis.call('HSET', KEYS[2], 'files_lost_host', previous, 'files_lost_at', ARGV[3])
  end
  if redis.call('HGET', KEYS[2], 'restore_on_restart') == '1' then
    redis.call('HSET', KEYS[2], 'restore_pending', '1')
  end
end
redis.call('HSET', KEYS[2], 'worker', w, 'host', info[1], 'queue', info[2], 'pid', info[3])
-- the fence: each pinning starts an epoch; a worker claims, completes and publishes only in its own
redis.call('HSET', wk, 'epoch', redis.call('HINCRBY', KEYS[2], 'epoch', 1))
return {w, info[1], 'ok'}
"""

# Record a cell, queue it behind the notebook's others and push its Celery task onto the queue of
# the notebook's worker, all at once, at most once per cell id and per Idempotency-Key.  KEYS:
# notebook, cell, cells, pending, feed stream, idempotency key.  ARGV: cell id, the task message's
# two halves (joined around the JSON-quoted queue name, as kombu's Redis transport stores a message:
# workers.tasks.task_message), how long the idempotency key keeps the cell (ms; 0: no key), then
# the cell hash as field/value pairs.  Returns false (no such notebook), {''} (it has no worker
# right now), {'=', cell id, newest feed stream id} (that cell was recorded already: by this very
# call, retried after its answer was lost, or under the same idempotency key), or {queue, position,
# newest feed stream id}: the stream id lets a waiting caller read the cell's reply without a race
# and without another call.
_SUBMIT_LUA = """
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
redis.call('LPUSH', queue, ARGV[2] .. cjson.encode(queue) .. ARGV[3])
if ARGV[4] ~= '0' then redis.call('SET', KEYS[6], ARGV[1], 'PX', ARGV[4]) end
return {queue, position, newest}
"""

# Push a Celery task message onto the queue of the notebook's worker, behind its queued cells.
# KEYS: notebook.  ARGV: the message's two halves (workers.tasks.task_message).  Returns false (no
# such notebook), '' (it has no worker right now) or the queue.
_ENQUEUE_LUA = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'deleting' then return false end
local queue = redis.call('HGET', KEYS[1], 'queue')
if not queue or queue == '' then return '' end
redis.call('LPUSH', queue, ARGV[1] .. cjson.encode(queue) .. ARGV[2])
return queue
"""

# Renew a notebook's lease.  KEYS: notebook, leases zset.  ARGV: now, notebook id.  Returns the new expiry,
# false (no such notebook) or '' (it has no lease).
_RENEW_LUA = """
local lease = redis.call('HGET', KEYS[1], 'lease_s')
if not lease then
  if redis.call('EXISTS', KEYS[1]) == 0 then return false end
  return ''
end
if redis.call('HGET', KEYS[1], 'state') == 'deleting' then return false end
local until_s = tonumber(ARGV[1]) + tonumber(lease)
redis.call('HSET', KEYS[1], 'lease_until', tostring(until_s))
redis.call('ZADD', KEYS[2], until_s, ARGV[2])
return tostring(until_s)
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

# Start deleting a notebook: flip its state to 'deleting', once (so of concurrent deletes exactly
# one goes on; a delete that stopped half-way may be taken over after ARGV[2] seconds).  KEYS:
# notebook.  ARGV: now, seconds after which a 'deleting' notebook may be taken over.  Returns
# {engine, worker, host}, or false (no such notebook, or another delete has it).
_DELETE_CLAIM_LUA = """
local nb = redis.call('HMGET', KEYS[1], 'engine', 'state', 'deleting_since', 'worker', 'host')
if not nb[1] then return false end
if nb[2] == 'deleting' and tonumber(ARGV[1]) - tonumber(nb[3] or '0') < tonumber(ARGV[2]) then return false end
redis.call('HSET', KEYS[1], 'state', 'deleting', 'deleting_since', ARGV[1])
return {nb[1], nb[4] or '', nb[5] or ''}
"""

# Remove every key of a notebook being deleted; its engine's count goes down only if this call
# removed it from the notebooks set (never twice, never below what was added).  KEYS: notebook,
# cells, pending, feed seq, feed stream, checkpoint, notebooks zset, orphans zset, leases zset,
# per-engine counts.  ARGV: notebook id, engine, cell key prefix, the notebook's idempotency key
# prefix.
_DELETE_LUA = """
for _, c in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
  local digest = redis.call('HGET', ARGV[3] .. c, 'idempotency')
  if digest and digest ~= '' then redis.call('DEL', ARGV[4] .. digest) end
  redis.call('DEL', ARGV[3] .. c)
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6])
redis.call('ZREM', KEYS[8], ARGV[1])
redis.call('ZREM', KEYS[9], ARGV[1])
if redis.call('ZREM', KEYS[7], ARGV[1]) == 1 then
  local n = redis.call('HINCRBY', KEYS[10], ARGV[2], -1)
  if n <= 0 then redis.call('HDEL', KEYS[10], ARGV[2]) end
end
return 1
"""

# Detach a notebook from its worker before a restart.  KEYS: notebook.  ARGV: expected worker
# ("" for any), now.  Returns the old worker id and host, or false if the notebook moved on.
_DETACH_LUA = """
local w = redis.call('HGET', KEYS[1], 'worker')
if not w or w == '' then return false end
if ARGV[1] ~= '' and w ~= ARGV[1] then return false end
local h = redis.call('HGET', KEYS[1], 'host')
redis.call('HSET', KEYS[1], 'worker', '', 'queue', '', 'pid', '', 'state', 'restarting', 'last_activity', ARGV[2])
return {w, h}
"""



MIN_LEASE_S, MAX_LEASE_S = 0.1, 7 * 24 * 3600.0
# what a cell that a restart killed ends with (the API's restart and the gateway's)
RESTARTED_ERROR = {"ename": "Restarted", "evalue": "the notebook was restarted while this cell ran",
                   "traceback": ["Restarted: the notebook was restarted while this cell ran"]}
DELETE_TAKEOVER_S = 120.0  # a delete still 'deleting' after this long stopped half-way: another may finish it


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


def new_notebook_id() -> str:
    """128 random bits: notebook ids are unguessable."""
    return secrets.token_hex(16)


class NotebookStore:
    """Reads and writes notebook and cell records; shared by the API, the workers and supervisors."""

    def __init__(self, client: redis.Redis, *, stream_maxlen: int = 10_000):
        self.redis = client
        self.feed = FeedPublisher(client, stream_maxlen)
        self._assign = client.register_script(_ASSIGN_LUA)
        self._submit = client.register_script(_SUBMIT_LUA)
        self._enqueue = client.register_script(_ENQUEUE_LUA)
        self._abort = client.register_script(_ABORT_LUA)
        self._fail = client.register_script(_FAIL_LUA)
        self._renew = client.register_script(_RENEW_LUA)
        self._detach = client.register_script(_DETACH_LUA)
        self._delete_claim = client.register_script(_DELETE_CLAIM_LUA)
        self._delete = client.register_script(_DELETE_LUA)

    # --- notebooks ---------------------------------------------------------------------------

    def create(self, engine: str, timeout_s: float, token_sha256: str = "", *, max_total: int = 0,
               max_of_engine: int = 0, options: dict | None = None, lease_s: float = 0.0,
               workspace_json: str = "") -> dict:
        """Pin a new notebook to an idle worker of `engine`, waiting up to `timeout_s` for one.

        `options` (restore_on_restart, checkpoint_every_cell) are stored in the record. With
        `lease_s`, the notebook is deleted unless its lease is renewed within every `lease_s`
        (a client that vanishes without deleting its notebook does not keep a worker forever).
        Raises NoWorkerAvailable when none became idle in time, QuotaExceeded when a quota is full.
        """
        notebook_id = new_notebook_id()
        got = self._try_assign(engine, notebook_id, new=True, timeout_s=timeout_s,
                               quotas=(max_total, max_of_engine))
        if got is not None and got[2] == "quota":
            which = "in total" if got[3] == "total" else f"of engine {engine!r}"
            limit = max_total if got[3] == "total" else max_of_engine
            raise QuotaExceeded(f"the quota of {limit} notebooks {which} is reached", engine=engine)
        if got is None:
            raise NoWorkerAvailable(
                f"no idle {engine!r} worker became free within {timeout_s:g} s", engine=engine
            )
        extra = {k: ("1" if v else "0") for k, v in (options or {}).items()}
        if token_sha256:
            extra["token_sha256"] = token_sha256
        if workspace_json:  # the cwd and env its engine enters before the first cell (workspace.py)
            extra[workspace.RECORD_FIELD] = workspace_json
        if lease_s:
            until = time.time() + lease_s
            extra.update(lease_s=repr(float(lease_s)), lease_until=repr(until))
            self.redis.zadd(keys.LEASES, {notebook_id: until})
        if extra:
            self.redis.hset(keys.notebook(notebook_id), mapping=extra)
        return self.get(notebook_id)

    def renew_lease(self, notebook_id: str) -> dict:
        """Extend the notebook's lease by its length from now; NoLease if it was opened without one."""
        got = self._renew(keys=[keys.notebook(notebook_id), keys.LEASES], args=[time.time(), notebook_id])
        if got is None:
            raise NotebookNotFound(notebook_id)
        if not got:
            raise NoLease(f"notebook {notebook_id} was opened without a lease", notebook_id=notebook_id)
        return self.get(notebook_id)

    def take_expired_lease(self, now: float) -> str | None:
        """One notebook whose lease ran out, removed from the lease set (so exactly one caller gets
        it, however many supervisors look), or None."""
        for member in self.redis.zrangebyscore(keys.LEASES, "-inf", now, start=0, num=10):
            if self.redis.zrem(keys.LEASES, member):
                return as_text(member)
        return None

    def _try_assign(self, engine: str, notebook_id: str, *, new: bool, timeout_s: float, quotas=(0, 0)):
        # an empty pool is refilled in ~0.1 s: retry soon, but never more than 50 times a second
        deadline = time.monotonic() + timeout_s
        delay = 0.002
        while True:
            got = self._assign(
                keys=[keys.HOSTS, keys.notebook(notebook_id), keys.NOTEBOOKS, keys.ENGINE_COUNTS],
                args=[engine, notebook_id, time.time(), keys.idle_workers("", "")[:-1],
                      keys.host(""), keys.worker(""), "1" if new else "0", quotas[0], quotas[1]],
            )
            if got:
                return [as_text(x) for x in got]
            if time.monotonic() >= deadline:
                return None
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.02)

    def get(self, notebook_id: str) -> dict:
        raw = self.redis.hgetall(keys.notebook(notebook_id))
        if not raw or b"engine" not in raw:
            raise NotebookNotFound(notebook_id)
        return notebook_from_redis(raw)

    def exists(self, notebook_id: str) -> bool:
        return bool(self.redis.exists(keys.notebook(notebook_id)))

    def list(self) -> list[dict]:
        ids = [as_text(i) for i in self.redis.zrange(keys.NOTEBOOKS, 0, -1)]
        pipe = self.redis.pipeline(transaction=False)
        for notebook_id in ids:
            pipe.hgetall(keys.notebook(notebook_id))
        return [notebook_from_redis(raw) for raw in pipe.execute() if raw and b"engine" in raw]

    def delete(self, notebook_id: str, reason: str = "the notebook was deleted") -> None:
        """Abort queued cells, retire the worker and remove every key of the notebook.

        Of concurrent deletes exactly one does it; the others raise NotebookNotFound.
        """
        claimed = self._delete_claim(keys=[keys.notebook(notebook_id)], args=[time.time(), DELETE_TAKEOVER_S])
        if not claimed:
            raise NotebookNotFound(notebook_id)
        engine, worker, host = (as_text(x) for x in claimed)
        self.abort_pending(notebook_id, reason=reason)
        self.feed.publish(notebook_id, messages.status("dead", notebook_id=notebook_id))
        if worker:
            self.retire_worker(worker, host)
        self._delete(keys=[keys.notebook(notebook_id), keys.notebook_cells(notebook_id),
                           keys.notebook_pending(notebook_id), keys.feed_seq(notebook_id),
                           keys.feed_stream(notebook_id), keys.checkpoint(notebook_id), keys.NOTEBOOKS,
                           keys.ORPHANS, keys.LEASES, keys.ENGINE_COUNTS],
                     args=[notebook_id, engine, keys.cell(""), keys.idempotency(notebook_id, "")])

    def retire_worker(self, worker_id: str, host_name: str) -> None:
        """Ask the worker's supervisor to stop it; a pinned worker is never reused."""
        self.redis.hset(keys.worker(worker_id), "state", "retiring")
        self.redis.rpush(keys.host_commands(host_name), json.dumps({"op": "retire", "worker": worker_id}))

    def wait_for_worker(self, notebook_id: str, timeout_s: float) -> dict:
        """The notebook record once it has a worker (it may be restarting); NoWorkerAvailable after timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            record = self.get(notebook_id)
            if record["state"] == "deleting":
                raise NotebookGone(f"notebook {notebook_id} is being deleted", notebook_id=notebook_id)
            if record["worker"]:
                return record
            if time.monotonic() >= deadline:
                raise NoWorkerAvailable(f"notebook {notebook_id} has had no worker for {timeout_s:g} s",
                                        notebook_id=notebook_id)
            self.assign_orphan(notebook_id)
            time.sleep(0.02)

    # --- restarts ----------------------------------------------------------------------------

    def restart(self, notebook_id: str, *, expected_worker: str = "", reason: str,
                cell_error: dict | None = None, running_cell: str | None = None) -> bool:
        """Give the notebook a fresh worker: fail its running cell with `cell_error` (if given),
        abort its queue, announce it on the feed, retire the old worker and pin a new one.

        `running_cell` names the cell that was running when the caller already knows it (a
        supervisor that has cleaned up the dead worker's record). Returns False when the notebook
        had already moved on from `expected_worker`.
        """
        old = self.detach(notebook_id, expected_worker)
        if old is None:
            return False
        self.finish_restart(notebook_id, old, reason=reason, cell_error=cell_error, running_cell=running_cell)
        return True

    def detach(self, notebook_id: str, expected_worker: str = "") -> tuple[str, str] | None:
        """Unpin the notebook from its worker (new cells then wait for the next one); returns the old
        (worker, host), or None when the notebook had moved on from `expected_worker`."""
        old = self._detach(keys=[keys.notebook(notebook_id)], args=[expected_worker, time.time()])
        return (as_text(old[0]), as_text(old[1])) if old else None

    def finish_restart(self, notebook_id: str, old: tuple[str, str], *, reason: str,
                       cell_error: dict | None = None, running_cell: str | None = None) -> None:
        """The rest of a restart, once `detach` has returned `old`."""
        old_worker, old_host = old
        running = running_cell if running_cell is not None else \
            as_text(self.redis.hget(keys.worker(old_worker), "cell") or b"")
        if running and cell_error is not None:
            self.fail_cell(notebook_id, running, cell_error)
        self.abort_pending(notebook_id, reason=reason)
        self.feed.publish(notebook_id, messages.status("restarting", notebook_id=notebook_id))
        files.mark_handover(self.redis, notebook_id, old_worker)  # the old worker's supervisor clears it
        self.redis.zadd(keys.ORPHANS, {notebook_id: time.time()})
        try:
            self.assign_orphan(notebook_id, self.get(notebook_id)["engine"])
        finally:
            # last: a worker restarting its own notebook (its engine died) is killed by this
            self.retire_worker(old_worker, old_host)

    def assign_orphan(self, notebook_id: str, engine: str | None = None) -> bool:
        """Try once to pin a fresh worker to a notebook that lost its own; True on success."""
        if not self.redis.zscore(keys.ORPHANS, notebook_id):
            return False
        if engine is None:
            try:
                engine = self.get(notebook_id)["engine"]
            except NotebookNotFound:
                self.redis.zrem(keys.ORPHANS, notebook_id)
                return False
        got = self._try_assign(engine, notebook_id, new=False, timeout_s=0)
        if got is None:
            return False
        self.redis.zrem(keys.ORPHANS, notebook_id)
        if got[2] == "gone":
            self.retire_worker(got[0], got[1])
            return False
        self.feed.publish(notebook_id, messages.status("idle", notebook_id=notebook_id))
        return True

    def orphans(self) -> list[str]:
        return [as_text(n) for n in self.redis.zrange(keys.ORPHANS, 0, -1)]

    # --- cells ---------------------------------------------------------------------------------

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
                got = self._submit(keys=call.keys, args=call.args)
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
            "state": "queued",
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
        if as_text(state or b"") != "running":
            return False
        output = {"output_type": "error", **error}
        finished = messages.cell_to_redis({
            "state": "done", "status": "error", "error": error,
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


def notebook_from_redis(raw: dict) -> dict:
    data = {as_text(k): as_text(v) for k, v in raw.items()}
    worker = None
    if data.get("worker"):
        worker = {"id": data["worker"], "host": data.get("host"), "pid": int(data["pid"] or 0)}
    return {
        "id": data["id"],
        "engine": data["engine"],
        "state": data.get("state", "idle"),
        "execution_count": int(data.get("execution_count") or 0),
        "cells": int(data.get("cells") or 0),
        "restarts": int(data.get("restarts") or 0),
        "dropped_deliveries": int(data.get("dropped_deliveries") or 0),
        "restore_on_restart": data.get("restore_on_restart") == "1",
        "checkpoint_every_cell": data.get("checkpoint_every_cell") == "1",
        "created": _iso(data.get("created")),
        "last_activity": _iso(data.get("last_activity")),
        "lease_s": float(data["lease_s"]) if data.get("lease_s") else None,
        "lease_until": _iso(data.get("lease_until")),
        "worker": worker,
        **dict(zip(("cwd", "env"), workspace.decode(data.get(workspace.RECORD_FIELD)))),
        "files_lost": _files_lost(data),
    }


def _files_lost(data: dict) -> dict | None:
    """Said of a notebook moved to another host (its own died or stopped): its directory stayed on
    the old host's disk, and it went on with an empty one."""
    if not data.get("files_lost_host"):
        return None
    return {"host": data["files_lost_host"], "at": _iso(data.get("files_lost_at")),
            "message": f"the notebook moved from host {data['files_lost_host']!r} to "
                       f"{data.get('host') or 'another host'!r}: the files in its directory stayed on the old "
                       "host's disk and it started with an empty directory (a checkpoint taken with "
                       "include_files in a shared TASKKERNEL_CHECKPOINT_DIR can bring them back)"}


def _iso(epoch: str | None) -> str | None:
    if not epoch:
        return None
    import datetime as dt
    return dt.datetime.fromtimestamp(float(epoch), dt.timezone.utc).isoformat()

