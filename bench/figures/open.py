"""Figure 2. notebook open (a part of bench.figures.Bench)."""

from __future__ import annotations

import time

from bench.figures.plan import F_OPEN, OURS
from bench.jupyter import GatewayKernel, IPyKernel
from bench.services import KernelGateway
from bench.taskkernel_side import result_text


class Open:
    """Figure 2. notebook open: one method of `Bench`, which mixes this class in."""

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
