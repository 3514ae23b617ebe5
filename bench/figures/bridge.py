"""Figure 8. the Jupyter bridge (a part of bench.figures.Bench)."""

from __future__ import annotations

from bench.figures.plan import BRIDGE, F_BRIDGE, PEER_A
from bench.stats import percentile


class Bridge:
    """Figure 8. the Jupyter bridge: one method of `Bench`, which mixes this class in."""

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
            return
        from bench.bridge_cost import bridge_round_trip
        from taskkernel.jupyter.kernelspec import install

        prefix = tempfile.mkdtemp(prefix="bench-kernelspec-", dir=self.processes.dir)
        install(self.stack.url, name="taskkernel-bench", prefix=prefix)
        # jupyter_client finds kernelspecs through JUPYTER_PATH, read when a kernel is looked up
        os.environ["JUPYTER_PATH"] = os.path.join(prefix, "share", "jupyter")
        runs = max(20, plan.rt_runs // 2)
        for rep in range(plan.reps):
            for name, kernel in ((BRIDGE, "taskkernel-bench"), (PEER_A, "python3")):
                samples = [x * 1000 for x in bridge_round_trip(runs, kernel_name=kernel)]
                results.add(F_BRIDGE, name, "p50 (ms)", "ms", [percentile(samples, 50)])
                results.add(F_BRIDGE, name, "p99 (ms)", "ms", [percentile(samples, 99)])
                self.log(f"bridge rep {rep + 1} {name}: p50 {percentile(samples, 50):.2f} ms")
        results.note(F_BRIDGE, f"bench.bridge_cost.bridge_round_trip: a fresh kernel per repetition, "
                               f"5 warm-up cells, then {runs} round trips of `1+1`, each done when its "
                               "execute_reply and IOPub idle are in")
