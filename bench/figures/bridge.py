"""Figure 8. the Jupyter bridge (a part of bench.figures.Bench)."""

from __future__ import annotations

import time
from pathlib import Path

from bench.figures.plan import BRIDGE, F_BRIDGE, NOTEBOOK_CELLS, NOTEBOOK_METRIC, PEER_A
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
                results.missing(F_BRIDGE, system, NOTEBOOK_METRIC, "ms", self.a_missing)
            return
        from bench.bridge_cost import bridge_round_trip
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
        results.note(F_BRIDGE, f"bench.bridge_cost.bridge_round_trip: a fresh kernel per repetition, "
                               f"5 warm-up cells, then {runs} round trips of `1+1`, each done when its "
                               "execute_reply and IOPub idle are in")
        results.note(F_BRIDGE, f"whole notebook: nbclient's NotebookClient.execute() of a notebook of {cells} code "
                               "cells (an import, then assignments, prints, values and a display), kernel start "
                               "and shutdown included, in an empty working directory; one per repetition")


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
