"""The supervisor's housekeeping policies: cell wall time, leases, idle culling, dead hosts.

Each runs from the supervisor's loop (workers/supervisor.py), which mixes `Housekeeping` in: the
process supervisor forks, reaps, refills and heartbeats; these decide which notebooks and workers
to end, and why.
"""

from __future__ import annotations

import logging
import os
import signal
import time

from taskkernel import files, keys, messages
from taskkernel.exceptions import TaskkernelError
from taskkernel.states import NotebookState, encoded

log = logging.getLogger("taskkernel.supervisor")


class Housekeeping:
    """The policies of `Supervisor` (its children, settings, store and host watch)."""

    # --- wall time ------------------------------------------------------------------------------

    def _enforce_cell_limits(self) -> None:
        """Interrupt a cell past its wall time; kill its worker if the interrupt does not take."""
        self._last_limit_check = time.monotonic()
        limited = []
        for child in self.children.values():
            limit = self.specs.get(child.engine, {}).get("limits", {}).get("cell_timeout_s",
                                                                           self.settings.cell_timeout_s)
            if limit and float(limit) > 0:
                limited.append((child, float(limit)))
        if not limited:
            return
        pipe = self.redis.pipeline(transaction=False)
        for child, _ in limited:
            pipe.hmget(keys.worker(child.worker_id), "cell", "cell_started")
        now = time.time()
        for (child, limit), (cell, started) in zip(limited, pipe.execute()):
            if not cell or not started:
                child.interrupted_at = None
                continue
            if now - float(started) < limit:
                continue
            if child.interrupted_at is None:
                log.warning("cell %s exceeded %g s: interrupting", cell.decode(), limit)
                child.interrupted_at = time.monotonic()
                _kill(child.pid, signal.SIGUSR2)
            elif time.monotonic() - child.interrupted_at > self.settings.interrupt_grace_s:
                child.kill_reason = f"the cell exceeded its {limit:g} s wall time and ignored the interrupt"
                _kill(child.pid, signal.SIGKILL)

    # --- other hosts, idle notebooks ---------------------------------------------------------------

    def _recover_dead_hosts(self) -> None:
        """Re-home the notebooks of hosts whose heartbeat stopped (judged by `HostWatch`, on this
        supervisor's clock): one live supervisor does it, and clears what the host left in Redis."""
        for host, beats in self.watch.silent_hosts():
            if not self.watch.declare_dead(host, beats):
                continue
            log.warning("host %s stopped heartbeating: re-homing its notebooks", host)
            reason = f"the host {host!r} running this notebook stopped responding"
            for notebook_id in [n.decode() for n in self.redis.zrange(keys.NOTEBOOKS, 0, -1)]:
                worker_host, worker_id = self.redis.hmget(keys.notebook(notebook_id), "host", "worker")
                if worker_host is None or worker_host.decode() != host or not worker_id:
                    continue
                running = self.redis.hget(keys.worker(worker_id.decode()), "cell") or b""
                self.store.restart(notebook_id, expected_worker=worker_id.decode(), reason=reason,
                                   running_cell=running.decode(), cell_error=messages.error_content(
                                       messages.ENGINE_DIED, f"{reason}; the namespace was lost",
                                       [f"{messages.ENGINE_DIED}: {reason}"]))
                files.handover_done(self.redis, notebook_id)  # its files died with the host
            removed = self.watch.forget(host)
            log.info("host %s given up: %d of its keys removed", host, removed)
            self.watch.recovered(host)

    def _stop_forgotten_workers(self) -> None:
        """Kill children whose worker record is gone: this host was declared dead while it could not
        heartbeat (frozen, partitioned) and its notebooks live elsewhere now; the pool is refilled."""
        children = list(self.children.values())
        if not children:
            return
        pipe = self.redis.pipeline(transaction=False)
        for child in children:
            pipe.exists(keys.worker(child.worker_id))
        for child, exists in zip(children, pipe.execute()):
            if not exists and not child.kill_reason:
                log.warning("worker %s (pid %d) was given up while this host was unreachable: stopping it",
                            child.worker_id, child.pid)
                child.kill_reason = "retired"
                _kill(child.pid, signal.SIGKILL)

    def _expire_leases(self) -> None:
        """Delete notebooks whose client stopped renewing their lease (each taken by one supervisor)."""
        while (notebook_id := self.store.take_expired_lease(time.time())) is not None:
            log.info("deleting notebook %s: its lease ran out", notebook_id, extra={"notebook_id": notebook_id})
            try:
                self.store.delete(notebook_id, reason="its lease ran out (the client stopped renewing it)")
            except TaskkernelError:
                pass

    def _cull_idle(self) -> None:
        """Shut down notebooks idle longer than cull_idle_s, as Jupyter's culler does."""
        self._last_cull = time.monotonic()
        cutoff = time.time() - self.settings.cull_idle_s
        for notebook_id in [n.decode() for n in self.redis.zrange(keys.NOTEBOOKS, 0, -1)]:
            state, last, pending = self.redis.hmget(keys.notebook(notebook_id), "state", "last_activity", "worker")
            if state not in (encoded(NotebookState.IDLE), encoded(NotebookState.RESTARTED)) or not last \
                    or float(last) > cutoff:
                continue
            if self.redis.llen(keys.notebook_pending(notebook_id)):
                continue
            log.info("culling notebook %s, idle since %s", notebook_id, last.decode())
            try:
                self.store.delete(notebook_id, reason=f"idle for more than {self.settings.cull_idle_s:g} s")
            except TaskkernelError:
                pass


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
