"""GET /metrics (Prometheus text format, or OpenMetrics when Accept asks) and GET /api/status (the
same snapshot as JSON).

The service's figures are not counted in the API process: a custom collector reads Redis at
scrape time (taskkernel.metrics.snapshot), so any number of API processes behind a balancer
report the same figures, and a restarted API loses none. What belongs to one API process is its
own: the process_* collector and the latency of the requests it answered, by route and status.
"""

from __future__ import annotations

import platform
import time

import redis
from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from prometheus_client import CollectorRegistry, Histogram, Info, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder

import taskkernel
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
        # a timestamp, as Prometheus exports last-seen times: `time() - taskkernel_host_heartbeat_timestamp_seconds`
        heartbeat = GaugeMetricFamily("taskkernel_host_heartbeat_timestamp_seconds",
                                      "Unix time of the host's supervisor's last heartbeat", labels=["host"])
        for host in snap.hosts:
            hosts.add_metric([host["name"]], 1 if host["alive"] else 0)
            if host.get("heartbeat") is not None:
                heartbeat.add_metric([host["name"]], host["heartbeat"])
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


# seconds; from a cached GET (~1 ms) to an evaluate that waits for a long cell
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, float("inf"))


def register(app: Flask) -> None:
    """The app's registry: the Redis collector, this process's collectors and build info, and the
    request latency histogram that every request (but the scrapes themselves) is timed into."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(app.extensions["taskkernel"].redis))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    Info("taskkernel_build", "The taskkernel version this API process runs", registry=registry).info(
        {"version": taskkernel.__version__, "python": platform.python_version()})
    latency = Histogram("taskkernel_api_request_seconds",
                        "Time from a request's arrival to its response's headers (an event stream's "
                        "life is not counted), by route, method and status", ["route", "method", "status"],
                        buckets=REQUEST_BUCKETS, registry=registry)
    app.extensions["taskkernel.metrics"] = registry

    def start_timer():
        g.taskkernel_started = time.perf_counter()

    # first of all before_request functions, so that requests refused by auth are timed too
    app.before_request_funcs.setdefault(None, []).insert(0, start_timer)

    @app.after_request
    def observe(response: Response) -> Response:
        started = g.pop("taskkernel_started", None)
        if started is not None and request.endpoint != "metrics.prometheus_metrics":
            route = request.url_rule.rule if request.url_rule is not None else "unmatched"
            latency.labels(route, request.method, str(response.status_code)).observe(time.perf_counter() - started)
        return response


@blueprint.get("/metrics")
def prometheus_metrics():
    encoder, content_type = choose_encoder(request.headers.get("Accept"))
    return Response(encoder(current_app.extensions["taskkernel.metrics"]), content_type=content_type)


@blueprint.get("/api/status")
def status():
    """Hosts (heartbeat, pools, idle workers), notebooks (state, worker, queue depth) and cell counts."""
    return jsonify(metrics.snapshot(current_app.extensions["taskkernel"].redis).to_dict())
