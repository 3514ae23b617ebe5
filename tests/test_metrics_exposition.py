"""/metrics as Prometheus users expect it: the process collector, build info, OpenMetrics when the
scraper asks for it, the API's request latency by route and status, heartbeats as timestamps."""

import time
import urllib.request

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

import taskkernel
from taskkernel import ApiError

pytestmark = pytest.mark.timeout(60)

ROUTE = "/api/notebooks/<hexid:notebook_id>"


def fetch(url: str, accept: str | None = None) -> tuple[str, str]:
    request = urllib.request.Request(url + "/metrics", headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers["Content-Type"], response.read().decode()


def samples(url: str) -> dict:
    """{(sample name, frozenset of labels): value} of one scrape in the text format."""
    _, text = fetch(url)
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_the_api_process_reports_itself_and_its_build(service):
    scraped = samples(service.api_url)
    names = {name for name, _ in scraped}
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds",
            "process_start_time_seconds", "python_info"} <= names
    [(labels, value)] = [(dict(labels), v) for (name, labels), v in scraped.items() if name == "taskkernel_build_info"]
    assert value == 1 and labels["version"] == taskkernel.__version__ and labels["python"].count(".") == 2


def test_openmetrics_is_answered_when_the_scraper_asks_for_it(service):
    content_type, text = fetch(service.api_url)
    assert content_type.startswith("text/plain; version=0.0.4")
    content_type, text = fetch(service.api_url, "application/openmetrics-text; version=1.0.0,text/plain;q=0.5")
    assert content_type.startswith("application/openmetrics-text")
    assert text.endswith("# EOF\n")
    families = {family.name for family in parse_openmetrics(text)}
    assert {"taskkernel_cells", "taskkernel_build", "taskkernel_api_request_seconds"} <= families


def test_requests_are_timed_by_route_method_and_status(service, client, notebook):
    before = samples(service.api_url)
    for _ in range(3):
        notebook.refresh()
    with pytest.raises(ApiError):
        client.notebook("f" * 32)
    after = samples(service.api_url)

    def count(status: str, scrape: dict) -> float:
        key = ("taskkernel_api_request_seconds_count", frozenset({"route": ROUTE, "method": "GET", "status": status}.items()))
        return scrape.get(key, 0.0)

    assert count("200", after) - count("200", before) == 3
    assert count("404", after) - count("404", before) == 1
    slowest = ("taskkernel_api_request_seconds_bucket",
               frozenset({"route": ROUTE, "method": "GET", "status": "200", "le": "+Inf"}.items()))
    assert after[slowest] == count("200", after)
    assert not [name for name, labels in after if dict(labels).get("route") == "/metrics"], "scrapes are not timed"


def test_host_heartbeats_are_exported_as_timestamps(service):
    scraped = samples(service.api_url)
    beats = {dict(labels)["host"]: v for (name, labels), v in scraped.items()
             if name == "taskkernel_host_heartbeat_timestamp_seconds"}
    assert "main" in beats
    assert abs(time.time() - beats["main"]) < 10, "a unix time, a second or so old"
