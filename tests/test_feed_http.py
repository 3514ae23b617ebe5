"""The feed over HTTP (Server-Sent Events): late and reconnecting subscribers miss nothing."""

import http.client
import urllib.parse

import pytest

pytestmark = pytest.mark.timeout(90)


def test_a_late_subscriber_gets_the_whole_story_then_the_live_feed(notebook):
    notebook.evaluate("print('before anyone listened')")
    feed = notebook.feed(timeout=10)
    replayed = []
    for msg in feed:
        replayed.append(msg)
        if msg["header"]["msg_type"] == "execute_reply":
            break
    assert any(m["content"].get("text") == "before anyone listened\n" for m in replayed)
    notebook.evaluate("print('live')", wait=False)
    live = []
    for msg in feed:
        live.append(msg)
        if msg["header"]["msg_type"] == "execute_reply":
            break
    assert any(m["content"].get("text") == "live\n" for m in live)
    seqs = [m["seq"] for m in replayed + live]
    assert seqs == list(range(1, len(seqs) + 1)), "from the first message on, no gap and no duplicate"


def test_reconnecting_with_last_event_id_resumes_without_gap_or_duplicate(service, notebook):
    for i in range(5):
        notebook.evaluate(f"print({i})")
    everything = list(notebook.feed(timeout=1))
    cut = len(everything) // 2
    position = everything[cut - 1]["position"]
    parsed = urllib.parse.urlsplit(service.api_url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    conn.request("GET", f"/api/notebooks/{notebook.id}/feed?timeout=1", headers={"Last-Event-ID": position})
    response = conn.getresponse()
    assert response.status == 200 and response.headers["Content-Type"].startswith("text/event-stream")
    ids = [line.split(b":", 1)[1].strip().decode() for line in response.read().splitlines()
           if line.startswith(b"id:")]
    conn.close()
    assert ids == [m["position"] for m in everything[cut:]]


def test_a_bad_last_event_id_is_a_400(service, notebook):
    parsed = urllib.parse.urlsplit(service.api_url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    conn.request("GET", f"/api/notebooks/{notebook.id}/feed", headers={"Last-Event-ID": "yesterday"})
    response = conn.getresponse()
    assert response.status == 400
    conn.close()


def test_feed_streams_beyond_the_limit_are_refused_and_other_calls_still_answer(private_service):
    private_service.start_supervisor(pool=1)
    private_service.start_api(max_feed_subscribers=2)
    client = private_service.client()
    with client.start() as nb:
        parsed = urllib.parse.urlsplit(private_service.api_url)
        streams = []
        try:
            for _ in range(2):
                conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
                conn.request("GET", f"/api/notebooks/{nb.id}/feed?timeout=20")
                assert conn.getresponse().status == 200
                streams.append(conn)
            conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
            conn.request("GET", f"/api/notebooks/{nb.id}/feed?timeout=20")
            refused = conn.getresponse()
            assert refused.status == 503 and b"too_many_subscribers" in refused.read()
            conn.close()
            assert nb.evaluate("1 + 1")["status"] == "ok", "other requests are served meanwhile"
        finally:
            for conn in streams:
                conn.close()


def test_the_client_reads_the_same_feed_from_redis_or_over_http(service, notebook):
    notebook.evaluate("print('both ways')")
    over_http = list(notebook.feed(timeout=1))
    from_redis = list(notebook.feed(timeout=1, redis_url=service.redis_url))
    assert [m["header"]["msg_id"] for m in from_redis] == [m["header"]["msg_id"] for m in over_http]
    assert [m["position"] for m in from_redis] == [m["position"] for m in over_http]
