"""Figures 10 and 11: taskkernel's Jupyter gateway (taskkernel/gateway) next to Jupyter's own.

10. `1+1` over the gateway's kernel websocket, the way a web front end (or Jupyter Server with
   --gateway-url) drives it: execute_request, then its execute_reply and iopub idle. Measured in
   the same run, interleaved, against jupyter-kernel-gateway (B, and B' whose client acks every
   segment at once) and ipykernel through jupyter_client (A).
11. HTTP evaluate latency of the API with no gateway websocket open, and with N idle ones open
   (the gateway is an event loop: an open websocket must cost the API nothing), plus the
   gateway's own round trip while they are open.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

from bench.jupyter import GatewayKernel
from bench.results import Target
from bench.services import http_ok, wait_until
from bench.stats import percentile
from bench.taskkernel_side import HttpEvaluator, result_text
from taskkernel.redis_server import free_port
from taskkernel.settings import settings_environ

F_GW = "10. Jupyter gateway: `1+1` over the kernel websocket"
F_IDLE = "11. idle gateway websockets"
GW_PYTHON = "taskkernel gateway (websocket, python engine)"
GW_IPYTHON = "taskkernel gateway (websocket, ipython engine)"
HTTP_NONE = "taskkernel HTTP evaluate, no gateway websocket open"
HTTP_IDLE = "taskkernel HTTP evaluate, {n} idle gateway websockets open"
GW_IDLE = "taskkernel gateway `1+1`, {n} idle gateway websockets open"
IDLE_SOCKETS = 200
IDLE_KERNELS = 4  # the idle sockets are spread over this many kernels (as front ends over notebooks)


class OurGateway:
    """`taskkernel gateway` on the bench stack's Redis, on a free loopback port."""

    def __init__(self, bench):
        self.bench = bench
        self.port = 0
        self.process = None

    def start(self) -> "OurGateway":
        self.port = free_port()
        env = {**os.environ, **settings_environ(self.bench.stack.settings)}
        self.process = self.bench.processes.start(
            "taskkernel-gateway", [sys.executable, "-m", "taskkernel", "gateway", "--port", str(self.port)], env)
        wait_until(lambda: http_ok(self.port, "/api/kernelspecs"), 60, "the taskkernel gateway", self.process,
                   self.bench.processes, "taskkernel-gateway")
        return self


def timed_batch(fn: Callable[[], object], runs: int, warmup: int, timeout_s: float) -> list[float]:
    """`runs` timed calls of `fn` (ms) after `warmup` untimed ones, stopping early past `timeout_s`."""
    for _ in range(warmup):
        fn()
    samples = []
    deadline = time.monotonic() + timeout_s
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
        if time.monotonic() > deadline:
            break
    return samples


