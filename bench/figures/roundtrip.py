"""Figure 1. round trip (a part of bench.figures.Bench)."""

from __future__ import annotations

import time
from collections.abc import Callable

from bench import profiling
from bench.figures.plan import (FLOOR_ECHO, FLOOR_PING, FLOOR_PUBSUB, F_RT, OURS_CLIENT, OURS_HTTP, PEER_A, PEER_B,
                                PEER_B_QUICKACK, timed)
from bench.floors import EchoClient, RedisFloor
from bench.jupyter import GatewayKernel
from bench.services import EchoServer, descendants
from bench.stats import percentile
from bench.taskkernel_side import HttpEvaluator, result_text
from taskkernel.client import Notebook


class RoundTrip:
    """Figure 1. round trip: one method of `Bench`, which mixes this class in."""

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
