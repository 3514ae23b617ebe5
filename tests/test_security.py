"""Who may reach the service: tokens, notebook tokens, networks, Host names, cross-site requests, CORS,
bad bodies."""

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


def test_a_tokenless_api_answers_loopback_host_names_only(private_service):
    url = private_service.start_api()
    port = urllib.parse.urlsplit(url).port
    create = json.dumps({"engine": "python"})
    for host in ("attacker.example", f"attacker.example:{port}", "0.0.0.0", f"localhost.attacker.example:{port}",
                 "127.0.0.1.nip.io", f"127.0.0.1:{port}:1"):
        for method, path, body in (("GET", "/api/notebooks", None), ("GET", "/", None),
                                   ("POST", "/api/notebooks", create)):
            status, data, _ = call(url, method, path, body, {"Host": host, "Content-Type": "application/json"})
            assert (status, data["error"]) == (403, "host_not_allowed"), (host, method, path)
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "127.0.0.2", "localhost", "[::1]"):
        status, data, _ = call(url, "GET", "/api/notebooks", headers={"Host": host})
        assert (status, data) == (200, {"notebooks": []}), host


def test_allowed_hosts_admit_named_hosts_without_a_token(private_service):
    url = private_service.start_api(allowed_hosts="notebooks.internal, Proxy.Example")
    for host in ("notebooks.internal", "notebooks.internal:8443", "proxy.example"):
        assert call(url, "GET", "/api/engines", headers={"Host": host})[0] == 200, host
    status, data, _ = call(url, "GET", "/api/engines", headers={"Host": "other.internal"})
    assert (status, data["error"]) == (403, "host_not_allowed")


def test_with_a_token_any_host_is_served_to_who_gives_it(secured):
    status, _, _ = call(secured.api_url, "GET", "/api/notebooks", headers={"Host": "attacker.example"})
    assert status == 401
    status, data, _ = call(secured.api_url, "GET", "/api/notebooks",
                           headers={"Host": "attacker.example", "Authorization": f"Bearer {TOKEN}"})
    assert (status, data) == (200, {"notebooks": []})


def test_pages_of_other_sites_cannot_create_or_drive_notebooks(private_service):
    private_service.start_supervisor(pool=1)
    url = private_service.start_api(cors_origins="https://notebook.example")
    port = urllib.parse.urlsplit(url).port
    create = json.dumps({"engine": "python"})
    json_body = {"Content-Type": "application/json"}
    for foreign in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Origin": f"http://localhost:{port + 1}", "Sec-Fetch-Site": "same-site"},
                    {"Origin": "null"}, {"Origin": "http://[broken"}):
        status, data, _ = call(url, "POST", "/api/notebooks", create, {**json_body, **foreign})
        assert (status, data["error"]) == (403, "cross_site_request"), foreign
    assert Client(url).notebooks() == [], "a refused create creates nothing"

    # the API's own origin (the web console) and the Python client (no Origin) may
    status, nb, _ = call(url, "POST", "/api/notebooks", create,
                         {**json_body, "Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"})
    assert status == 201
    evil = {**json_body, "Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    for method, path, body in (("POST", f"/api/notebooks/{nb['id']}/evaluate", '{"code": "1"}'),
                               ("POST", f"/api/notebooks/{nb['id']}/restart", "{}"),
                               ("PUT", f"/api/notebooks/{nb['id']}/variables/x", '{"value": 1}'),
                               ("DELETE", f"/api/notebooks/{nb['id']}", None)):
        status, data, _ = call(url, method, path, body, evil)
        assert (status, data["error"]) == (403, "cross_site_request"), (method, path)
    assert Client(url).notebook(nb["id"]).cells() == [], "no cell was queued"
    # reading is not refused: without CORS headers the browser keeps the answer from the page
    status, _, headers = call(url, "GET", "/api/notebooks", headers=evil)
    assert status == 200 and "Access-Control-Allow-Origin" not in headers

    # a configured CORS origin still works, preflight and all
    allowed = {**json_body, "Origin": "https://notebook.example", "Sec-Fetch-Site": "cross-site"}
    status, _, headers = call(url, "OPTIONS", "/api/notebooks",
                              headers={**allowed, "Access-Control-Request-Method": "POST"})
    assert status == 204 and headers["Access-Control-Allow-Origin"] == "https://notebook.example"
    status, other, headers = call(url, "POST", "/api/notebooks", create, allowed)
    assert status == 201 and headers["Access-Control-Allow-Origin"] == "https://notebook.example"
    for notebook_id in (nb["id"], other["id"]):
        assert call(url, "DELETE", f"/api/notebooks/{notebook_id}", headers=allowed)[0] == 204


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
