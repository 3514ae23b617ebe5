"""The price of the bridge: a cell's round trip through a Jupyter kernel, timed with jupyter_client.

`bridge_round_trip(n)` drives the taskkernel kernelspec the way a front end does (execute_request on
shell, outputs on IOPub) and returns each round trip; pass kernel_name="python3" to time ipykernel
the same way. A cell counts as finished once its execute_reply and its IOPub `idle` are both in,
as in bench/jupyter.py. `python -m bench.bridge_cost` prints the percentiles of both.
"""

from __future__ import annotations

import argparse
import statistics
import time

DEFAULT_KERNEL = "taskkernel-python"


def run_cell(client, code: str, timeout_s: float = 60.0) -> dict:
    """Execute `code` on a started BlockingKernelClient; return the execute_reply content once the
    reply and the IOPub idle status for it are both in."""
    msg_id = client.execute(code)
    deadline = time.monotonic() + timeout_s
    reply, idle = None, False
    while not idle:
        msg = client.get_iopub_msg(timeout=max(0.001, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "status":
            idle = msg["content"]["execution_state"] == "idle"
    while reply is None:
        msg = client.get_shell_msg(timeout=max(0.001, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") == msg_id:
            reply = msg["content"]
    return reply


def bridge_round_trip(n: int = 200, kernel_name: str = DEFAULT_KERNEL, code: str = "1+1",
                      warmup: int = 5) -> list[float]:
    """Seconds per round trip of `code`, `n` times, on a fresh kernel of the installed `kernel_name`.

    The kernel is started (for the taskkernel kernelspec: a notebook is pinned on the service its
    kernel.json names), warmed up with `warmup` cells, measured, and shut down.
    """
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(kernel_name=kernel_name, startup_timeout=60)
    try:
        for _ in range(warmup):
            run_cell(client, code)
        samples = []
        for _ in range(n):
            started = time.perf_counter()
            reply = run_cell(client, code)
            samples.append(time.perf_counter() - started)
            if reply["status"] != "ok":
                raise RuntimeError(f"{code!r} failed on {kernel_name}: {reply}")
        return samples
    finally:
        client.stop_channels()
        manager.shutdown_kernel()


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50/p90/p99 in milliseconds."""
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {"p50_ms": statistics.median(samples) * 1000, "p90_ms": cuts[89] * 1000, "p99_ms": cuts[98] * 1000}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bridge_cost", description=__doc__)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--kernel", action="append", help=f"kernelspec name(s) (default {DEFAULT_KERNEL} and python3)")
    args = parser.parse_args(argv)
    for name in args.kernel or [DEFAULT_KERNEL, "python3"]:
        figures = percentiles(bridge_round_trip(args.n, name))
        print(f"{name:24s} n={args.n}  " + "  ".join(f"{k}={v:.2f}" for k, v in figures.items()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
