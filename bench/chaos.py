"""Chaos: the mixed workload under each fault of issue 13, and a count of everything that went wrong.

`./dev.sh bench --only chaos` (figure 13 of bench/RESULTS.md, spliced in beside the others) or
`python -m bench.chaos [--notebooks 6] [--cells 10] [--only F,...]` (the table alone).
For every fault a fresh service: a Redis with an append-only file (for sentinel_*: a primary, a
replica and three sentinels, taskkernel/redis_sentinel.py), supervisors hostA and hostB (host TTL
2 s, heartbeat 0.5 s), one API on a fixed port. Every notebook (half on each host) runs
`ran.append(i); time.sleep(0.25)` cells one after another, each an evaluate with wait and its own Idempotency-Key,
repeated with that key after a 503 or a lost connection, as a careful client does. The fault hits
once the workload runs. Printed per fault:

  lost       cells a caller was told were recorded (2xx) that never ended
  twice      cells that ran twice (a repeated value in a namespace's `ran`)
  misordered namespaces whose `ran` is out of submission order
  dup reply  cells with more than one execute_reply on the feed
  hung       calls that took longer than their own timeout + 3 s
  re-homed   notebooks moved to another host although their host lived
  failed     cells ended error/aborted by the fault (expected only when a host is really lost)
  recover s  from the end of the fault until every notebook answered a new cell

The faults: none; redis_restart (2 s down, AOF); redis_freeze (SIGSTOP 3 x TTL); host_freeze (hostB's
tree SIGSTOPped 3 x TTL); host_kill (hostB SIGKILLed); api_restart; sentinel_failover (the primary
SIGKILLed, the old one back as a replica after the failover) and sentinel_failover_nowait (the
same with TASKKERNEL_REDIS_WAIT_REPLICAS=0: what WAIT saves). The bench figure adds what WAIT
costs a submit (`wait_cost`).

Bounded: each fault's workload stops after --budget seconds whatever happens.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from bench.services import Processes, descendants, wait_until
from bench.stats import percentile
from taskkernel import connections, keys
from taskkernel.client import ApiError, Client
from taskkernel.redis_sentinel import ReplicatedRedis
from taskkernel.redis_server import RedisServer, free_port

TTL_S, INTERVAL_S = 2.0, 0.5
FAULTS = ("none", "redis_restart", "redis_freeze", "host_freeze", "host_kill", "api_restart", "sentinel_failover",
          "sentinel_failover_nowait")
# on a Sentinel-watched set (taskkernel/redis_sentinel.py): the primary SIGKILLed, with the submit's and
# the completion's WAIT for a replica (TASKKERNEL_REDIS_WAIT_REPLICAS=1) and without it (0)
SENTINEL_FAULTS = {"sentinel_failover": 1, "sentinel_failover_nowait": 0}
CALL_TIMEOUT_S = 8.0  # the evaluate `timeout` of every cell
HUNG_MARGIN_S = 3.0
CELL_S = 0.25  # each cell sleeps this long: a fault always finds cells running and queued
REQUEUED_LOG = "task message was lost with the broker connection: queued again"  # workers/runtime.py's warning


@dataclass
class Tally:
    fault: str
    lost: int = 0
    twice: int = 0
    misordered: int = 0
    dup_replies: int = 0
    hung: int = 0
    rehomed: int = 0
    failed: int = 0
    recover_s: float = 0.0
    notes: list[str] = field(default_factory=list)


class Service:
    """Redis (AOF), two supervisors and an API, started by PID and stopped by PID.

    With `wait_replicas` (not None): a Sentinel-watched set instead (a primary, a replica, three
    sentinels, no AOF), every process told TASKKERNEL_REDIS_WAIT_REPLICAS=`wait_replicas`.
    """

    def __init__(self, processes: Processes, hosts_pool: int, wait_replicas: int | None = None):
        self.processes = processes
        self.server: RedisServer | None = None
        self.replicated: ReplicatedRedis | None = None
        if wait_replicas is None:
            self.server = RedisServer(persistent=True).start()
            redis_url = self.server.url
        else:
            self.replicated = ReplicatedRedis(replicas=1, sentinels=3, down_after_ms=1000).start()
            redis_url = self.replicated.url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.redis = connections.connect(redis_url)
        self.env = {**os.environ, "TASKKERNEL_REDIS_URL": redis_url, "TASKKERNEL_LOG_LEVEL": "WARNING",
                    "TASKKERNEL_HOST_TTL_S": str(TTL_S), "TASKKERNEL_HEARTBEAT_INTERVAL_S": str(INTERVAL_S)}
        if wait_replicas is not None:
            self.env["TASKKERNEL_REDIS_WAIT_REPLICAS"] = str(wait_replicas)
        self.hosts = {name: self._supervisor(name, hosts_pool) for name in ("hostA", "hostB")}
        for name in self.hosts:
            wait_until(lambda n=name: self.redis.scard(keys.idle_workers("python", n)) >= hosts_pool, 90,
                       f"{hosts_pool} idle workers on {name}")
        self.api = self.start_api()

    def _supervisor(self, name: str, pool: int):
        return self.processes.start(name, [sys.executable, "-m", "taskkernel", "worker", "--pool", str(pool),
                                           "--host-name", name], env=self.env)

    def start_api(self):
        api = self.processes.start("api", [sys.executable, "-m", "taskkernel", "api", "--port", str(self.port)],
                                   env=self.env)
        wait_until(lambda: _answers(self.url), 60, "the API")
        return api

    def close(self) -> None:
        if self.server is not None and self.server.process is not None and self.server.process.poll() is None:
            os.kill(self.server.process.pid, signal.SIGCONT)
        for process in self.hosts.values():
            for pid in [process.pid, *descendants(process.pid)]:
                _signal(pid, signal.SIGCONT)
        self.processes.stop_all()
        if self.server is not None:
            self.server.stop()
        if self.replicated is not None:
            self.replicated.stop()


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _answers(url: str) -> bool:
    try:
        Client(url, timeout_s=2).engines()
        return True
    except (OSError, ApiError):
        return False


class Submitter(threading.Thread):
    """Runs `cells` cells on one notebook, one after another, as a careful client: same key on retry."""

    def __init__(self, url: str, notebook_id: str, cells: int, stop_at: float, tally: Tally, lock: threading.Lock):
        super().__init__(daemon=True)
        self.client = Client(url, timeout_s=CALL_TIMEOUT_S + 30)
        self.notebook = self.client.notebook(notebook_id)
        self.cells, self.stop_at, self.tally, self.lock = cells, stop_at, tally, lock
        self.recorded: dict[int, str] = {}  # cell number -> cell id the API answered with (2xx)
        self.statuses: dict[int, str] = {}

    def run(self) -> None:
        for number in range(self.cells):
            key = f"{self.notebook.id}-{number}"
            while time.monotonic() < self.stop_at:
                started = time.monotonic()
                try:
                    cell = self.notebook.evaluate(f"ran.append({number}); time.sleep({CELL_S}); {number}", wait=True,
                                                  timeout=CALL_TIMEOUT_S, idempotency_key=key)
                except (ApiError, OSError, ValueError):
                    self._timed(started)
                    time.sleep(0.2)
                    continue
                self._timed(started)
                self.recorded[number] = cell["id"]
                self.statuses[number] = self._finish(cell)
                break

    def _finish(self, cell: dict) -> str:
        while cell.get("state") != "done" and time.monotonic() < self.stop_at:
            time.sleep(0.1)
            try:
                cell = self.notebook.cell(cell["id"])
            except (ApiError, OSError, ValueError):
                continue
        return cell.get("status") or "unfinished"

    def _timed(self, started: float) -> None:
        if time.monotonic() - started > CALL_TIMEOUT_S + HUNG_MARGIN_S:
            with self.lock:
                self.tally.hung += 1


def inject(fault: str, svc: Service) -> None:
    """Hit the service with `fault`; returns when the fault is over (its cause removed)."""
    if fault == "redis_restart":
        svc.server.stop(keep_data=True)
        time.sleep(2.0)
        svc.server.start()
    elif fault == "redis_freeze":
        os.kill(svc.server.process.pid, signal.SIGSTOP)
        time.sleep(3 * TTL_S)
        os.kill(svc.server.process.pid, signal.SIGCONT)
    elif fault == "host_freeze":  # the supervisor, its workers and engines (each in a group of its own)
        host = [svc.hosts["hostB"].pid, *descendants(svc.hosts["hostB"].pid)]
        for pid in host:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(3 * TTL_S)
        for pid in host:
            _signal(pid, signal.SIGCONT)
    elif fault == "host_kill":
        for pid in [svc.hosts["hostB"].pid, *descendants(svc.hosts["hostB"].pid)]:
            _signal(pid, signal.SIGKILL)
    elif fault in SENTINEL_FAULTS:  # over when the sentinels name a new primary; the old one rejoins
        old = svc.replicated.kill_primary()
        svc.replicated.wait_for_failover(old)
        old.start()
    elif fault == "api_restart":
        old = svc.api
        svc.api = svc.start_api()  # binds the same port beside the old one
        old.send_signal(signal.SIGTERM)
        old.wait(30)


def run_fault(fault: str, notebooks: int, cells: int, budget_s: float) -> Tally:
    tally = Tally(fault)
    processes = Processes()
    svc = Service(processes, hosts_pool=notebooks // 2 + 1, wait_replicas=SENTINEL_FAULTS.get(fault))
    try:
        client = Client(svc.url)
        opened = [client.start() for _ in range(notebooks)]
        homes = {nb.id: nb.record["worker"]["host"] for nb in opened}
        for nb in opened:
            nb.evaluate("import time\nran = []", timeout=30)
        lock = threading.Lock()
        stop_at = time.monotonic() + budget_s
        submitters = [Submitter(svc.url, nb.id, cells, stop_at, tally, lock) for nb in opened]
        for submitter in submitters:
            submitter.start()
        time.sleep(0.5)  # the workload is under way
        inject(fault, svc)
        ended = time.monotonic()
        tally.recover_s = recover(svc.url, [nb.id for nb in opened], ended, stop_at)
        for submitter in submitters:
            submitter.join(max(0.0, stop_at - time.monotonic()) + 5)
        count(tally, svc, submitters, homes, fault)
        requeued = sum(processes.log_tail(name, 100_000).count(REQUEUED_LOG) for name in svc.hosts)
        if requeued:  # each one a cell that stayed queued for good before workers/consumer.py
            tally.notes.append(f"{requeued} task message(s) lost with a broker connection were queued again")
    finally:
        svc.close()
    return tally


def recover(url: str, notebook_ids: list[str], since: float, stop_at: float) -> float:
    """Seconds from `since` until every notebook ran a new cell (its namespace may be new)."""
    client = Client(url, timeout_s=10)
    waiting = set(notebook_ids)
    while waiting and time.monotonic() < stop_at:
        for notebook_id in sorted(waiting):
            try:
                cell = client.notebook(notebook_id).evaluate("'probe'", wait=True, timeout=5)
                if cell.get("status") == "ok":
                    waiting.discard(notebook_id)
            except (ApiError, OSError, ValueError):
                time.sleep(0.1)
    return time.monotonic() - since if not waiting else float("nan")


def count(tally: Tally, svc: Service, submitters: list[Submitter], homes: dict[str, str], fault: str) -> None:
    client = Client(svc.url, timeout_s=30)
    lost_host = "hostB" if fault in ("host_freeze", "host_kill") else None
    for submitter in submitters:
        nb_id = submitter.notebook.id
        for number, cell_id in submitter.recorded.items():
            status = submitter.statuses.get(number, "unfinished")
            if status == "unfinished":
                tally.lost += 1
                try:
                    record = client.notebook(nb_id).cell(cell_id)
                    seen = f"state {record['state']}, status {record['status']}"
                except (ApiError, OSError, ValueError) as exc:
                    seen = repr(exc)
                tally.notes.append(f"{nb_id[:8]}: cell {number} ({cell_id[:8]}) unfinished by the budget: {seen}")
            elif status != "ok":
                tally.failed += 1
            replies = sum(1 for _, f in svc.redis.xrange(keys.feed_stream(nb_id))
                          if f[b"t"] == b"execute_reply" and f[b"c"].decode() == cell_id)
            if replies > 1:
                tally.dup_replies += 1
        try:
            ran = json.loads(client.notebook(nb_id).evaluate("import json; json.dumps(ran)", timeout=10)
                             ["outputs"][0]["data"]["text/plain"].strip("'"))
        except (ApiError, OSError, ValueError, KeyError, IndexError) as exc:
            statuses = dict(Counter(submitter.statuses.values()))
            tally.notes.append(f"{nb_id[:8]} (on {homes[nb_id]}): its namespace has no `ran` ({exc!r}); "
                               f"its cells ended {statuses}")
            ran = []
        tally.twice += sum(n - 1 for n in Counter(ran).values() if n > 1)
        if ran != sorted(ran):
            tally.misordered += 1
        record = client.notebook(nb_id).record
        if record["restarts"] and homes[nb_id] != lost_host:
            tally.rehomed += 1


def wait_cost(runs: int, batches: int) -> dict[tuple[str, str], list[float]]:
    """What WAIT costs a submit, on a Sentinel set (a primary, a replica, three sentinels) of its own.

    Two APIs on one supervisor, one whose submits WAIT for the replica and one whose do not, time
    `runs` POST evaluate (wait=false, `1`) each per batch, batches interleaved; and the submit
    script itself, called on Redis with and without its WAIT (NotebookStore.submit). Returns
    {(system, metric): one median (ms) per batch}.
    """
    import functools

    from taskkernel.celery_wire import TaskMessages, make_celery
    from taskkernel.notebooks import NotebookStore
    from taskkernel.settings import load_settings

    processes = Processes()
    svc = Service(processes, hosts_pool=1, wait_replicas=1)
    found: dict[tuple[str, str], list[float]] = {}
    try:
        apis = {}
        for replicas in (1, 0):
            port = free_port()
            process = processes.start(f"api-wait{replicas}", [sys.executable, "-m", "taskkernel", "api", "--port",
                                      str(port)], env={**svc.env, "TASKKERNEL_REDIS_WAIT_REPLICAS": str(replicas)})
            wait_until(lambda p=port: _answers(f"http://127.0.0.1:{p}"), 60, "an API", process)
            apis[replicas] = Client(f"http://127.0.0.1:{port}")
        notebook_id = apis[1].start().id
        stores = {replicas: NotebookStore(svc.redis, durability=connections.Durability(replicas, 500))
                  for replicas in (1, 0)}
        message = functools.partial(TaskMessages(make_celery(load_settings(svc.env))).evaluate, notebook_id=notebook_id)
        for _ in range(batches):
            for replicas in (1, 0):
                notebook = apis[replicas].notebook(notebook_id)
                samples = []
                for _ in range(runs):
                    started = time.perf_counter()
                    notebook.evaluate("1", wait=False)
                    samples.append((time.perf_counter() - started) * 1000)
                found.setdefault((WAIT_SYSTEMS[replicas], WAIT_METRICS[0]), []).append(percentile(samples, 50))
                samples = []
                for _ in range(runs):  # the store's submit alone, as the API calls it
                    started = time.perf_counter()
                    stores[replicas].submit(notebook_id, "1", message)
                    samples.append((time.perf_counter() - started) * 1000)
                found.setdefault((WAIT_SYSTEMS[replicas], WAIT_METRICS[1]), []).append(percentile(samples, 50))
            wait_until(lambda: svc.redis.hget(keys.notebook(notebook_id), "state") == b"idle", 60,
                       "the queued cells to run")
    finally:
        svc.close()
    return found


# the systems and metrics of wait_cost's rows: (system per WAIT setting, HTTP metric, store metric)
WAIT_SYSTEMS = {1: "taskkernel on Sentinel, a submit WAITs for 1 replica",
                0: "same, without WAIT (TASKKERNEL_REDIS_WAIT_REPLICAS=0)"}
WAIT_METRICS = ("submit: POST evaluate (wait=false) p50 (ms)", "submit: NotebookStore.submit on Redis p50 (ms)")


FIGURE = "13. chaos: faults under a mixed workload"
COUNTS = (("lost", "cells lost (recorded with 2xx, never ended)"), ("twice", "cells run twice"),
          ("misordered", "notebooks run out of order"), ("dup_replies", "cells with a duplicate execute_reply"),
          ("hung", "calls hung past their timeout + 3 s"), ("rehomed", "live notebooks re-homed"))
ALL_ZERO = "every count above 0 (1 = yes)"


def figure(bench) -> None:
    """The chaos figure of `python -m bench`: every fault's counts, and what WAIT costs a submit."""
    if bench.plan.quick and len(bench.figures) > 1:  # minutes per fault: not in a smoke run of every figure
        bench.results.note(FIGURE, "not run in a quick run of every figure: `python -m bench --quick --only chaos`")
        return
    notebooks, cells = (4, 5) if bench.plan.quick else (6, 10)
    for fault in FAULTS:
        bench.log(f"chaos: {fault}: {notebooks} notebooks x {cells} cells")
        try:
            tally = run_fault(fault, notebooks, cells, budget_s=60.0)
        except Exception as exc:  # one fault's run that broke must not hide the others
            import traceback

            bench.log(f"chaos: {fault} failed:\n{traceback.format_exc()}")
            bench.results.note(FIGURE, f"failed: the {fault} run broke ({exc!r}); its counts are missing")
            continue
        system = f"taskkernel, {fault}"
        for attribute, metric in COUNTS:
            bench.results.add(FIGURE, system, metric, "count", [getattr(tally, attribute)])
        bench.results.add(FIGURE, system, "cells failed by the fault", "count", [tally.failed],
                          note="a host lost takes its namespaces: EngineDied, then NameErrors" if "host" in fault else "")
        bench.results.add(FIGURE, system, "recover (s)", "s", [tally.recover_s])
        zero = all(getattr(tally, attribute) == 0 for attribute, _ in COUNTS)
        bench.results.add(FIGURE, "taskkernel, every fault", ALL_ZERO, "flag", [1 if zero else 0])
        for note in tally.notes:
            bench.results.note(FIGURE, f"{fault}: {note}")
    runs, batches = (30, 2) if bench.plan.quick else (200, bench.plan.reps)
    bench.log(f"chaos: the cost of WAIT, {batches} x {runs} submits")
    for (system, metric), values in wait_cost(runs, batches).items():
        bench.results.add(FIGURE, system, metric, "ms", values)
    bench.results.note(FIGURE, f"each fault: a fresh service (two supervisors, host TTL {TTL_S:g} s, one API; a Redis "
                       "with AOF, or for sentinel_*: a primary, a replica and three sentinels, down-after 1 s), "
                       f"{notebooks} notebooks x {cells} cells of {CELL_S:g} s, each an evaluate with wait repeated under "
                       "its Idempotency-Key after a 503 or a lost connection; one run per fault (counts, so min = "
                       "median = max); sentinel_failover_nowait is the same kill with TASKKERNEL_REDIS_WAIT_REPLICAS=0")
    bench.results.note(FIGURE, f"the cost of WAIT: {batches} batches of {runs} submits per system, interleaved, on one "
                       "notebook of a Sentinel set of its own")


