"""Notebook records in Redis: create, read, renew a lease, delete; `NotebookStore` is the one store.

All state lives in Redis so that any number of API processes and supervisors can serve at once.
Transitions that several processes race for (taking an idle worker, recording a cell, claiming a
queued cell, aborting the queue, failing a running cell, deleting a notebook) are single Lua
scripts, and each acts once: repeating one (a retry after a lost answer, a second DELETE) changes
nothing more. The store's cells are in taskkernel.cells, its worker assignment and restarts in
taskkernel.assignment; `NotebookStore` mixes both in, so callers keep one object.
"""

from __future__ import annotations

import secrets
import time

import redis

from taskkernel import keys, messages, workspace
from taskkernel.connections import Durability
from taskkernel.assignment import _ASSIGN_LUA, _DETACH_LUA, Assignment
from taskkernel.cells import _ABORT_LUA, _ENQUEUE_LUA, _FAIL_LUA, _REQUEUE_LOST_LUA, _SUBMIT_LUA, CellStore
from taskkernel.exceptions import NoLease, NotebookNotFound, NoWorkerAvailable, QuotaExceeded
from taskkernel.feed import FeedPublisher
from taskkernel.messages import as_text
from taskkernel.states import NotebookState

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



MIN_LEASE_S, MAX_LEASE_S = 0.1, 7 * 24 * 3600.0
DELETE_TAKEOVER_S = 120.0  # a delete still 'deleting' after this long stopped half-way: another may finish it


def new_notebook_id() -> str:
    """128 random bits: notebook ids are unguessable."""
    return secrets.token_hex(16)


class NotebookStore(CellStore, Assignment):
    """Reads and writes notebook and cell records; shared by the API, the workers and supervisors."""

    def __init__(self, client: redis.Redis, *, stream_maxlen: int = 10_000, durability: Durability | None = None):
        self.redis = client
        self.durability = durability or Durability()  # a submit is answered once replicas have it (Sentinel)
        self.feed = FeedPublisher(client, stream_maxlen)
        self._assign = client.register_script(_ASSIGN_LUA)
        self._submit = client.register_script(_SUBMIT_LUA)
        self._enqueue = client.register_script(_ENQUEUE_LUA)
        self._requeue_lost = client.register_script(_REQUEUE_LOST_LUA)
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

def notebook_from_redis(raw: dict) -> dict:
    data = {as_text(k): as_text(v) for k, v in raw.items()}
    worker = None
    if data.get("worker"):
        worker = {"id": data["worker"], "host": data.get("host"), "pid": int(data["pid"] or 0)}
    return {
        "id": data["id"],
        "engine": data["engine"],
        "state": data.get("state", NotebookState.IDLE.value),
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

