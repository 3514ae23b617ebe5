"""The host's supervisor: keeps a warm pool of worker processes, forks them, reaps them.

The supervisor pre-imports Celery, kombu and redis-py once and forks every worker from itself,
so a new worker costs ~15 MiB and ~0.1 s instead of a fresh interpreter; each worker then starts
its own sandboxed engine process (exec'd fresh: it inherits nothing of the service's memory).
It is single-threaded on purpose (forking a threaded process is unsafe): one loop waits for
commands on a Redis list, reaps exited children, refills pools, heartbeats the host, and runs its
housekeeping policies (workers/housekeeping.py: wall time, leases, culling, dead hosts); it re-homes
notebooks whose worker died. Being every worker's parent, it learns of a death at once (waitpid)
and tells the notebook's callers through the store.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import redis

from taskkernel import celery_wire, connections, files, hosts, keys, logs, messages
from taskkernel.hosts import HostWatch
from taskkernel.engines import registry
from taskkernel.notebooks import NotebookStore
from taskkernel.settings import Settings
from taskkernel.states import NotebookState, WorkerState, encoded
from taskkernel.workers import cgroups, directories, kernelspecs, sandbox
from taskkernel.workers.checkpoints import CheckpointStore
from taskkernel.workers.housekeeping import Housekeeping, _kill

log = logging.getLogger("taskkernel.supervisor")

ENGINE_RESCAN_S = 2.0
LIMIT_CHECK_S = 0.5
CULL_CHECK_S = 2.0
CHECKPOINT_SWEEP_S = 10.0  # how often checkpoints' files of notebooks gone are looked for
STARTUP_FAILURES = 3  # workers of one engine dying before ready, in a row, pause the engine
STARTUP_PAUSE_S = 30.0
# modules a worker needs once it runs Celery's solo worker, imported by the parent before forking
WORKER_MODULES = (
    "celery.apps.worker", "celery.worker", "celery.worker.consumer", "celery.worker.components",
    "celery.worker.strategy", "celery.worker.request", "celery.worker.loops", "celery.worker.pidbox",
    "celery.worker.control", "celery.worker.heartbeat", "celery.worker.autoscale", "celery.worker.state",
    "celery.concurrency.solo", "celery.app.trace", "celery.events", "celery.events.dispatcher",
    "kombu.asynchronous", "kombu.asynchronous.hub", "kombu.asynchronous.timer", "billiard", "billiard.pool",
    "ctypes", "psutil", "resource", "pwd", "codecs", "select", "subprocess",
    "celery.app.amqp", "celery.app.control", "celery.app.events", "celery.app.log", "celery.app.routes",
    "celery.backends", "celery.backends.base", "celery.worker.consumer.delayed_delivery", "kombu.matcher",
    "kombu.pidbox", "encodings.idna", "stringprep", "unicodedata",
)


@dataclass
class Child:
    """One worker process this supervisor forked."""

    worker_id: str
    pid: int
    engine: str
    slot: int
    queue: str
    started: float = field(default_factory=time.monotonic)
    interrupted_at: float | None = None  # when a wall-time interrupt was sent
    kill_reason: str = ""


class Supervisor(Housekeeping):
    """Runs the worker pools of one host until stopped by SIGTERM/SIGINT or `stop()`."""

    def __init__(self, settings: Settings, pool_sizes: dict[str, int] | None = None):
        self.settings = settings
        self.host = settings.host_name
        self.pool_overrides = dict(pool_sizes or {})
        self.children: dict[int, Child] = {}
        self.specs: dict[str, dict] = {}
        self.spec_errors: dict[str, str] = {}
        self._stopping = False
        self._last_heartbeat = 0.0
        self._last_scan = 0.0
        self._last_limit_check = 0.0
        self._last_cull = 0.0
        self._last_sweep = 0.0
        self._startup_failures: dict[str, int] = {}
        self._paused: dict[str, float] = {}  # engine -> monotonic time until which it is not forked
        self.app = None
        self.sandbox_root = Path()
        self._own_sandbox_root = False
        self.redis: redis.Redis | None = None
        self.store: NotebookStore | None = None
        self.watch: HostWatch | None = None
        self.checkpoints: CheckpointStore | None = None

    # --- start-up ------------------------------------------------------------------------------

    def preimport(self) -> None:
        """Import and warm up everything a worker needs, before the first fork."""
        from kombu.transport import redis as _kombu_redis  # noqa: F401

        from taskkernel.workers import process  # noqa: F401
        from taskkernel.celery_wire import make_celery

        self.app = make_celery(self.settings)
        self.app.loader.import_default_modules()
        self.app.finalize(auto=True)
        for attribute in ("Worker", "WorkController", "amqp", "log", "events", "control", "conf"):
            getattr(self.app, attribute)  # lazy parts each worker would build after its fork
        from taskkernel.workers import checkpoints, engine, files, runtime, sandbox, tasks  # noqa: F401

        self._scan_engines()
        for module in WORKER_MODULES:  # what a worker would otherwise import after every fork
            try:
                importlib.import_module(module)
            except ImportError as exc:
                log.debug("pre-import of %s failed: %r", module, exc)
        # Everything imported so far is moved out of the collector's reach once: a collection in
        # the parent would otherwise write every object's GC header and un-share those pages in
        # every worker forked before it (measured: idle worker USS 54 -> 25 MiB).
        gc.collect()
        gc.freeze()

    def _make_sandbox_root(self) -> Path:
        """The directory under which each worker gets its private one (0711: no listing it)."""
        if self.settings.sandbox_dir:
            root = Path(self.settings.sandbox_dir) / self.host
            root.mkdir(parents=True, exist_ok=True)
        else:
            root = Path(tempfile.mkdtemp(prefix=f"taskkernel-{self.host}-"))
            self._own_sandbox_root = True
        os.chmod(root, 0o711)
        directories.clear(root)  # a previous run's stashes and sockets serve no notebook of this one
        return root

    def pool_size(self, engine: str) -> int:
        if engine in self.pool_overrides:
            return self.pool_overrides[engine]
        spec_size = self.specs.get(engine, {}).get("pool_size")
        return int(spec_size) if spec_size is not None else self.settings.pool_size

    def stop(self, *_args) -> None:
        self._stopping = True

    def run(self) -> None:
        isolation = sandbox.check(self.settings)  # refuses to start when the sandbox cannot be built
        self.sandbox_root = self._make_sandbox_root()
        self.preimport()
        self.redis = connections.connect(self.settings.redis_url, health_check_interval=30)
        self.store = NotebookStore(self.redis, stream_maxlen=self.settings.feed_stream_maxlen)
        self.checkpoints = CheckpointStore(self.redis, self.settings.checkpoint_dir,
                                           files_directory=directories.checkpoint_files_dir(self.sandbox_root))
        self.watch = HostWatch(self.redis, self.host, ttl_s=self.settings.host_ttl_s,
                               interval_s=self.settings.heartbeat_interval_s)
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        log.info("supervisor %s: engines %s; %s", self.host, sorted(self.specs), isolation)
        try:
            while not self._stopping:
                try:
                    self.tick()
                except redis.RedisError as exc:
                    # children that exit meanwhile stay zombies until Redis is back to record it
                    log.warning("redis unavailable (%r); retrying", exc)
                    time.sleep(0.5)
        finally:
            self.shutdown()

    # --- the loop -------------------------------------------------------------------------------

    def tick(self) -> None:
        command = hosts.next_command(self.redis, self.host, 0.1)
        if command is not None:
            self._command(command)
        self._reap()
        now = time.monotonic()
        if now - self._last_scan >= ENGINE_RESCAN_S:
            self._scan_engines()
        self._refill()
        if now - self._last_heartbeat >= self.settings.heartbeat_interval_s:
            self._heartbeat()
        if now - self._last_limit_check >= LIMIT_CHECK_S:
            self._enforce_cell_limits()
            self._stop_forgotten_workers()
            self._expire_leases()
            self._recover_dead_hosts()
            for notebook_id in self.store.orphans():
                self.store.assign_orphan(notebook_id)
        self._hand_over_directories()
        if now - self._last_sweep >= CHECKPOINT_SWEEP_S:
            self._sweep_checkpoint_files()
        if self.settings.cull_idle_s > 0 and now - self._last_cull >= CULL_CHECK_S:
            self._cull_idle()

    def _command(self, command: dict) -> None:
        if command.get("op") == hosts.RETIRE:
            child = self._child_by_worker(command.get("worker", ""))
            if child is not None:
                child.kill_reason = child.kill_reason or "retired"
                _kill(child.pid, signal.SIGKILL)
        elif command.get("op") == hosts.SCALE:
            self.pool_overrides[command["engine"]] = int(command["size"])
        elif command.get("op") == hosts.REFILL:
            pass  # an API took an idle worker: this tick's _refill replaces it
        else:
            log.warning("unknown command %r", command)

    def _scan_engines(self) -> None:
        """Re-read engine files: added, changed and removed engines take effect within seconds."""
        self._last_scan = time.monotonic()
        specs, errors = registry.load_specs(self.settings.config_dir)
        for name, spec in list(specs.items()):
            try:
                registry.check_class(spec)
                kernelspecs.check(spec)
            except Exception as exc:
                errors[spec["source"]] = str(exc)
                del specs[name]
        for engine, until in list(self._paused.items()):
            if time.monotonic() < until and engine in specs:
                errors[specs[engine]["source"]] = (f"engine {engine!r} paused: its workers died at start-up "
                                                   f"{STARTUP_FAILURES} times in a row")
                del specs[engine]
        for source, message in errors.items():
            if self.spec_errors.get(source) != message:
                log.error("engine file %s is broken: %s", source, message)
        self.specs, self.spec_errors = specs, errors

    def _refill(self) -> None:
        idle_or_starting: dict[str, int] = {}
        pipe = self.redis.pipeline(transaction=False)
        engines = sorted(set(self.specs) | {c.engine for c in self.children.values()})
        for engine in engines:
            pipe.scard(keys.idle_workers(engine, self.host))
        idle_counts = dict(zip(engines, pipe.execute()))
        starting = self._starting_children()
        for engine in engines:
            idle_or_starting[engine] = idle_counts[engine] + sum(1 for c in starting if c.engine == engine)
        for engine in sorted(self.specs):
            missing = self.pool_size(engine) - idle_or_starting.get(engine, 0)
            room = self.settings.max_workers - len(self.children)
            for _ in range(max(0, min(missing, room))):
                self._spawn(self.specs[engine])
        # shrink: idle workers beyond the pool size (or of engines no longer defined) retire
        for engine in engines:
            surplus = idle_or_starting.get(engine, 0) - (self.pool_size(engine) if engine in self.specs else 0)
            for _ in range(max(0, surplus)):
                worker_id = self.redis.spop(keys.idle_workers(engine, self.host))
                if worker_id is None:
                    break
                self.store.retire_worker(worker_id.decode(), self.host)

    def _starting_children(self) -> list[Child]:
        """Children forked but not yet idle or pinned (their worker hash still says starting)."""
        candidates = [c for c in self.children.values() if time.monotonic() - c.started < 120]
        if not candidates:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for child in candidates:
            pipe.hget(keys.worker(child.worker_id), "state")
        return [c for c, state in zip(candidates, pipe.execute()) if state == encoded(WorkerState.STARTING)]

    def _spawn(self, spec: dict) -> None:
        slot = self._free_slot()
        queue = keys.worker_queue(self.host, slot)
        worker_id = "w" + secrets.token_hex(8)
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(*celery_wire.queue_lists(queue))  # nothing left over from the slot's last worker
        pipe.sadd(keys.host_workers(self.host), worker_id)
        pipe.hset(keys.worker(worker_id), mapping={
            "id": worker_id, "host": self.host, "engine": spec["name"], "queue": queue, "slot": slot,
            "state": WorkerState.STARTING.value, "notebook": "", "cell": "", "pid": "",
        })
        pipe.execute()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                from taskkernel.workers.process import run_worker

                code = run_worker(self.app, self.settings, spec, worker_id=worker_id, queue=queue, slot=slot,
                                  sandbox_root=self.sandbox_root)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        self.children[pid] = Child(worker_id, pid, spec["name"], slot, queue)

    def _free_slot(self) -> int:
        used = {c.slot for c in self.children.values()}
        slot = 0
        while slot in used:
            slot += 1
        return slot

    def _child_by_worker(self, worker_id: str) -> Child | None:
        return next((c for c in self.children.values() if c.worker_id == worker_id), None)

    # --- deaths ---------------------------------------------------------------------------------

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is not None:
                self._on_exit(child, status)

    def _note_startup(self, child: Child, state: str | None) -> None:
        """Stop forking an engine whose workers keep dying before they are ready (a crash loop)."""
        if state != WorkerState.STARTING:
            self._startup_failures.pop(child.engine, None)
            return
        failures = self._startup_failures.get(child.engine, 0) + 1
        self._startup_failures[child.engine] = failures
        if failures >= STARTUP_FAILURES:
            log.error("engine %s: %d workers died at start-up; pausing it for %g s",
                      child.engine, failures, STARTUP_PAUSE_S)
            self._paused[child.engine] = time.monotonic() + STARTUP_PAUSE_S
            self._startup_failures.pop(child.engine, None)
            self._scan_engines()

    def _on_exit(self, child: Child, status: int) -> None:
        """Clean up after a worker; if it was serving a notebook, fail its cell and re-home it."""
        self._keep_directory(child)
        sandbox.remove_directory(self.sandbox_root, child.worker_id)
        directories.remove_socket(self.sandbox_root, child.worker_id)
        cgroups.remove(child.worker_id)
        wkey = keys.worker(child.worker_id)
        info = {k.decode(): v.decode() for k, v in self.redis.hgetall(wkey).items()}
        description = info.get("died") or f"the worker process died ({_describe_exit(status)})"
        if child.kill_reason != "retired":
            self._note_startup(child, info.get("state"))
        pipe = self.redis.pipeline(transaction=True)
        pipe.srem(keys.idle_workers(child.engine, self.host), child.worker_id)
        pipe.srem(keys.host_workers(self.host), child.worker_id)
        pipe.delete(wkey, keys.worker_rpc(child.worker_id), *celery_wire.queue_lists(child.queue))
        pipe.execute()
        notebook_id = info.get("notebook", "")
        if child.kill_reason == "retired" or info.get("state") == WorkerState.RETIRING or not notebook_id:
            log.info("worker %s (pid %d) stopped: %s", child.worker_id, child.pid, description)
            return
        log.warning("worker %s of notebook %s ended: %s", child.worker_id, notebook_id, description,
                    extra={"notebook_id": notebook_id, "worker_id": child.worker_id, "cell_id": info.get("cell")})
        reason = child.kill_reason or description
        error = messages.error_content(messages.ENGINE_DIED,
                                       f"{reason}; the notebook's namespace was lost and a fresh worker was started",
                                       [f"{messages.ENGINE_DIED}: {reason}"])
        if self.store.exists(notebook_id):
            self.store.restart(notebook_id, expected_worker=child.worker_id, reason=reason, cell_error=error,
                               running_cell=info.get("cell", ""))

    # --- a notebook's directory across its workers (taskkernel.workers.directories) ------------------

    def _keep_directory(self, child: Child) -> None:
        """A worker ended while its notebook lives on (a restart): keep its files for the next worker."""
        notebook_id = self.redis.hget(keys.worker(child.worker_id), "notebook")
        if not notebook_id:
            return
        notebook_id = notebook_id.decode()
        if self.redis.hget(keys.notebook(notebook_id), "state") in (None, encoded(NotebookState.DELETING)):
            self.checkpoints.remove(notebook_id)  # the files go with the notebook, checkpointed ones too
            return
        try:
            directories.stash(self.sandbox_root, child.worker_id, notebook_id)
        except OSError as exc:
            log.warning("keeping the files of notebook %s: %r", notebook_id, exc)
        self._hand_over(notebook_id)

    def _hand_over_directories(self) -> None:
        for notebook_id in directories.stashed(self.sandbox_root):
            self._hand_over(notebook_id)

    def _hand_over(self, notebook_id: str) -> None:
        """Move a stashed directory into the notebook's worker once it has one here (or drop it)."""
        state, worker, host = self.redis.hmget(keys.notebook(notebook_id), "state", "worker", "host")
        if state is None or state == encoded(NotebookState.DELETING):
            directories.discard(self.sandbox_root, notebook_id)
            return
        if not worker:
            return  # waiting for a fresh worker
        child = self._child_by_worker(worker.decode())
        if child is None:
            if host and host.decode() != self.host:
                log.warning("notebook %s moved to host %s: its files stay behind and are dropped",
                            notebook_id, host.decode(), extra={"notebook_id": notebook_id})
                directories.discard(self.sandbox_root, notebook_id)
                files.handover_done(self.redis, notebook_id)
            return
        try:
            directories.hand_over(self.sandbox_root, notebook_id, child.worker_id,
                                  sandbox.slot_uid(self.settings, child.slot))
        except OSError as exc:
            log.warning("handing the files of notebook %s over: %r", notebook_id, exc)
            directories.discard(self.sandbox_root, notebook_id)
        files.handover_done(self.redis, notebook_id)

    def _sweep_checkpoint_files(self) -> None:
        """Remove checkpoints' files of notebooks deleted without this host seeing their worker end."""
        self._last_sweep = time.monotonic()
        gone = [n for n in self.checkpoints.notebooks_with_files() if not self.store.exists(n)]
        for notebook_id in gone:
            self.checkpoints.remove(notebook_id)

    # --- host record ----------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        self._last_heartbeat = time.monotonic()
        pools = {engine: self.pool_size(engine) for engine in self.specs}
        self.watch.beat(hosts.host_record(self.host, pid=os.getpid(), pools=pools, workers=len(self.children),
                                          max_workers=self.settings.max_workers, engine_errors=self.spec_errors))

    def shutdown(self) -> None:
        """Stop every worker; notebooks pinned here lose their namespaces and are re-homed."""
        if self.redis is not None:
            try:  # first leave the hosts, so no notebook is re-homed onto a worker about to stop
                self.watch.leave()
            except redis.RedisError:
                pass
        for child in list(self.children.values()):
            child.kill_reason = child.kill_reason or "the host's supervisor stopped"
            _kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while self.children and time.monotonic() < deadline:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            child = self.children.pop(pid, None)
            if child is not None and self.redis is not None:
                try:
                    self._on_exit(child, status)
                except redis.RedisError:
                    pass
        if self.redis is not None:
            try:
                self.watch.leave()
                self.watch.forget(self.host)  # what the reaped workers' slots left (queues, bindings)
            except redis.RedisError:
                pass
        if self._own_sandbox_root:
            shutil.rmtree(self.sandbox_root, ignore_errors=True)


def _describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"killed by signal {sig} ({signal.Signals(sig).name})"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


def main(settings: Settings, pool_sizes: dict[str, int] | None = None) -> None:
    logs.configure(settings.log_level, bool(settings.log_json), sys.stderr, host=settings.host_name)
    Supervisor(settings, pool_sizes).run()
