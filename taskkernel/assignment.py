"""The notebook -> worker assignment: taking an idle worker, restarts onto a fresh one, orphans.

`Assignment` is a part of `NotebookStore`, which mixes it in.
"""

from __future__ import annotations

import time

from taskkernel import files, hosts, keys, messages
from taskkernel.exceptions import NotebookGone, NotebookNotFound, NoWorkerAvailable
from taskkernel.messages import as_text
from taskkernel.states import NotebookState, WorkerState

# Take the idle worker of `engine` on the live host with the most idle workers, pin it to the
# notebook, and write the notebook record.  KEYS: hosts set, notebook hash, notebooks zset,
# per-engine notebook counts.  ARGV: engine, notebook id, now, idle prefix, host prefix, worker
# prefix, is_new ("1"/"0"), max notebooks in total (0: no limit), max of this engine (0: none),
# the supervisor's refill command (hosts.REFILL_COMMAND).
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
redis.call('RPUSH', ARGV[5] .. best .. ':commands', ARGV[10])
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

# what a cell that a restart killed ends with (the API's restart and the gateway's)
RESTARTED_ERROR = messages.error_content("Restarted", "the notebook was restarted while this cell ran")


class Assignment:
    """The assignment half of `NotebookStore`: its methods use the store's Redis client, feed and scripts."""

    def _try_assign(self, engine: str, notebook_id: str, *, new: bool, timeout_s: float, quotas=(0, 0)):
        # an empty pool is refilled in ~0.1 s: retry soon, but never more than 50 times a second
        deadline = time.monotonic() + timeout_s
        delay = 0.002
        while True:
            got = self._assign(
                keys=[keys.HOSTS, keys.notebook(notebook_id), keys.NOTEBOOKS, keys.ENGINE_COUNTS],
                args=[engine, notebook_id, time.time(), keys.idle_workers("", "")[:-1],
                      keys.host(""), keys.worker(""), "1" if new else "0", quotas[0], quotas[1], hosts.REFILL_COMMAND],
            )
            if got:
                return [as_text(x) for x in got]
            if time.monotonic() >= deadline:
                return None
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.02)

    def retire_worker(self, worker_id: str, host_name: str) -> None:
        """Ask the worker's supervisor to stop it; a pinned worker is never reused."""
        self.redis.hset(keys.worker(worker_id), "state", WorkerState.RETIRING)
        hosts.send_command(self.redis, host_name, hosts.RETIRE, worker=worker_id)

    def wait_for_worker(self, notebook_id: str, timeout_s: float) -> dict:
        """The notebook record once it has a worker (it may be restarting); NoWorkerAvailable after timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            record = self.get(notebook_id)
            if record["state"] == NotebookState.DELETING:
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
