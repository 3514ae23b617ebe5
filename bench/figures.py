"""The seven figures of issue 6, each taken for taskkernel and its peers in one run.

Repetitions are interleaved (repetition 1 of every system, then repetition 2, ...) so that drift
on the shared machine falls on all systems alike and the ratios stay fair.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import files as bench_files
from bench import machine, profiling
from bench.floors import EchoClient, RedisFloor
from bench.jupyter import GatewayKernel, IPyKernel, peer_a_missing, peer_b_missing
from bench.results import Results, Target
from bench.services import EchoServer, KernelGateway, Processes, Stack, descendants
from bench.stats import percentile
from bench.taskkernel_side import HttpEvaluator, result_text, stream_lines
from taskkernel.client import ApiError, Notebook

FIGURES = ("roundtrip", "completion", "streaming", "open", "throughput", "memory", "scale", "bridge", "files",
           "gateway", "nbclient")

F_RT = "1. round trip of `1+1`"
F_OPEN = "2. notebook open"
F_TP = "3. throughput"
F_STREAM = "4. streaming"
F_MEM = "5. memory"
F_SCALE = "6. scale"
F_COMPLETE = "7. completion"
F_BRIDGE = "8. Jupyter bridge"
NOTEBOOK_CELLS = 20
NOTEBOOK_METRIC = f"whole notebook of {NOTEBOOK_CELLS} cells, nbclient (ms)"
F_NBCLIENT = "12. nbclient's test suite"
NBCLIENT_PASSED = "tests passed"
BRIDGE = "taskkernel kernel (Jupyter bridge, jupyter_client)"

OURS_HTTP = "taskkernel (HTTP evaluate, wait)"
OURS_CLIENT = "taskkernel (Python client)"
OURS = "taskkernel"
PEER_A = "A: ipykernel (jupyter_client, ZMQ)"
PEER_B = "B: kernel gateway (REST + websocket)"
PEER_B_QUICKACK = "B': kernel gateway, client with TCP_QUICKACK"
FLOOR_ECHO = "floor: Flask JSON echo (same gunicorn)"
FLOOR_PING = "floor: Redis PING"
FLOOR_PUBSUB = "floor: Redis PUBLISH -> subscriber"

TITLES = {"roundtrip": F_RT, "open": F_OPEN, "throughput": F_TP, "streaming": F_STREAM, "memory": F_MEM,
          "scale": F_SCALE, "completion": F_COMPLETE, "bridge": F_BRIDGE, "files": bench_files.FIGURE,
          "nbclient": F_NBCLIENT}
TITLES["gateway"] = "10. Jupyter gateway"  # bench/gateway.py: figures 10 and 11 (9 is the files figure)

COMPLETION_CODE = "import math; math.sq"


@dataclass(frozen=True)
class Plan:
    """How much of everything a run measures."""

    quick: bool
    reps: int  # repetitions of every figure (interleaved across systems)
    rt_runs: int  # round trips per repetition and system
    rt_warmup: int
    batch_timeout_s: float  # a batch of round trips stops early past this
    open_runs: int  # warm opens per repetition
    cold_runs: int  # cold opens per repetition (ours, ipykernel, gateway)
    throughput_notebooks: int
    throughput_threads: int
    throughput_cells: int  # cells per repetition
    stream_lines: tuple[int, ...]
    memory_notebooks: int
    scale_steps: tuple[int, ...]
    scale_rate_per_s: float
    scale_load_s: float
    scale_open_timeout_s: float  # per step
    scale_p99_ms: float
    completion_runs: int
    pool: int = 2  # the default warm pool of `taskkernel up`
    profile_s: float = 10  # py-spy sampling time with --profile
    idle_cpu_s: float = 5  # how long idle notebooks' CPU use is measured

    def with_counts(self, **changes) -> "Plan":
        import dataclasses

        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


FULL = Plan(quick=False, reps=3, rt_runs=500, rt_warmup=30, batch_timeout_s=90, open_runs=4, cold_runs=2,
            throughput_notebooks=50, throughput_threads=8, throughput_cells=1000,
            stream_lines=(10_000, 100_000), memory_notebooks=50, scale_steps=(50, 100, 150, 200, 250),
            scale_rate_per_s=10, scale_load_s=30, scale_open_timeout_s=120, scale_p99_ms=50,
            completion_runs=50)

QUICK = Plan(quick=True, reps=2, rt_runs=20, rt_warmup=3, batch_timeout_s=20, open_runs=1, cold_runs=1,
             throughput_notebooks=3, throughput_threads=2, throughput_cells=30,
             stream_lines=(10_000, 100_000), memory_notebooks=3, scale_steps=(5,),
             scale_rate_per_s=10, scale_load_s=3, scale_open_timeout_s=60, scale_p99_ms=50,
             completion_runs=5, profile_s=3, idle_cpu_s=1)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Bench:
    """Starts the services, measures the chosen figures, and stops everything it started."""

    def __init__(self, plan: Plan, figures: tuple[str, ...], peers: bool = True, profile: bool = False):
        self.plan = plan
        self.profile = profile
        self.figures = figures
        self.results = Results()
        self.processes = Processes()
        self.started = time.monotonic()
        self.stack: Stack | None = None
        self.echo: EchoServer | None = None
        self.gateway: KernelGateway | None = None
        self.redis_floor: RedisFloor | None = None
        self.main: Notebook | None = None
        self.notebooks: list[Notebook] = []
        self.kernels: list[IPyKernel] = []
        self.kernel_a: IPyKernel | None = None
        self.kernel_b: GatewayKernel | None = None
        self.kernel_b_quick: GatewayKernel | None = None
        self.facts: dict[str, str] = {}
        self.last_client_cpu = 0.0
        self.a_missing = peer_a_missing() if peers else "peers skipped (--no-peers)"
        self.b_missing = peer_b_missing() if peers else "peers skipped (--no-peers)"

    def log(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {text}", file=sys.stderr, flush=True)

    # --- services --------------------------------------------------------------------------------

    def run(self) -> Results:
        try:
            max_workers = max(256, max(self.plan.scale_steps) + 32)
            self.stack = Stack(self.processes, pool=self.plan.pool, max_workers=max_workers)
            self.stack.start()  # assigned first, so a failed start is still closed in `finally`
            from taskkernel.redis_server import redis_server_binary

            self.facts = machine.describe(redis_server_binary())
            self.log(f"taskkernel up on {self.stack.url} (pool {self.plan.pool}); logs in {self.processes.dir}")
            for figure in FIGURES:
                if figure in self.figures:
                    self.log(f"figure: {figure}")
                    try:
                        getattr(self, f"figure_{figure}")()
                    except Exception as exc:  # one broken figure must not hide the others
                        self.log(f"figure {figure} failed: {exc!r}")
                        self.results.note(TITLES[figure], f"failed: {exc!r}")
            self.facts["load average at end"] = machine.load_average()
            return self.results
        finally:
            self.close()

    def close(self) -> None:
        for kernel in [*self.kernels, self.kernel_a]:
            if kernel is not None:
                try:
                    kernel.close()
                except Exception:
                    pass
        self.kernels, self.kernel_a = [], None
        for resource in (self.kernel_b, self.kernel_b_quick, self.redis_floor, self.echo, self.gateway, self.stack):
            if resource is not None:
                try:
                    resource.close()
                except Exception as exc:
                    self.log(f"closing {type(resource).__name__}: {exc!r}")
        self.processes.stop_all()

    def main_notebook(self) -> Notebook:
        if self.main is None:
            self.main = self.stack.client().start("python")
            self.main.evaluate("1+1")
        return self.main

    def peer_a(self) -> IPyKernel | None:
        if self.a_missing:
            return None
        if self.kernel_a is None:
            kernel = IPyKernel(self.processes.dir / "jupyter-runtime").start()
            self.kernel_a = kernel
            kernel.wait_ready()
            kernel.execute("1+1")
        return self.kernel_a

    def peer_b(self) -> GatewayKernel | None:
        if self.b_missing:
            return None
        if self.gateway is None:
            self.gateway = KernelGateway(self.processes).start()
        if self.kernel_b is None:
            self.kernel_b = GatewayKernel(self.gateway.port).start()
            self.kernel_b.execute("1+1")
        return self.kernel_b

    def ensure_notebooks(self, count: int, timeout_s: float = 180) -> list[Notebook]:
        """At least `count` extra notebooks open, each having run one cell."""
        client = self.stack.client()
        deadline = time.monotonic() + timeout_s
        while len(self.notebooks) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(self.notebooks)} of {count} notebooks opened in {timeout_s:g} s")
            try:
                nb = client.start("python")
            except ApiError as exc:
                if exc.status == 503:
                    continue
                raise
            nb.evaluate("1+1")
            self.notebooks.append(nb)
        return self.notebooks[:count]

    def ensure_kernels(self, count: int, batch: int = 10, attempts: int = 3) -> list[IPyKernel]:
        """At least `count` ipykernels running, each having run one cell; started `batch` at a time,
        and a kernel that does not become ready within 60 s is replaced (at most `attempts` times)."""
        start = time.perf_counter()
        started = len(self.kernels)
        failures = 0
        while len(self.kernels) < count:
            fresh = [IPyKernel(self.processes.dir / "jupyter-runtime")
                     for _ in range(min(batch, count - len(self.kernels)))]
            for kernel in fresh:
                kernel.start()
            for kernel in fresh:
                try:
                    kernel.wait_ready(timeout_s=60)
                    kernel.execute("1+1", timeout_s=60)
                except Exception as exc:
                    kernel.close()
                    failures += 1
                    self.log(f"an ipykernel did not start ({exc!r}); replacing it")
                    if failures > attempts:
                        raise
                    continue
                self.kernels.append(kernel)
        if len(self.kernels) > started:
            self.log(f"{len(self.kernels) - started} ipykernels started, {batch} at a time, in "
                     f"{time.perf_counter() - start:.1f} s ({failures} replaced)")
        return self.kernels[:count]

    # --- 1. round trip ---------------------------------------------------------------------------

    def figure_roundtrip(self) -> None:
        plan, results = self.plan, self.results
        nb = self.main_notebook()
        http = HttpEvaluator(self.stack.api_port)
        if result_text(http.evaluate(nb.id)) != "2":
            raise RuntimeError("taskkernel did not answer 2")
        phases: list[tuple[float, float, float, float]] = []

        def http_call() -> None:
            sent = time.time()
            cell = http.evaluate(nb.id)
            phases.append(profiling.breakdown(sent, cell, time.time()))

        systems: list[tuple[str, Callable[[], object]]] = [
            (OURS_HTTP, http_call),
            (OURS_CLIENT, lambda: nb.evaluate("1+1")),
        ]
        kernel_a = self.peer_a()
        if kernel_a is not None:
            systems.append((PEER_A, lambda: kernel_a.execute("1+1")))
        kernel_b = self.peer_b()
        if kernel_b is not None:
            systems.append((PEER_B, lambda: kernel_b.execute("1+1")))
            self.kernel_b_quick = GatewayKernel(self.gateway.port, quickack=True).start()
            kernel_bq = self.kernel_b_quick
            kernel_bq.execute("1+1")
            systems.append((PEER_B_QUICKACK, lambda: kernel_bq.execute("1+1")))
        self.echo = EchoServer(self.processes).start()
        echo = EchoClient(self.echo.port)
        self.redis_floor = RedisFloor(self.stack.redis_server.url)
        systems += [(FLOOR_ECHO, echo.call), (FLOOR_PING, self.redis_floor.ping),
                    (FLOOR_PUBSUB, self.redis_floor.publish_roundtrip)]
        for name, why in ((PEER_A, self.a_missing), (PEER_B, self.b_missing)):
            if why:
                for q in ("p50", "p90", "p99"):
                    results.missing(F_RT, name, f"{q} (ms)", "ms", why)
        try:
            for rep in range(plan.reps):
                for name, fn in systems:
                    for _ in range(plan.rt_warmup):
                        fn()
                    phases.clear()
                    samples = []
                    deadline = time.monotonic() + plan.batch_timeout_s
                    for _ in range(plan.rt_runs):
                        samples.append(timed(fn) * 1000)
                        if time.monotonic() > deadline:
                            break
                    for q in (50, 90, 99):
                        results.add(F_RT, name, f"p{q} (ms)", "ms", [percentile(samples, q)])
                    if name == OURS_HTTP:
                        for k, (phase, _) in enumerate(profiling.PHASES):
                            results.add(F_RT, name, f"median of phase: {phase} (ms)", "ms",
                                        [percentile([p[k] for p in phases], 50)])
                    self.log(f"round trip rep {rep + 1}/{plan.reps} {name}: p50 {percentile(samples, 50):.2f} ms "
                             f"p99 {percentile(samples, 99):.2f} ms ({len(samples)} runs)")
            if self.profile:
                self._profile(nb, http_call)
        finally:
            http.close()
            echo.close()
        results.note(F_RT, "phases of the HTTP round trip come from the cell's own timestamps (submitted: the "
                           "API records the cell; started: the worker claims it; completed: the worker begins "
                           "writing the result) against the client's clock: "
                           + "; ".join(f"{phase} = {what}" for phase, what in profiling.PHASES))
        results.note(F_RT, "B' is the same gateway with the client acknowledging every TCP segment at once: "
                           "the gateway writes each cell's messages as separate small websocket frames without "
                           "TCP_NODELAY, so Nagle's algorithm holds them until the client's delayed ACK (40 ms "
                           "on Linux); B is what a front end meets, B' shows the gateway without that wait")
        results.note(F_RT, f"each repetition: {plan.rt_warmup} warm-up calls, then {plan.rt_runs} timed calls "
                           "one after another on one keep-alive connection; a value is that batch's percentile")

    def _profile(self, nb: Notebook, call: Callable[[], None]) -> None:
        if profiling.py_spy() is None:
            self.results.note(F_RT, "--profile: py-spy is not installed (pip install -e '.[bench]')")
            return
        api_workers = descendants(self.stack.api.pid)
        worker_pid = nb.refresh()["worker"]["pid"]
        self.log("profiling round trips with py-spy (API and worker)")
        self.results.profiles = profiling.profile_roundtrips(api_workers[0] if api_workers else self.stack.api.pid,
                                                             worker_pid, call, self.plan.profile_s,
                                                             self.processes.dir)

    # --- 7. completion ---------------------------------------------------------------------------

    def figure_completion(self) -> None:
        plan, results = self.plan, self.results
        nb = self.main_notebook()
        systems: list[tuple[str, Callable[[], dict]]] = [(OURS, lambda: nb.complete(COMPLETION_CODE))]
        kernel_a, kernel_b = self.peer_a(), self.peer_b()
        if kernel_a is not None:
            systems.append((PEER_A, lambda: kernel_a.complete(COMPLETION_CODE)))
        else:
            results.missing(F_COMPLETE, PEER_A, "p50 (ms)", "ms", self.a_missing)
        if kernel_b is not None:
            systems.append((PEER_B, lambda: kernel_b.complete(COMPLETION_CODE)))
        else:
            results.missing(F_COMPLETE, PEER_B, "p50 (ms)", "ms", self.b_missing)
        for name, fn in systems:  # warm-up: jedi's first call in a process is slow everywhere
            for _ in range(3):
                reply = fn()
            if not any("sqrt" in m for m in reply["matches"]):
                raise RuntimeError(f"{name} did not complete math.sq: {reply['matches']}")
        for rep in range(plan.reps):
            for name, fn in systems:
                samples = [timed(fn) * 1000 for _ in range(plan.completion_runs)]
                results.add(F_COMPLETE, name, "p50 (ms)", "ms", [percentile(samples, 50)])
                results.add(F_COMPLETE, name, "p90 (ms)", "ms", [percentile(samples, 90)])
                self.log(f"completion rep {rep + 1} {name}: p50 {percentile(samples, 50):.2f} ms")
        results.note(F_COMPLETE, f"`{COMPLETION_CODE}` completed at its end, after 3 warm-up calls; "
                                 f"{plan.completion_runs} calls per repetition")

    # --- 8. the Jupyter bridge --------------------------------------------------------------------

    def figure_bridge(self) -> None:
        """`1+1` through the taskkernel Jupyter kernel and through ipykernel, the same jupyter_client
        way (execute_request, reply and IOPub idle), so the price of the bridge is known."""
        import os
        import tempfile

        plan, results = self.plan, self.results
        if self.a_missing:
            for system in (BRIDGE, PEER_A):
                results.missing(F_BRIDGE, system, "p50 (ms)", "ms", self.a_missing)
                results.missing(F_BRIDGE, system, NOTEBOOK_METRIC, "ms", self.a_missing)
            return
        from taskkernel.jupyter.cost import bridge_round_trip
        from taskkernel.jupyter.kernelspec import install

        prefix = tempfile.mkdtemp(prefix="bench-kernelspec-", dir=self.processes.dir)
        install(self.stack.url, name="taskkernel-bench", prefix=prefix)
        # jupyter_client finds kernelspecs through JUPYTER_PATH, read when a kernel is looked up
        os.environ["JUPYTER_PATH"] = os.path.join(prefix, "share", "jupyter")
        runs = max(20, plan.rt_runs // 2)
        cells = NOTEBOOK_CELLS
        for rep in range(plan.reps):
            for name, kernel in ((BRIDGE, "taskkernel-bench"), (PEER_A, "python3")):
                samples = [x * 1000 for x in bridge_round_trip(runs, kernel_name=kernel)]
                results.add(F_BRIDGE, name, "p50 (ms)", "ms", [percentile(samples, 50)])
                results.add(F_BRIDGE, name, "p99 (ms)", "ms", [percentile(samples, 99)])
                self.log(f"bridge rep {rep + 1} {name}: p50 {percentile(samples, 50):.2f} ms")
            for name, kernel in ((BRIDGE, "taskkernel-bench"), (PEER_A, "python3")):
                whole = notebook_wall_s(kernel, cells, self.processes.dir) * 1000
                results.add(F_BRIDGE, name, NOTEBOOK_METRIC, "ms", [whole])
                self.log(f"bridge rep {rep + 1} {name}: notebook of {cells} cells {whole:.0f} ms")
        results.note(F_BRIDGE, f"taskkernel.jupyter.cost.bridge_round_trip: a fresh kernel per repetition, "
                               f"5 warm-up cells, then {runs} round trips of `1+1`, each done when its "
                               "execute_reply and IOPub idle are in")
        results.note(F_BRIDGE, f"whole notebook: nbclient's NotebookClient.execute() of a notebook of {cells} code "
                               "cells (an import, then assignments, prints, values and a display), kernel start "
                               "and shutdown included, in an empty working directory; one per repetition")

    # --- 12. nbclient's own test suite ------------------------------------------------------------

    def figure_nbclient(self) -> None:
        """nbclient's tests/test_client.py (fetched from PyPI) on ipykernel and on the bridge, one
        engine after the other, in this run (see bench/nbclient_suite.py)."""
        from bench import nbclient_suite

        results = self.results
        systems = [(PEER_A, None), (f"{BRIDGE}, ipython engine", "ipython"), (f"{BRIDGE}, python engine", "python")]
        why = "not run with --quick (the suite takes minutes)" if self.plan.quick else nbclient_suite.missing_tools()
        if why:
            for system, _ in systems:
                results.missing(F_NBCLIENT, system, NBCLIENT_PASSED, "tests", why)
            return
        workdir = self.processes.dir / "nbclient-suite"
        suite = nbclient_suite.fetch_suite(workdir / "sdist")
        for system, engine in systems:
            jupyter_path = None
            if engine is not None:
                jupyter_path = nbclient_suite.install_as_python3(self.stack.url, engine, workdir / f"spec-{engine}")
            run = nbclient_suite.run_suite(suite, system, workdir / (engine or "ipykernel"), jupyter_path)
            self.log(run.line())
            results.add(F_NBCLIENT, system, NBCLIENT_PASSED, "tests", [run.passed],
                        note=f"of {run.total}; {run.failed} failed, {run.errors} errors {run.note}".strip(),
                        higher_is_better=True)
            if run.failures:
                results.note(F_NBCLIENT, f"fails on {engine or 'ipykernel'}: " + "; ".join(run.failures))
        results.note(F_NBCLIENT, f"nbclient {suite.name.split('-')[-1]}'s sdist from PyPI, its tests/test_client.py "
                                 "run with its own pytest configuration; for taskkernel the bridge kernelspec is "
                                 "installed as `python3` in a private JUPYTER_PATH, so every kernel the suite starts "
                                 "runs its cells on this run's service; one run per system (a count, not a timing)")

    # --- 10, 11. the Jupyter gateway (bench/gateway.py) -------------------------------------------

    def figure_gateway(self) -> None:
        from bench import gateway

        gateway.figure(self)

    # --- 4. streaming ----------------------------------------------------------------------------

    def figure_streaming(self) -> None:
        plan, results = self.plan, self.results
        nb = self.main_notebook()
        kernel_a, kernel_b = self.peer_a(), self.peer_b()
        for n in plan.stream_lines:
            metric = f"{n:,} lines: until the subscriber holds all (s)"
            flag = f"{n:,} lines delivered completely (1 = yes)"
            expected = "".join(f"{i}\n" for i in range(n))
            code = f"for i in range({n}):\n    print(i)"
            for name, why in ((PEER_A, self.a_missing), (PEER_B, self.b_missing)):
                if why:
                    results.missing(F_STREAM, name, metric, "s", why)
            for rep in range(plan.reps):
                got = stream_lines(self.stack.redis_server.url, self.stack.api_port, nb.id, n)
                results.add(F_STREAM, OURS, metric, "s", [got.seconds])
                results.add(F_STREAM, OURS, flag, "flag", [1 if got.complete else 0])
                self.log(f"streaming {n} rep {rep + 1} {OURS}: {got.seconds:.3f} s, complete={got.complete}")
                for name, kernel in ((PEER_A, kernel_a), (PEER_B, kernel_b)):
                    if kernel is None:
                        continue
                    start = time.perf_counter()
                    outcome = kernel.execute(code, timeout_s=300, want_lines=n, keep_text=True)
                    seconds = (outcome.all_lines_at - start) if outcome.all_lines_at else float("nan")
                    complete = "".join(outcome.text) == expected
                    results.add(F_STREAM, name, metric, "s", [seconds])
                    results.add(F_STREAM, name, flag, "flag", [1 if complete else 0])
                    self.log(f"streaming {n} rep {rep + 1} {name}: {seconds:.3f} s, complete={complete}")
        results.note(F_STREAM, "a cell `for i in range(N): print(i)`; the clock starts before the request is "
                               "sent and stops when the subscriber (taskkernel: Redis pub/sub on the notebook's "
                               "feed channel; A: the iopub socket; B: the websocket) has received the N-th line; "
                               "`complete` compares every byte received with what was printed")

    # --- 2. notebook open ------------------------------------------------------------------------

    def figure_open(self) -> None:
        plan, results = self.plan, self.results
        metric = "create -> first result of `1+1` (ms)"
        client = self.stack.client()
        warm_name = f"{OURS} (warm pool of {plan.pool})"
        cold_name = f"{OURS} (pool empty: waits for a fork)"
        a_name, b_name = "A: ipykernel cold start", "B: kernel gateway (new kernel, REST + websocket)"
        if self.a_missing:
            results.missing(F_OPEN, a_name, metric, "ms", self.a_missing)
        if self.b_missing:
            results.missing(F_OPEN, b_name, metric, "ms", self.b_missing)
        elif self.gateway is None:
            self.gateway = KernelGateway(self.processes).start()

        def open_ours() -> float:
            start = time.perf_counter()
            nb = client.start("python")
            cell = nb.evaluate("1+1")
            elapsed = time.perf_counter() - start
            nb.close()
            if result_text(cell) != "2":
                raise RuntimeError("a new notebook did not answer 2")
            return elapsed * 1000

        for rep in range(plan.reps):
            for _ in range(plan.open_runs):
                self.stack.wait_idle(plan.pool)
                results.add(F_OPEN, warm_name, metric, "ms", [open_ours()])
            self.log(f"open rep {rep + 1} warm: {results.find(F_OPEN, warm_name, metric).values[-1]:.1f} ms")
            if not self.a_missing:
                for _ in range(plan.cold_runs):
                    kernel = IPyKernel(self.processes.dir / "jupyter-runtime")
                    try:
                        start = time.perf_counter()
                        kernel.start()
                        kernel.wait_ready()
                        outcome = kernel.execute("1+1")
                        elapsed = time.perf_counter() - start
                    finally:
                        kernel.close()
                    if outcome.result != "2":
                        raise RuntimeError("a new ipykernel did not answer 2")
                    results.add(F_OPEN, a_name, metric, "ms", [elapsed * 1000])
                self.log(f"open rep {rep + 1} ipykernel cold: {elapsed * 1000:.0f} ms")
            if not self.b_missing:
                for _ in range(plan.cold_runs):
                    kernel_b = GatewayKernel(self.gateway.port)
                    try:
                        start = time.perf_counter()
                        kernel_b.start()
                        kernel_b.execute("1+1")
                        elapsed = time.perf_counter() - start
                    finally:
                        kernel_b.close()
                    results.add(F_OPEN, b_name, metric, "ms", [elapsed * 1000])
                self.log(f"open rep {rep + 1} gateway: {elapsed * 1000:.0f} ms")
            # cold: a pool of one whose only idle worker was just taken, so the create must wait
            # for the supervisor to fork and start a fresh worker
            self.stack.set_pool(1)
            for _ in range(plan.cold_runs):
                self.stack.wait_idle(1)
                taker = client.start("python")
                try:
                    results.add(F_OPEN, cold_name, metric, "ms", [open_ours()])
                finally:
                    taker.close()
            self.stack.set_pool(plan.pool)
            self.log(f"open rep {rep + 1} cold: {results.find(F_OPEN, cold_name, metric).values[-1]:.0f} ms")
        results.note(F_OPEN, "warm: a create while the pool is full; cold (taskkernel): the pool is resized to 1, "
                             "its idle worker is taken by another notebook, and the timed create arrives at an "
                             "empty pool, so it waits for the supervisor to fork a worker from its pre-imported "
                             "parent and for that worker to start Celery and announce itself idle; A: a "
                             "KernelManager launching a new ipykernel, connecting, waiting until ready and "
                             "executing; B: POST /api/kernels, open the websocket, execute (no pre-spawned "
                             "kernels, the gateway's default)")

    # --- 3. throughput ---------------------------------------------------------------------------

    def _concurrent(self, n_items: int, threads: int, cells: int,
                    make_worker: Callable[[int], tuple[Callable[[int], object], Callable[[], None]]],
                    timeout_s: float = 120) -> tuple[float, list[float], int]:
        """Send `cells` cells from `threads` threads, each owning every threads-th notebook.

        Returns (cells per second, latencies in ms, errors).
        """
        threads = min(threads, n_items)
        lock = threading.Lock()
        issued = [0]
        latencies: list[float] = []
        errors = [0]
        barrier = threading.Barrier(threads + 1)
        deadline = time.monotonic() + timeout_s

        def loop(t: int) -> None:
            fn, close = make_worker(t)
            mine = list(range(t, n_items, threads))
            k = 0
            try:
                barrier.wait()
                while True:
                    with lock:
                        if issued[0] >= cells or time.monotonic() > deadline:
                            return
                        issued[0] += 1
                    item = mine[k % len(mine)]
                    k += 1
                    start = time.perf_counter()
                    try:
                        fn(item)
                    except Exception:
                        with lock:
                            errors[0] += 1
                        continue
                    elapsed = (time.perf_counter() - start) * 1000
                    with lock:
                        latencies.append(elapsed)
            finally:
                close()

        workers = [threading.Thread(target=loop, args=(t,), daemon=True) for t in range(threads)]
        for worker in workers:
            worker.start()
        barrier.wait()
        start, cpu_start = time.perf_counter(), time.process_time()
        for worker in workers:
            worker.join(timeout_s + 60)
        wall = time.perf_counter() - start
        self.last_client_cpu = (time.process_time() - cpu_start) / wall
        return len(latencies) / wall, latencies, errors[0]

    def figure_throughput(self) -> None:
        plan, results = self.plan, self.results
        n, threads, cells = plan.throughput_notebooks, plan.throughput_threads, plan.throughput_cells
        notebooks = self.ensure_notebooks(n)
        port = self.stack.api_port

        def ours_worker(t: int):
            evaluator = HttpEvaluator(port)
            return (lambda i: evaluator.evaluate(notebooks[i].id)), evaluator.close

        systems = [(OURS, ours_worker)]
        if self.a_missing:
            for metric, unit in (("cells/s", "cells/s"), ("p99 latency (ms)", "ms")):
                results.missing(F_TP, PEER_A, metric, unit, self.a_missing)
        else:
            kernels = self.ensure_kernels(n)
            systems.append((PEER_A, lambda t: ((lambda i: kernels[i].execute("1+1")), lambda: None)))
        for rep in range(plan.reps):
            for name, make_worker in systems:
                rate, latencies, errors = self._concurrent(n, threads, cells, make_worker)
                results.add(F_TP, name, "cells/s", "cells/s", [rate], higher_is_better=True)
                results.add(F_TP, name, "p50 latency (ms)", "ms", [percentile(latencies, 50)])
                results.add(F_TP, name, "p99 latency (ms)", "ms", [percentile(latencies, 99)])
                results.add(F_TP, name, "CPU of the client process (cores)", "cores", [self.last_client_cpu])
                if errors:
                    results.note(F_TP, f"{name}: {errors} cells failed in repetition {rep + 1}")
                self.log(f"throughput rep {rep + 1} {name}: {rate:.0f} cells/s, p99 {percentile(latencies, 99):.1f} ms")
        results.note(F_TP, f"{n} notebooks (A: {n} kernels), {min(threads, n)} client threads each owning every "
                           f"{min(threads, n)}-th notebook and sending `1+1` to them in turn, waiting for each "
                           f"result (taskkernel: HTTP evaluate with wait); {cells} cells per repetition; the "
                           "client threads share one Python process (the same for both systems)")

    # --- 5. memory -------------------------------------------------------------------------------

    def figure_memory(self) -> None:
        plan, results = self.plan, self.results
        n = plan.memory_notebooks
        notebooks = self.ensure_notebooks(n)
        time.sleep(1.0)  # let every worker settle into idle
        workers = [nb.refresh()["worker"]["pid"] for nb in notebooks]
        # a notebook is its worker and everything below it: bubblewrap, the sandbox's init, the engine
        trees = [[pid, *descendants(pid)] for pid in workers]
        pids = [pid for tree in trees for pid in tree]
        mems = [machine.total_memory(tree) for tree in trees]
        supervisor = machine.process_memory(self.stack.supervisor_pid())
        one = "one idle notebook"
        total = f"{n} idle notebooks, total"
        results.add(F_MEM, OURS, f"USS, {one} (MiB)", "MiB", [m.uss for m in mems])
        results.add(F_MEM, OURS, f"PSS, {one} (MiB)", "MiB", [m.pss for m in mems])
        results.add(F_MEM, OURS, f"RSS, {one} (MiB)", "MiB", [m.rss for m in mems])
        results.add(F_MEM, OURS, f"USS, {total} (MiB)", "MiB", [sum(m.uss for m in mems)])
        results.add(F_MEM, OURS, f"PSS, {total} (MiB)", "MiB", [sum(m.pss for m in mems) + supervisor.pss])
        results.add(F_MEM, OURS + " supervisor", "RSS of the supervisor (MiB)", "MiB", [supervisor.rss])
        idle_cpu = f"CPU of {n} idle notebooks (% of one core)"
        results.add(F_MEM, OURS, idle_cpu, "%", [machine.idle_cpu_percent(pids, plan.idle_cpu_s)])
        self.log(f"memory {OURS}: USS per notebook (worker + engine) median "
                 f"{sorted(m.uss for m in mems)[len(mems) // 2]:.1f} MiB")
        if self.a_missing:
            results.missing(F_MEM, PEER_A, f"USS, {one} (MiB)", "MiB", self.a_missing)
        else:
            kernels = self.ensure_kernels(n)
            time.sleep(1.0)
            kmems = [machine.process_memory(k.pid) for k in kernels]
            results.add(F_MEM, PEER_A, f"USS, {one} (MiB)", "MiB", [m.uss for m in kmems])
            results.add(F_MEM, PEER_A, f"PSS, {one} (MiB)", "MiB", [m.pss for m in kmems])
            results.add(F_MEM, PEER_A, f"RSS, {one} (MiB)", "MiB", [m.rss for m in kmems])
            results.add(F_MEM, PEER_A, f"USS, {total} (MiB)", "MiB", [sum(m.uss for m in kmems)])
            results.add(F_MEM, PEER_A, f"PSS, {total} (MiB)", "MiB", [sum(m.pss for m in kmems)])
            results.add(F_MEM, PEER_A, idle_cpu, "%",
                        [machine.idle_cpu_percent([k.pid for k in kernels], plan.idle_cpu_s)])
            self.log(f"memory {PEER_A}: USS per kernel median {sorted(m.uss for m in kmems)[len(kmems) // 2]:.1f} MiB")
            for kernel in self.kernels:  # free the memory before the scale figure
                kernel.close()
            self.kernels = []
        results.note(F_MEM, f"read from /proc/<pid>/smaps_rollup (USS = Private_Clean + Private_Dirty) of {n} "
                            "notebooks (the worker, pid from the notebook record, plus its descendants: "
                            "bubblewrap, the sandbox's init and the engine process) and of as many ipykernels, each "
                            "idle after having run cells; 'one idle notebook' gives min/median/max over them; "
                            "taskkernel's PSS total includes the supervisor that the workers share pages with; "
                            f"idle CPU is user + system time over {plan.idle_cpu_s:g} s from /proc/<pid>/stat")

    # --- 6. scale --------------------------------------------------------------------------------

    def _open_until(self, count: int, timeout_s: float) -> int:
        """Open notebooks (4 threads) until `count` are open or time runs out; return how many are."""
        client = self.stack.client()
        lock = threading.Lock()
        deadline = time.monotonic() + timeout_s

        def opener():
            while time.monotonic() < deadline:
                with lock:
                    if len(self.notebooks) + 1 >= count:  # the main notebook counts too
                        return
                try:
                    nb = client.start("python")
                except (ApiError, OSError):
                    time.sleep(0.05)
                    continue
                with lock:
                    self.notebooks.append(nb)

        threads = [threading.Thread(target=opener, daemon=True) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout_s + 30)
        return len(self.notebooks) + 1

    def _background_load(self, notebooks: list[Notebook], rate: float, seconds: float) -> list[float]:
        """`rate` cells/s of `1+1` on random open notebooks for `seconds`; latencies in ms from the
        scheduled send time (so a late send counts against us)."""
        total = int(rate * seconds)
        rng = random.Random(6)
        schedule = [(i / rate, rng.randrange(len(notebooks))) for i in range(total)]
        port = self.stack.api_port
        lock = threading.Lock()
        latencies: list[float] = []
        next_index = [0]
        start = time.perf_counter() + 0.1
        deadline = time.monotonic() + seconds + 60

        def sender():
            evaluator = HttpEvaluator(port)
            try:
                while time.monotonic() < deadline:
                    with lock:
                        if next_index[0] >= total:
                            return
                        offset, item = schedule[next_index[0]]
                        next_index[0] += 1
                    due = start + offset
                    pause = due - time.perf_counter()
                    if pause > 0:
                        time.sleep(pause)
                    evaluator.evaluate(notebooks[item].id)
                    with lock:
                        latencies.append((time.perf_counter() - due) * 1000)
            finally:
                evaluator.close()

        threads = [threading.Thread(target=sender, daemon=True) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(seconds + 90)
        return latencies

    def figure_scale(self) -> None:
        plan, results = self.plan, self.results
        self.main_notebook()
        base_available = machine.meminfo_kib()["MemAvailable"] / 1024
        held = 0
        held_memory = None
        metric_held = (f"open notebooks held with p99 < {plan.scale_p99_ms:g} ms "
                       f"at {plan.scale_rate_per_s:g} cells/s")
        for step in plan.scale_steps:
            opened = self._open_until(step, plan.scale_open_timeout_s)
            if opened < step:
                results.note(F_SCALE, f"step {step}: only {opened} notebooks could be opened within "
                                      f"{plan.scale_open_timeout_s:g} s")
                self.log(f"scale: only {opened}/{step} notebooks opened")
                break
            notebooks = [self.main, *self.notebooks]
            latencies = self._background_load(notebooks, plan.scale_rate_per_s, plan.scale_load_s)
            p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
            mems = []
            for pid in descendants(self.stack.supervisor_pid()):
                try:
                    memory = machine.process_memory(pid)
                except OSError:
                    continue
                if memory.rss > 0:  # a worker just killed (a zombie) holds nothing
                    mems.append(memory)
            supervisor = machine.process_memory(self.stack.supervisor_pid())
            uss_total = sum(m.uss for m in mems) + supervisor.uss
            pss_total = sum(m.pss for m in mems) + supervisor.pss
            drop = base_available - machine.meminfo_kib()["MemAvailable"] / 1024
            results.add(F_SCALE, OURS, f"p50 at {step} open notebooks (ms)", "ms", [p50])
            results.add(F_SCALE, OURS, f"p99 at {step} open notebooks (ms)", "ms", [p99])
            results.add(F_SCALE, OURS, f"PSS of supervisor + {len(mems)} worker and engine processes at {step} (MiB)", "MiB",
                        [pss_total])
            self.log(f"scale {step}: p50 {p50:.1f} ms p99 {p99:.1f} ms over {len(latencies)} cells; "
                     f"PSS {pss_total:.0f} MiB, USS {uss_total:.0f} MiB, MemAvailable -{drop:.0f} MiB")
            if len(latencies) < int(plan.scale_rate_per_s * plan.scale_load_s) or p99 >= plan.scale_p99_ms:
                break
            held = step
            held_memory = (pss_total, uss_total, drop, len(mems))
        results.add(F_SCALE, OURS, metric_held, "notebooks", [held])
        if held and held == plan.scale_steps[-1]:
            results.note(F_SCALE, f"every step held: {held} is the largest step tried, not a limit found")
        if held_memory is not None:
            pss_total, uss_total, drop, workers = held_memory
            results.add(F_SCALE, OURS, f"memory at {held}: PSS of supervisor + {workers} worker and engine processes (MiB)", "MiB",
                        [pss_total])
            results.add(F_SCALE, OURS, f"memory at {held}: USS of supervisor + {workers} worker and engine processes (MiB)", "MiB",
                        [uss_total])
            results.add(F_SCALE, OURS, f"memory at {held}: drop of MemAvailable (MiB)", "MiB", [drop])
        results.note(F_SCALE, f"steps {', '.join(map(str, plan.scale_steps))}: notebooks are opened (4 threads) "
                              f"until that many are open, then `1+1` cells go to random open notebooks on a "
                              f"fixed schedule of {plan.scale_rate_per_s:g}/s for {plan.scale_load_s:g} s "
                              "(latency counted from the scheduled send time); a step holds when its p99 is "
                              f"under {plan.scale_p99_ms:g} ms; one pass per step (each step is bounded in time), "
                              "so min = median = max")


    # --- 9. files ---------------------------------------------------------------------------------

    def figure_files(self) -> None:
        """100 MB up and down a notebook's directory against curl of a static file (bench/files.py)."""
        bench_files.measure(self.stack, self.processes, self.results, size_mb=bench_files.size_mb(self.plan.quick),
                            reps=self.plan.reps, log=self.log)


