"""The benchmark's figures, each taken for taskkernel and its peers in one run: `Bench` starts the
services and mixes in one class per figure (bench/figures/<figure>.py); plan.py holds the labels
and the full and quick plans.

Repetitions are interleaved (repetition 1 of every system, then repetition 2, ...) so that drift
on the shared machine falls on all systems alike and the ratios stay fair.
"""

from __future__ import annotations

import sys
import time

from bench import files as bench_files
from bench import machine
from bench.figures.bridge import Bridge
from bench.figures.chaos import Chaos
from bench.figures.completion import Completion
from bench.figures.files import Files
from bench.figures.gateway import Gateway
from bench.figures.memory import Memory
from bench.figures.nbclient import NbClient
from bench.figures.plan import (BRIDGE, F_BRIDGE, FIGURES, FLOOR_ECHO, F_MEM, F_NBCLIENT, F_OPEN, F_RT, F_SCALE, F_STREAM,
                                NBCLIENT_PASSED, NOTEBOOK_METRIC, OURS, OURS_HTTP, PEER_A, PEER_B, Plan, TITLES)
from bench.figures.plan import FULL, QUICK  # noqa: F401 (bench/__main__.py imports them from here)
from bench.figures.open import Open
from bench.figures.roundtrip import RoundTrip
from bench.figures.scale import Scale
from bench.figures.streaming import Streaming
from bench.figures.throughput import Throughput
from bench.floors import RedisFloor
from bench.jupyter import GatewayKernel, IPyKernel, peer_a_missing, peer_b_missing
from bench.results import Results, Target
from bench.services import EchoServer, KernelGateway, Processes, Stack
from taskkernel.client import ApiError, Notebook


class Bench(RoundTrip, Completion, Bridge, NbClient, Gateway, Streaming, Open, Throughput, Memory, Scale, Files,
            Chaos):
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
    from bench import chaos

    found += chaos.targets()
    return found

