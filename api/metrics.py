"""GET /metrics (Prometheus text format) and GET /api/status (the same snapshot as JSON).

Nothing is counted in the API process: a custom collector reads Redis at scrape time
(taskkernel.metrics.snapshot), so any number of API processes behind a balancer report the same
figures, and a restarted API loses none.
"""

from __future__ import annotations

import redis
from flask import Blueprint, Response, current_app, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from taskkernel import metrics

blueprint = Blueprint("metrics", __name__)


class RedisCollector:
    """A prometheus_client collector whose every scrape is one taskkernel.metrics.snapshot()."""

    def __init__(self, client: redis.Redis):
        self.client = client

    def describe(self):
        return []  # no describe-time scrape: the registry must not touch Redis when it is built

    def collect(self):
        snap = metrics.snapshot(self.client)

        hosts = GaugeMetricFamily("taskkernel_host_up", "1 while the host's supervisor heartbeats, else 0",
                                  labels=["host"])
        heartbeat = GaugeMetricFamily("taskkernel_host_heartbeat_age_seconds",
                                      "Seconds since the host's supervisor last heartbeated", labels=["host"])
        for host in snap.hosts:
            hosts.add_metric([host["name"]], 1 if host["alive"] else 0)
            if host["heartbeat_age_s"] is not None:
                heartbeat.add_metric([host["name"]], host["heartbeat_age_s"])
        yield hosts
        yield heartbeat

        workers = GaugeMetricFamily(
            "taskkernel_workers",
            "Worker processes by host and state: idle (warm), busy (running a cell), pinned (serving a "
            "notebook between cells), other (starting or stopping)", labels=["host", "state"])
        for (host, state), count in sorted(snap.workers_by_state().items()):
            workers.add_metric([host, state], count)
        yield workers

        notebooks = GaugeMetricFamily("taskkernel_notebooks", "Notebooks by engine and state",
                                      labels=["engine", "state"])
        by_state: dict[tuple[str, str], int] = {}
        for nb in snap.notebooks:
            by_state[(nb["engine"], nb["state"])] = by_state.get((nb["engine"], nb["state"]), 0) + 1
        for (engine, state), count in sorted(by_state.items()):
            notebooks.add_metric([engine, state], count)
        yield notebooks

        yield GaugeMetricFamily("taskkernel_queue_depth", "Cells queued and not yet started, all notebooks",
                                value=sum(nb["pending"] for nb in snap.notebooks))
        yield GaugeMetricFamily("taskkernel_feed_messages",
                                "Messages published on the feeds of the notebooks that exist now",
                                value=sum(nb["feed_messages"] for nb in snap.notebooks))

        cells = CounterMetricFamily("taskkernel_cells", "Cells run to the end, by status", labels=["status"])
        for status in sorted({"ok", "error", *snap.cells}):
            cells.add_metric([status], snap.cells.get(status, 0))
        yield cells

        cumulative, buckets = 0, []
        for bound, count in snap.cell_seconds_buckets:
            cumulative += count
            buckets.append((bound, cumulative))
        latency = HistogramMetricFamily("taskkernel_cell_seconds", "Wall time of a cell, from claim to reply")
        latency.add_metric([], buckets=buckets, sum_value=snap.cell_seconds_sum)
        yield latency


def _registry() -> CollectorRegistry:
    """One registry per app, holding only the Redis collector (built on first scrape)."""
    extensions = current_app.extensions
    if "taskkernel.metrics" not in extensions:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(RedisCollector(extensions["taskkernel"].redis))
        extensions["taskkernel.metrics"] = registry
    return extensions["taskkernel.metrics"]


@blueprint.get("/metrics")
def prometheus_metrics():
    return Response(generate_latest(_registry()), content_type=CONTENT_TYPE_LATEST)


@blueprint.get("/api/status")
def status():
    """Hosts (heartbeat, pools, idle workers), notebooks (state, worker, queue depth) and cell counts."""
    return jsonify(metrics.snapshot(current_app.extensions["taskkernel"].redis).to_dict())