def notebook_wall_s(kernel_name: str, cells: int, scratch: Path) -> float:
    """Seconds nbclient takes to execute a fresh notebook of `cells` trivial code cells on the
    installed kernel `kernel_name`, from kernel start to shutdown (what `jupyter nbconvert
    --execute` or papermill costs a user), in an empty working directory of its own."""
    import tempfile

    import nbformat
    from nbclient import NotebookClient

    sources = ["import math"] + [
        ("x = math.sqrt(%d)\nx" % i, "print('cell', %d)" % i, "y = [i * i for i in range(100)]\nsum(y)",
         "from IPython.display import display\ndisplay(%d)" % i)[i % 4] for i in range(1, cells)]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code) for code in sources])
    with tempfile.TemporaryDirectory(dir=scratch) as workdir:
        started = time.perf_counter()
        NotebookClient(notebook, kernel_name=kernel_name, timeout=60, resources={"metadata": {"path": workdir}}
                       ).execute()
        return time.perf_counter() - started


def targets(plan: Plan) -> list[Target]:
    """The issue's targets, as ratios of medians measured in this run."""
    metric_open = "create -> first result of `1+1` (ms)"
    files_mb = bench_files.size_mb(plan.quick)
    found = [
        Target("round trip p50 <= 0.5 x Jupyter direct", F_RT, "p50 (ms)", OURS_HTTP, PEER_A, 0.5),
        Target("round trip p50 <= 0.1 x Jupyter over HTTP", F_RT, "p50 (ms)", OURS_HTTP, PEER_B, 0.1),
        Target("round trip p50 <= 2 x Flask echo floor", F_RT, "p50 (ms)", OURS_HTTP, FLOOR_ECHO, 2.0),
        Target("open (warm pool) <= 0.05 x ipykernel cold start", F_OPEN, metric_open,
               f"{OURS} (warm pool of {plan.pool})", "A: ipykernel cold start", 0.05),
        Target("streaming 10,000 lines <= 1 x Jupyter direct", F_STREAM,
               "10,000 lines: until the subscriber holds all (s)", OURS, PEER_A, 1.0),
        Target("100,000 lines delivered completely", F_STREAM, "100,000 lines delivered completely (1 = yes)",
               OURS, require_all_true=True),
        Target("idle USS per notebook (worker + engine) <= 0.75 x idle ipykernel", F_MEM,
               "USS, one idle notebook (MiB)", OURS, PEER_A, 0.75),
        Target(">= 200 open notebooks under 10 cells/s with p99 < 50 ms", F_SCALE,
               f"open notebooks held with p99 < {plan.scale_p99_ms:g} ms at {plan.scale_rate_per_s:g} cells/s",
               OURS, at_least=200,
               skip="not judged with --quick (a tiny step only)" if plan.quick else ""),
        Target("bridge round trip p50 <= 1.0 x ipykernel's", F_BRIDGE, "p50 (ms)", BRIDGE, PEER_A, 1.0),
        Target("whole notebook through the bridge (nbclient) <= 1.1 x ipykernel's wall time", F_BRIDGE,
               NOTEBOOK_METRIC, BRIDGE, PEER_A, 1.1),
        Target("nbclient's test suite: as many tests pass on the bridge (ipython engine) as on ipykernel",
               F_NBCLIENT, NBCLIENT_PASSED, f"{BRIDGE}, ipython engine", PEER_A, 1.0, higher_is_better=True,
               skip="not run with --quick" if plan.quick else ""),
        # >= 0.5 x curl's throughput is <= 2 x its time
        Target("file upload (100 MiB) >= 0.5 x curl of a static file", bench_files.FIGURE,
               bench_files.metric_time(files_mb), bench_files.OURS_UP, bench_files.PEER, 2.0),
        Target("file download (100 MiB) >= 0.5 x curl of a static file", bench_files.FIGURE,
               bench_files.metric_time(files_mb), bench_files.OURS_DOWN, bench_files.PEER, 2.0),
    ]
    from bench import gateway

    found += gateway.targets()
    return found
