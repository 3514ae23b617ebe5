"""Figure 3. throughput (a part of bench.figures.Bench)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from bench.figures.plan import F_TP, OURS, PEER_A
from bench.stats import percentile
from bench.taskkernel_side import HttpEvaluator


class Throughput:
    """Figure 3. throughput: one method of `Bench`, which mixes this class in."""

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
