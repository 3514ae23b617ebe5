"""/metrics (Prometheus text) and /api/status read the service's state from Redis at request time."""

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(90)


def scrape(url: str) -> dict:
    """{(sample name, frozenset of labels): value} of one scrape."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_cells_are_counted_by_status_with_their_latency(service, notebook):
    before = scrape(service.api_url)
    assert notebook.evaluate("1 + 1")["status"] == "ok"
    assert notebook.evaluate("import time\ntime.sleep(0.3)")["status"] == "ok"
    assert notebook.evaluate("1 / 0")["status"] == "error"
    after = scrape(service.api_url)

    assert value(after, "taskkernel_cells_total", status="ok") - value(before, "taskkernel_cells_total", status="ok") == 2
    assert value(after, "taskkernel_cells_total", status="error") - \
        value(before, "taskkernel_cells_total", status="error") == 1
    count = value(after, "taskkernel_cell_seconds_count") - value(before, "taskkernel_cell_seconds_count")
    assert count == 3
    assert value(after, "taskkernel_cell_seconds_sum") - value(before, "taskkernel_cell_seconds_sum") >= 0.3
    slow = value(after, "taskkernel_cell_seconds_bucket", le="0.25") - \
        value(before, "taskkernel_cell_seconds_bucket", le="0.25")
    assert slow == 2, "the sleeping cell is above 0.25 s, the two quick ones below"
    assert value(after, "taskkernel_cell_seconds_bucket", le="+Inf") == value(after, "taskkernel_cell_seconds_count")
    assert value(after, "taskkernel_feed_messages") >= 14, "busy, input, (outputs,) reply and idle per cell"


def test_aborted_cells_and_cells_of_a_dead_worker_are_counted_too(service, notebook):
    before = scrape(service.api_url)
    failing = notebook.evaluate("import time\ntime.sleep(0.5)\n1 / 0", wait=False, stop_on_error=True)
    queued = [notebook.evaluate("1", wait=False) for _ in range(2)]
    assert notebook.wait(failing["id"])["status"] == "error"
    assert [notebook.wait(c["id"])["status"] for c in queued] == ["aborted", "aborted"]
    dying = notebook.evaluate("import os\nos._exit(1)")
    assert dying["status"] == "error" and dying["error"]["ename"] == "EngineDied"
    after = scrape(service.api_url)

    assert value(after, "taskkernel_cells_total", status="aborted") - \
        value(before, "taskkernel_cells_total", status="aborted") == 2
    assert value(after, "taskkernel_cells_total", status="error") - \
        value(before, "taskkernel_cells_total", status="error") == 2, "the failing cell and the dead worker's"


def test_notebooks_workers_and_queue_depth_are_shown_as_they_are(service, notebook):
    running = notebook.evaluate("import time\ntime.sleep(30)", wait=False)
    queued = [notebook.evaluate("1", wait=False), notebook.evaluate("2", wait=False)]
    wait_for(lambda: notebook.cell(running["id"])["state"] == "running", 10, "the cell to start")
    try:
        samples = scrape(service.api_url)
        assert value(samples, "taskkernel_queue_depth") >= 2
        assert value(samples, "taskkernel_notebooks", engine="python", state="busy") >= 1
        assert value(samples, "taskkernel_workers", host="main", state="busy") >= 1
        assert ("taskkernel_workers", frozenset({("host", "main"), ("state", "idle")})) in samples
        assert value(samples, "taskkernel_host_up", host="main") == 1

        status = notebook.client.status()
        mine = next(nb for nb in status["notebooks"] if nb["id"] == notebook.id)
        assert mine["state"] == "busy" and mine["pending"] == 2
        assert status["queue_depth"] >= 2
        main = next(h for h in status["hosts"] if h["name"] == "main")
        assert main["alive"] and "python" in main["idle"] and main["notebooks"] >= 1
    finally:
        notebook.interrupt()
    # the notebook is idle for a moment between its cells: wait for the last one, not for "idle"
    assert [notebook.wait(cell["id"], timeout=20)["state"] for cell in queued] == ["done", "done"]
    assert notebook.refresh()["state"] == "idle"
    assert value(scrape(service.api_url), "taskkernel_notebooks", engine="python", state="busy") == 0
