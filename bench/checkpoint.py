"""What a checkpoint costs: the namespace of a 100 MB array, and of 1e6 small objects.

Times what POST /checkpoint and /restore (and checkpoint_every_cell) do, minus the socket between
worker and engine: the engine's snapshot (taskkernel/engines/namespace.py), the worker's store
(workers/checkpoints.py, a private redis-server or a directory) and the engine's load. Run:
`python -m bench.checkpoint [--repeat 3]`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import redis

from taskkernel import keys
from taskkernel.engines import namespace
from taskkernel.redis_server import RedisServer
from taskkernel.workers.checkpoints import CheckpointStore


def _namespaces() -> dict[str, dict]:
    import numpy

    return {
        "100 MB numpy array": {"arr": numpy.ones(100 * 1024 * 1024 // 8)},
        "1e6 small ints in a list": {"items": list(range(1_000_000))},
        "1e6 small dicts": {"rows": [{"i": i} for i in range(1_000_000)]},
        "a closure (dill)": {"f": (lambda k: (lambda x: x * k))(3)},
    }


def run(repeat: int = 3) -> list[dict]:
    rows = []
    with RedisServer() as server, tempfile.TemporaryDirectory() as directory:
        client = redis.Redis.from_url(server.url)
        stores = {"redis": CheckpointStore(client), "directory": CheckpointStore(client, directory)}
        client.hset(keys.notebook("bench"), "state", "idle")  # a checkpoint is kept only for a live notebook
        for label, ns in _namespaces().items():
            for store_name, store in stores.items():
                saves, loads, size = [], [], 0
                for _ in range(repeat):
                    started = time.perf_counter()
                    meta, blobs = namespace.snapshot(ns)
                    store.write("bench", blobs, meta)
                    saves.append(time.perf_counter() - started)
                    size = sum(len(b) for b in blobs.values())
                    started = time.perf_counter()
                    namespace.load({}, store.read("bench"))
                    loads.append(time.perf_counter() - started)
                rows.append({"namespace": label, "store": store_name, "MB": size / 1e6,
                             "save_s": (min(saves), statistics.median(saves), max(saves)),
                             "restore_s": (min(loads), statistics.median(loads), max(loads))})
            client.delete(keys.checkpoint("bench"))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"{'namespace':<26} {'store':<10} {'MB':>7}  {'save s min/med/max':<24} {'restore s min/med/max':<24}")
    for row in run(args.repeat):
        save = "/".join(f"{x:.3f}" for x in row["save_s"])
        load = "/".join(f"{x:.3f}" for x in row["restore_s"])
        print(f"{row['namespace']:<26} {row['store']:<10} {row['MB']:>7.1f}  {save:<24} {load:<24}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
