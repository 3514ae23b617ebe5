"""Does the evaluate task's own Celery strategy pay? The `1+1` round trip with it and without it.

Two stacks run side by side in one process tree: A as shipped (workers.tasks.run_in_consumer runs
the cell straight from the message), B with Celery's default strategy (Request, solo pool, tracer):
its supervisor replaces the strategy before it forks its workers. Batches alternate A, B, A, B, ...
on one keep-alive HTTP connection each, so drift falls on both alike. Run:

    .venv/bin/python -m bench.strategy [--batches 8] [--runs 400]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from bench.services import Processes, Stack
from bench.stats import percentile
from bench.taskkernel_side import HttpEvaluator, result_text

# the supervisor as `taskkernel worker` runs it (its settings from the environment, as Stack sets
# them), with the evaluate task's strategy name resolving to Celery's default
DEFAULT_STRATEGY = ("import celery.worker.strategy, taskkernel.workers.tasks as tasks; "
                    "tasks.run_in_consumer = celery.worker.strategy.default; "
                    "import sys; from taskkernel.settings import load_settings; "
                    "from taskkernel.workers import supervisor; "
                    "supervisor.main(load_settings(pool_size=int(sys.argv[3]), host_name=sys.argv[5]))")


def batch(http: HttpEvaluator, notebook_id: str, runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        http.evaluate(notebook_id)
        samples.append(time.perf_counter() - started)
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.strategy", description=__doc__)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--runs", type=int, default=400)
    args = parser.parse_args(argv)
    processes = Processes()
    stacks = {"A: own strategy (run_in_consumer)": Stack(processes, pool=1),
              "B: Celery's default strategy": Stack(processes, pool=1,
                                                    supervisor_command=[sys.executable, "-c", DEFAULT_STRATEGY])}
    try:
        for stack in stacks.values():
            stack.start()
        runs = {}
        for name, stack in stacks.items():
            nb = stack.client().start("python")
            http = HttpEvaluator(stack.api_port)
            if result_text(http.evaluate(nb.id)) != "2":
                raise RuntimeError(f"{name} did not answer 2")
            batch(http, nb.id, 50)  # warm-up
            runs[name] = (http, nb.id, [], [])
        for _ in range(args.batches):
            for name, (http, notebook_id, p50s, p99s) in runs.items():
                samples = batch(http, notebook_id, args.runs)
                p50s.append(percentile(samples, 50) * 1000)
                p99s.append(percentile(samples, 99) * 1000)
        print(f"{args.batches} alternating batches of {args.runs} round trips of `1+1` (HTTP evaluate, wait); "
              f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print("| stack | p50 of batches: min / median / max (ms) | p99, median of batches (ms) |")
        print("|---|---|---|")
        for name, (_, _, p50s, p99s) in runs.items():
            print(f"| {name} | {min(p50s):.3f} / {statistics.median(p50s):.3f} / {max(p50s):.3f} "
                  f"| {statistics.median(p99s):.3f} |")
        return 0
    finally:
        for stack in stacks.values():
            stack.close()
        processes.stop_all()


if __name__ == "__main__":
    raise SystemExit(main())
