"""Observing the service: the counters the runtime keeps in Redis, and one snapshot of everything.

Runtimes count finished cells (by status) and their wall time (a histogram: a count per bucket
bound) in two Redis hashes, inside the same transaction that finishes the cell, so the figures
agree with the cell records and survive any API or worker restart. Everything else a dashboard
wants (hosts, workers, notebooks by state, queue depth, feed messages) is read from the records
that already exist at the moment someone asks: `snapshot()` is what `GET /metrics`,
`GET /api/status` and `taskkernel status` all read, so they can never disagree.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import redis

from taskkernel import keys
from taskkernel.hosts import host_from_redis
from taskkernel.messages import as_text
from taskkernel.notebooks import notebook_from_redis

# Upper bounds (seconds) of the cell latency histogram's buckets; cells are interactive, so
# the low end is fine-grained, but an hour-long training cell still lands in a real bucket.
CELL_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                        300.0, 1800.0, 3600.0)
INF = "+Inf"

# A Lua function for the runtime's script that finishes a cell (workers/runtime.py), so the
# counters move in the same atomic step as the cell record: count the cell by status, and its wall
# time into its histogram bucket (chosen by `latency_bucket`) and the running sum.
RECORD_CELL_LUA_FUNCTION = """
local function record_cell(cells_key, seconds_key, status, bucket, seconds)
  redis.call('HINCRBY', cells_key, status, 1)
  redis.call('HINCRBY', seconds_key, bucket, 1)
  redis.call('HINCRBYFLOAT', seconds_key, 'sum', seconds)
end
"""


def latency_bucket(seconds: float) -> str:
    """The histogram field a cell of this wall time is counted in: its bucket's upper bound."""
    for bound in CELL_SECONDS_BUCKETS:
        if seconds <= bound:
            return f"{bound:g}"
    return INF


_BOUNDS = [f"{bound:g}" for bound in CELL_SECONDS_BUCKETS]


@dataclass
class Snapshot:
    """What the service looks like at one moment, read from Redis in a few round trips."""

    time: float
    hosts: list[dict] = field(default_factory=list)
    notebooks: list[dict] = field(default_factory=list)
    cells: dict[str, int] = field(default_factory=dict)  # status -> cells run
    cell_seconds_buckets: list[tuple[str, int]] = field(default_factory=list)  # (le, count in bucket)
    cell_seconds_sum: float = 0.0

    def workers_by_state(self) -> dict[tuple[str, str], int]:
        """{(host, state): workers}: idle (warm, unpinned), busy (running a cell), pinned (serving a
        notebook between cells) and other (starting or stopping: the host's processes minus the rest).
        """
        counts: dict[tuple[str, str], int] = {}
        for host in self.hosts:
            name = host["name"]
            pinned = [nb for nb in self.notebooks if nb["worker"] and nb["worker"]["host"] == name]
            busy = sum(1 for nb in pinned if nb["state"] == "busy")
            idle = sum(host["idle"].values())
            counts[(name, "idle")] = idle
            counts[(name, "busy")] = busy
            counts[(name, "pinned")] = len(pinned) - busy
            counts[(name, "other")] = max(0, host["workers"] - idle - len(pinned))
        return counts

    def to_dict(self) -> dict:
        """The JSON form `GET /api/status` answers with."""
        return {
            "time": self.time,
            "hosts": self.hosts,
            "notebooks": self.notebooks,
            "cells": self.cells,
            "queue_depth": sum(nb["pending"] for nb in self.notebooks),
        }


def snapshot(client: redis.Redis) -> Snapshot:
    """Read hosts, notebooks (with queue depth and feed length) and the cell counters."""
    now = time.time()
    pipe = client.pipeline(transaction=False)
    pipe.smembers(keys.HOSTS)
    pipe.zrange(keys.NOTEBOOKS, 0, -1)
    pipe.hgetall(keys.METRICS_CELLS)
    pipe.hgetall(keys.METRICS_CELL_SECONDS)
    host_names, notebook_ids, cells_raw, seconds_raw = pipe.execute()
    host_names = sorted(as_text(h) for h in host_names)
    notebook_ids = [as_text(n) for n in notebook_ids]

    pipe = client.pipeline(transaction=False)
    for name in host_names:
        pipe.hgetall(keys.host(name))
    for notebook_id in notebook_ids:
        pipe.hgetall(keys.notebook(notebook_id))
        pipe.llen(keys.notebook_pending(notebook_id))
        pipe.get(keys.feed_seq(notebook_id))
    answers = pipe.execute()
    host_records, rest = answers[:len(host_names)], answers[len(host_names):]

    notebooks = []
    for i in range(0, len(rest), 3):
        raw, pending, seq = rest[i:i + 3]
        if raw and b"engine" in raw:
            notebooks.append({**notebook_from_redis(raw), "pending": int(pending), "feed_messages": int(seq or 0)})

    hosts = []
    for name, raw in zip(host_names, host_records):
        record = host_from_redis(name, raw)
        heartbeat = record["heartbeat"]
        hosts.append({
            "name": name,
            "alive": bool(raw),  # the hash expires when the supervisor stops heartbeating
            "pid": record["pid"],
            "heartbeat_age_s": round(now - heartbeat, 3) if heartbeat else None,
            "heartbeat": heartbeat,  # unix time of the last heartbeat
            "workers": record["workers"],
            "max_workers": record["max_workers"],
            "pools": record["pools"],
            "idle": {},
            "notebooks": sum(1 for nb in notebooks if nb["worker"] and nb["worker"]["host"] == name),
            "engine_errors": record["engine_errors"],
        })
    if hosts:
        pipe = client.pipeline(transaction=False)
        for host in hosts:
            for engine in sorted(host["pools"]):
                pipe.scard(keys.idle_workers(engine, host["name"]))
        counts = iter(pipe.execute())
        for host in hosts:
            host["idle"] = {engine: next(counts) for engine in sorted(host["pools"])}

    seconds = {as_text(k): as_text(v) for k, v in seconds_raw.items()}
    buckets = [(bound, int(seconds.get(bound, 0))) for bound in _BOUNDS] + [(INF, int(seconds.get(INF, 0)))]
    return Snapshot(
        time=now,
        hosts=hosts,
        notebooks=notebooks,
        cells={as_text(k): int(v) for k, v in sorted(cells_raw.items())},
        cell_seconds_buckets=buckets,
        cell_seconds_sum=float(seconds.get("sum", 0.0)),
    )