def targets() -> list:
    from bench.results import Target

    return [Target("chaos: no cell lost, run twice or out of order, no duplicate reply, no hung call, no live "
                   "notebook re-homed, under every fault", FIGURE, ALL_ZERO, "taskkernel, every fault",
                   require_all_true=True)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n")[0])
    parser.add_argument("--notebooks", type=int, default=6)
    parser.add_argument("--cells", type=int, default=10, help="cells per notebook")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds each fault's workload may take")
    parser.add_argument("--only", help=f"comma-separated faults out of: {', '.join(FAULTS)}")
    parser.add_argument("--quick", action="store_true", help="4 notebooks x 5 cells")
    args = parser.parse_args(argv)
    if args.quick:
        args.notebooks, args.cells = 4, 5
    faults = [f.strip() for f in args.only.split(",")] if args.only else list(FAULTS)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    rows = []
    for fault in faults:
        print(f"[chaos] {fault}: {args.notebooks} notebooks x {args.cells} cells", file=sys.stderr, flush=True)
        rows.append(run_fault(fault, args.notebooks, args.cells, args.budget))
    header = ("fault", "lost", "twice", "misordered", "dup reply", "hung", "re-homed", "failed", "recover s")
    print(" | ".join(f"{h:>13}" if i == 0 else f"{h:>10}" for i, h in enumerate(header)))
    for t in rows:
        values = (t.lost, t.twice, t.misordered, t.dup_replies, t.hung, t.rehomed, t.failed, f"{t.recover_s:.2f}")
        print(" | ".join([f"{t.fault:>13}", *(f"{v:>10}" for v in values)]))
        for note in t.notes:
            print(f"{'':>13}   {note}")
    print(f"({args.notebooks} notebooks x {args.cells} cells per fault; host TTL {TTL_S:g} s; "
          f"'failed' counts cells ended error/aborted by the fault)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
