"""Chaos: the mixed workload under each fault of issue 13, and a count of everything that went wrong.

`./dev.sh bench --only chaos` or `python -m bench.chaos [--notebooks 6] [--cells 10] [--only F,...]`.
For every fault a fresh service: a Redis with an append-only file, supervisors hostA and hostB
(host TTL 2 s, heartbeat 0.5 s), one API on a fixed port. Every notebook (half on each host) runs
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

import redis

from bench.services import Processes, descendants, wait_until
from taskkernel import keys
from taskkernel.client import ApiError, Client
from taskkernel.redis_server import RedisServer, free_port

TTL_S, INTERVAL_S = 2.0, 0.5
FAULTS = ("none", "redis_restart", "redis_freeze", "host_freeze", "host_kill", "api_restart")
CALL_TIMEOUT_S = 8.0  # the evaluate `timeout` of every cell
HUNG_MARGIN_S = 3.0
CELL_S = 0.25  # each cell sleeps this long: a fault always finds cells running and queued


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
    """Redis (AOF), two supervisors and an API, started by PID and stopped by PID."""

    def __init__(self, processes: Processes, hosts_pool: int):
        self.processes = processes
        self.server = RedisServer(persistent=True).start()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.redis = redis.Redis.from_url(self.server.url)
        self.env = {**os.environ, "TASKKERNEL_REDIS_URL": self.server.url, "TASKKERNEL_LOG_LEVEL": "WARNING",
                    "TASKKERNEL_HOST_TTL_S": str(TTL_S), "TASKKERNEL_HEARTBEAT_INTERVAL_S": str(INTERVAL_S)}
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
        if self.server.process is not None and self.server.process.poll() is None:
            os.kill(self.server.process.pid, signal.SIGCONT)
        for process in self.hosts.values():
            for pid in [process.pid, *descendants(process.pid)]:
                _signal(pid, signal.SIGCONT)
        self.processes.stop_all()
        self.server.stop()


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
    elif fault == "api_restart":
        old = svc.api
        svc.api = svc.start_api()  # binds the same port beside the old one
        old.send_signal(signal.SIGTERM)
        old.wait(30)


def run_fault(fault: str, notebooks: int, cells: int, budget_s: float) -> Tally:
    tally = Tally(fault)
    processes = Processes()
    svc = Service(processes, hosts_pool=notebooks // 2 + 1)
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
