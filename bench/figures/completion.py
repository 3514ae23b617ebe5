"""Figure 7. completion (a part of bench.figures.Bench)."""

from __future__ import annotations

from collections.abc import Callable

from bench.figures.plan import COMPLETION_CODE, F_COMPLETE, OURS, PEER_A, PEER_B, timed
from bench.stats import percentile


class Completion:
    """Figure 7. completion: one method of `Bench`, which mixes this class in."""

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
