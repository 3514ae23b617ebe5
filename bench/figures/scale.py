"""Figure 6. scale (a part of bench.figures.Bench)."""

from __future__ import annotations

import random
import threading
import time

from bench import machine
from bench.figures.plan import F_SCALE, OURS
from bench.services import descendants
from bench.stats import percentile
from bench.taskkernel_side import HttpEvaluator
from taskkernel.client import ApiError, Notebook


class Scale:
    """Figure 6. scale: one method of `Bench`, which mixes this class in."""

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
