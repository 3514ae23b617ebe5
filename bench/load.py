"""A bounded load test through the HTTP API: many notebooks, concurrent cells, SSE subscribers.

Every cell's result is checked, and every subscriber checks that its notebook's feed arrived
complete, in order, without duplicates. Run the full size against a running service with
`python -m bench.load` (it starts a private service; 50 notebooks x 20 cells, 10 subscribers), or
`--url URL` against a running one;
the test suite runs a reduced size through `run_load`.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from taskkernel.client import Client


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def _drive(client: Client, notebook, cells: int, latencies: list[float], problems: list[str], deadline: float):
    notebook.evaluate("seen = []")
    for i in range(cells):
        if time.monotonic() > deadline:
            problems.append(f"{notebook.id}: out of time after {i} cells")
            return
        started = time.perf_counter()
        cell = notebook.evaluate(f"seen.append({i})\n{i} * {i}", timeout=60)
        latencies.append(time.perf_counter() - started)
        result = [o for o in cell["outputs"] if o["output_type"] == "execute_result"]
        if cell["status"] != "ok" or not result or result[0]["data"]["text/plain"] != str(i * i):
            problems.append(f"{notebook.id}: cell {i} came back wrong: {cell['status']} {cell['outputs']}")
    final = notebook.evaluate("seen")["outputs"][0]["data"]["text/plain"]
    if final != repr(list(range(cells))):
        problems.append(f"{notebook.id}: cells ran out of order or twice: {final}")


def _subscribe(notebook, expected_replies: int, report: dict, ready: threading.Event, timeout_s: float):
    """Follow one notebook's feed over SSE until `expected_replies` execute_replies arrived."""
    seqs, replies = [], 0
    feed = notebook.feed(timeout=timeout_s)
    ready.set()
    for msg in feed:
        seqs.append(msg["seq"])
        if msg["header"]["msg_type"] == "execute_reply":
            replies += 1
            if replies >= expected_replies:
                break
    report["messages"] = len(seqs)
    report["replies"] = replies
    report["in_order"] = seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else False
    report["duplicates"] = len(seqs) - len(set(seqs))


def run_load(url: str, notebooks: int = 50, cells: int = 20, subscribers: int = 10,
             timeout_s: float = 300.0, token: str | None = None) -> dict:
    """Run the load; return figures and a list of problems (empty when nothing was lost)."""
    client = Client(url, token=token, timeout_s=120)
    deadline = time.monotonic() + timeout_s
    opened = []
    problems: list[str] = []
    latencies: list[float] = []
    try:
        with ThreadPoolExecutor(max_workers=min(notebooks, 16)) as pool:
            opened = list(pool.map(lambda _: client.start("python"), range(notebooks)))
        reports = [{} for _ in range(min(subscribers, notebooks))]
        readies = [threading.Event() for _ in reports]
        watchers = [threading.Thread(target=_subscribe, daemon=True,
                                     args=(opened[i], cells + 2, reports[i], readies[i], timeout_s))
                    for i in range(len(reports))]
        for watcher in watchers:
            watcher.start()
        for ready in readies:
            ready.wait(10)
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=notebooks) as pool:
            for future in [pool.submit(_drive, client, nb, cells, latencies, problems, deadline) for nb in opened]:
                future.result()
        elapsed = time.perf_counter() - started
        for watcher in watchers:
            watcher.join(max(1.0, deadline - time.monotonic()))
        for nb, report in zip(opened, reports):
            if report.get("replies") != cells + 2 or not report.get("in_order") or report.get("duplicates"):
                problems.append(f"{nb.id}: feed incomplete or out of order: {report}")
    finally:
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(lambda nb: nb.close(), opened))
    total = notebooks * cells
    return {
        "notebooks": notebooks, "cells": total, "subscribers": len(reports), "seconds": elapsed,
        "cells_per_s": total / elapsed, "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * _percentile(latencies, 99), "feed_messages": sum(r.get("messages", 0) for r in reports),
        "problems": problems,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running service (default: start a private one for the run)")
    parser.add_argument("--token")
    parser.add_argument("--notebooks", type=int, default=50)
    parser.add_argument("--cells", type=int, default=20)
    parser.add_argument("--subscribers", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    if args.url:
        result = run_load(args.url, args.notebooks, args.cells, args.subscribers, args.timeout, args.token)
    else:
        from bench.services import Processes, Stack

        processes = Processes()
        try:
            stack = Stack(processes, pool=args.notebooks, api_threads=max(64, args.notebooks + args.subscribers + 8))
            stack.start()
            result = run_load(stack.url, args.notebooks, args.cells, args.subscribers, args.timeout)
            stack.close()
        finally:
            processes.stop_all()
    print(f"{'notebooks':>10} {'cells':>6} {'subs':>5} {'cells/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'lost':>5}")
    print(f"{result['notebooks']:>10} {result['cells']:>6} {result['subscribers']:>5} {result['cells_per_s']:>8.1f} "
          f"{result['p50_ms']:>8.1f} {result['p99_ms']:>8.1f} {len(result['problems']):>5}")
    for problem in result["problems"]:
        print("PROBLEM:", problem)
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