def figure(bench) -> None:
    """Both figures; `bench` is the run's bench.figures.Bench (its stack, peers and plan)."""
    from bench.figures.plan import PEER_A, PEER_B, PEER_B_QUICKACK

    plan, results = bench.plan, bench.results
    ours = OurGateway(bench).start()
    kernels: list[GatewayKernel] = []
    idle: list = []
    http = HttpEvaluator(bench.stack.api_port)
    try:
        def kernel(name: str) -> GatewayKernel:
            k = GatewayKernel(ours.port, name=name).start()
            kernels.append(k)
            if k.execute("1+1").result != "2":
                raise RuntimeError(f"the taskkernel gateway's {name} kernel did not answer 2")
            return k

        python, ipython = kernel("python"), kernel("ipython")
        systems: list[tuple[str, Callable[[], object]]] = [
            (GW_PYTHON, lambda: python.execute("1+1")), (GW_IPYTHON, lambda: ipython.execute("1+1"))]
        kernel_a, kernel_b = bench.peer_a(), bench.peer_b()
        if kernel_a is not None:
            systems.append((PEER_A, lambda: kernel_a.execute("1+1")))
        else:
            results.missing(F_GW, PEER_A, "p50 (ms)", "ms", bench.a_missing)
        if kernel_b is not None:
            systems.append((PEER_B, lambda: kernel_b.execute("1+1")))
            # a B' kernel of its own: the round-trip figure's has been idle for minutes by now
            quick = GatewayKernel(bench.gateway.port, quickack=True).start()
            kernels.append(quick)
            quick.execute("1+1")
            systems.append((PEER_B_QUICKACK, lambda: quick.execute("1+1")))
        else:
            results.missing(F_GW, PEER_B, "p50 (ms)", "ms", bench.b_missing)
        for rep in range(plan.reps):
            for name, fn in systems:
                samples = timed_batch(fn, plan.rt_runs, plan.rt_warmup, plan.batch_timeout_s)
                for q in (50, 90, 99):
                    results.add(F_GW, name, f"p{q} (ms)", "ms", [percentile(samples, q)])
                bench.log(f"gateway rep {rep + 1}/{plan.reps} {name}: p50 {percentile(samples, 50):.2f} ms "
                          f"p99 {percentile(samples, 99):.2f} ms ({len(samples)} runs)")
        results.note(F_GW, f"each repetition: {plan.rt_warmup} warm-up cells, then {plan.rt_runs} `1+1` cells one "
                           "after another, each done when its execute_reply and iopub idle are in; the same "
                           "websocket client (bench/jupyter.py GatewayKernel, websocket-client) for ours and B")

        # --- 10. idle websockets ------------------------------------------------------------
        nb = bench.main_notebook()
        if result_text(http.evaluate(nb.id)) != "2":
            raise RuntimeError("taskkernel did not answer 2")
        targets_of_idle = [kernel("python") for _ in range(IDLE_KERNELS)]  # not the kernel timed below
        with_idle, gw_idle = HTTP_IDLE.format(n=IDLE_SOCKETS), GW_IDLE.format(n=IDLE_SOCKETS)
        for rep in range(plan.reps):
            samples = timed_batch(lambda: http.evaluate(nb.id), plan.rt_runs, plan.rt_warmup, plan.batch_timeout_s)
            _add_latency(results, HTTP_NONE, samples)
            opened = time.perf_counter()
            idle = open_idle(ours.port, [k.kernel_id for k in targets_of_idle], IDLE_SOCKETS)
            opened_s = time.perf_counter() - opened
            samples = timed_batch(lambda: http.evaluate(nb.id), plan.rt_runs, plan.rt_warmup, plan.batch_timeout_s)
            _add_latency(results, with_idle, samples)
            gw = timed_batch(lambda: python.execute("1+1"), plan.rt_runs, plan.rt_warmup, plan.batch_timeout_s)
            _add_latency(results, gw_idle, gw)
            bench.log(f"idle rep {rep + 1}/{plan.reps}: {len(idle)} websockets opened in {opened_s:.2f} s; "
                      f"HTTP p99 {percentile(samples, 99):.2f} ms; gateway p99 {percentile(gw, 99):.2f} ms")
            close_all(idle)
            idle = []
        results.note(F_IDLE, f"{IDLE_SOCKETS} websockets (websocket-client, in the bench process) are opened on "
                             f"{IDLE_KERNELS} other kernels of the gateway (each answers a kernel_info_request, then "
                             "stays idle) while HTTP evaluate (wait) of `1+1` runs on one keep-alive connection to "
                             "the API, then the gateway's own `1+1` on a kernel without them; they are closed "
                             "before the next repetition's `none` batch")
    finally:
        close_all(idle)
        http.close()
        for k in kernels:
            try:
                k.close()
            except Exception:
                pass


def _add_latency(results, system: str, samples: list[float]) -> None:
    for q in (50, 99):
        results.add(F_IDLE, system, f"p{q} (ms)", "ms", [percentile(samples, q)])


def open_idle(port: int, kernel_ids: list[str], count: int) -> list:
    """`count` open websockets on the kernels, round robin; each has had its kernel_info answered."""
    import json
    import uuid

    import websocket

    sockets = []
    for i in range(count):
        kernel_id = kernel_ids[i % len(kernel_ids)]
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/api/kernels/{kernel_id}/channels", timeout=60)
        sockets.append(ws)
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({"header": {"msg_id": msg_id, "msg_type": "kernel_info_request", "session": "idle",
                                       "username": "bench", "date": "", "version": "5.3"},
                            "parent_header": {}, "metadata": {}, "content": {}, "channel": "shell"}))
        while True:  # iopub of other sockets' kernels may come first
            msg = json.loads(ws.recv())
            if msg["msg_type"] == "kernel_info_reply" and msg["parent_header"].get("msg_id") == msg_id:
                break
    return sockets


def close_all(sockets: list) -> None:
    for ws in sockets:
        try:
            ws.close()
        except Exception:
            pass


def targets() -> list[Target]:
    from bench.figures.plan import PEER_B_QUICKACK

    return [
        Target("gateway round trip p50 <= 0.5 x Kernel Gateway's best (B')", F_GW, "p50 (ms)", GW_PYTHON,
               PEER_B_QUICKACK, 0.5),
        Target(f"HTTP evaluate p99 with {IDLE_SOCKETS} idle gateway websockets <= 1.2 x with none", F_IDLE,
               "p99 (ms)", HTTP_IDLE.format(n=IDLE_SOCKETS), HTTP_NONE, 1.2),
    ]
