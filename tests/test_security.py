"""Who may reach the service: tokens, notebook tokens, networks, CORS, bad bodies."""

import http.client
import json
import urllib.parse

import pytest

from taskkernel.client import ApiError, Client

pytestmark = pytest.mark.timeout(120)

TOKEN = "s3cret-service-token"


def call(url, method, path, body=None, headers=None):
    parsed = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, (json.loads(data) if data and data[:1] in b"{[" else data), response.headers


@pytest.fixture
def secured(private_service):
    private_service.start_supervisor(pool=2)
    private_service.start_api(token=TOKEN, cors_origins="https://notebook.example")
    return private_service


def test_every_call_needs_the_service_token(secured):
    status, data, _ = call(secured.api_url, "GET", "/api/notebooks")
    assert status == 401 and data["error"] == "unauthorized"
    status, _, _ = call(secured.api_url, "GET", "/api/notebooks", headers={"Authorization": "Bearer wrong"})
    assert status == 401
    status, data, _ = call(secured.api_url, "GET", "/api/notebooks", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and data == {"notebooks": []}


def test_a_notebook_token_opens_that_notebook_alone(secured):
    admin = Client(secured.api_url, token=TOKEN)
    first, second = admin.start(), admin.start()
    try:
        assert first.record["token"] and first.record["token"] != second.record["token"]
        user = Client(secured.api_url, token=first.record["token"])
        mine = user.notebook(first.id)
        assert mine.evaluate("40 + 2")["outputs"][0]["data"]["text/plain"] == "42"
        assert any(m["header"]["msg_type"] == "execute_reply" for m in mine.feed(timeout=1))
        for forbidden in (lambda: user.notebook(second.id), user.notebooks, lambda: user.start()):
            with pytest.raises(ApiError) as info:
                forbidden()
            assert info.value.status == 401
        # knowing the id alone is not enough
        status, _, _ = call(secured.api_url, "POST", f"/api/notebooks/{first.id}/evaluate",
                            json.dumps({"code": "1"}), {"Content-Type": "application/json"})
        assert status == 401
        status, _, _ = call(secured.api_url, "GET", f"/api/notebooks/{first.id}/feed?timeout=1")
        assert status == 401
        status, _, _ = call(secured.api_url, "GET",
                            f"/api/notebooks/{first.id}/feed?timeout=1&token={first.record['token']}")
        assert status == 200, "EventSource cannot send headers: the feed takes ?token="
    finally:
        first.close()
        second.close()


def test_cors_answers_allowed_origins_only(secured):
    headers = {"Origin": "https://notebook.example", "Access-Control-Request-Method": "POST"}
    status, _, response_headers = call(secured.api_url, "OPTIONS", "/api/notebooks", headers=headers)
    assert status == 204
    assert response_headers["Access-Control-Allow-Origin"] == "https://notebook.example"
    headers["Origin"] = "https://evil.example"
    _, _, response_headers = call(secured.api_url, "OPTIONS", "/api/notebooks", headers=headers)
    assert "Access-Control-Allow-Origin" not in response_headers


def test_denied_networks_get_403(private_service):
    private_service.start_api(deny_networks="127.0.0.0/8")
    status, data, _ = call(private_service.api_url, "GET", "/api/engines")
    assert status == 403 and data["error"] == "forbidden"


def test_allow_list_admits_listed_networks(private_service):
    private_service.start_api(allow_networks="10.0.0.0/8, 127.0.0.1/32")
    assert call(private_service.api_url, "GET", "/api/engines")[0] == 200


def test_bodies_too_large_wrong_type_or_malformed(secured):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    big = json.dumps({"engine": "x" * 2_000_000})
    status, data, _ = call(secured.api_url, "POST", "/api/notebooks", big, {**auth, "Content-Type": "application/json"})
    assert status == 413 and data["error"] == "request_too_large"
    status, data, _ = call(secured.api_url, "POST", "/api/notebooks", '{"engine": "python"}',
                           {**auth, "Content-Type": "text/plain"})
    assert status == 415 and data["error"] == "unsupported_media_type"
    status, data, _ = call(secured.api_url, "POST", "/api/notebooks", '{"engine": 3}',
                           {**auth, "Content-Type": "application/json"})
    assert status == 400 and data["field"] == "engine"


def test_a_pickle_sent_to_the_api_is_never_loaded(secured, tmp_path):
    import pickle

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    auth = {"Authorization": f"Bearer {TOKEN}"}
    for content_type in ("application/python-pickle", "application/octet-stream", "application/json"):
        status, _, _ = call(secured.api_url, "POST", "/api/notebooks", pickle.dumps(Exploit()),
                            {**auth, "Content-Type": content_type})
        assert status in (400, 415)
    assert not marker.exists()
