"""Bad requests get a JSON error with a stable code and the right HTTP status."""

import http.client
import json
import urllib.parse

import pytest

pytestmark = pytest.mark.timeout(60)


def raw(service, method, path, body=None, content_type="application/json"):
    parsed = urllib.parse.urlsplit(service.api_url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    headers = {"Content-Type": content_type} if body is not None else {}
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    data = json.loads(response.read())
    conn.close()
    return response.status, data


@pytest.mark.parametrize("method,path", [
    ("GET", "/api/notebooks/0123456789abcdef0123456789abcdef"),
    ("POST", "/api/notebooks/0123456789abcdef0123456789abcdef/evaluate"),
    ("DELETE", "/api/notebooks/0123456789abcdef0123456789abcdef"),
])
def test_unknown_notebook_is_404(service, method, path):
    body = json.dumps({"code": "1"}) if method == "POST" else None
    status, data = raw(service, method, path, body)
    assert status == 404 and data["error"] == "notebook_not_found"
    assert "0123456789abcdef0123456789abcdef" in data["message"]


def test_unknown_cell_is_404(service, notebook):
    status, data = raw(service, "GET", f"/api/notebooks/{notebook.id}/cells/{'0' * 32}")
    assert status == 404 and data["error"] == "cell_not_found"


@pytest.mark.parametrize("path", ["/api/notebooks/nope", "/api/notebooks/../engines",
                                  "/api/notebooks/0123456789ABCDEF0123456789ABCDEF/evaluate",
                                  "/api/notebooks/%s/cells/x'--" % ("a" * 32)])
def test_ids_that_are_not_well_formed_are_404(service, path):
    status, data = raw(service, "GET", path)
    assert status in (404, 405) and data["error"] in ("not_found", "method_not_allowed")


def test_a_cell_of_another_notebook_is_404(service, client, notebook):
    cell = notebook.evaluate("1")
    with client.start() as other:
        status, data = raw(service, "GET", f"/api/notebooks/{other.id}/cells/{cell['id']}")
    assert status == 404 and data["error"] == "cell_not_found"


@pytest.mark.parametrize("body,code,field", [
    ("{not json", "invalid_json", None),
    ("[1, 2]", "invalid_json", None),
    ("{}", "invalid_field", "code"),
    ('{"code": 5}', "invalid_field", "code"),
    ('{"code": "1", "wait": "yes"}', "invalid_field", "wait"),
    ('{"code": "1", "timeout": -1}', "invalid_field", "timeout"),
    ('{"code": "1", "colour": "red"}', "invalid_field", "colour"),
])
def test_malformed_evaluate_requests_are_400(service, notebook, body, code, field):
    status, data = raw(service, "POST", f"/api/notebooks/{notebook.id}/evaluate", body)
    assert status == 400 and data["error"] == code
    if field:
        assert data["field"] == field and repr(field) in data["message"]


def test_unknown_engine_is_400(service):
    status, data = raw(service, "POST", "/api/notebooks", json.dumps({"engine": "cobol"}))
    assert status == 400 and data["error"] == "unknown_engine"
    assert "python" in data["message"], "the message lists the engines there are"


def test_unknown_route_and_method_are_json_errors(service):
    assert raw(service, "GET", "/api/nothing-here") == (404, raw(service, "GET", "/api/nothing-here")[1])
    status, data = raw(service, "GET", "/api/nothing-here")
    assert data["error"] == "not_found"
    status, data = raw(service, "PUT", "/api/notebooks")
    assert status == 405 and data["error"] == "method_not_allowed"


def test_an_error_in_user_code_is_not_an_api_error(notebook, client):
    status, cell = client.request("POST", f"/notebooks/{notebook.id}/evaluate", {"code": "raise ValueError('x')",
                                                                                "wait": True})
    assert status == 200 and cell["status"] == "error" and cell["error"]["ename"] == "ValueError"


def test_no_free_worker_within_the_bounded_wait_is_503(private_service):
    private_service.start_api(assign_timeout_s=0.5)  # no supervisor: no worker will ever be idle
    status, data = raw(private_service, "POST", "/api/notebooks", json.dumps({"engine": "python"}))
    assert status == 503 and data["error"] == "no_worker_available"


def test_a_body_over_max_request_bytes_is_413_naming_the_limit(service, notebook):
    # 900 KB of code as JSON fits the default 1 MiB; the same code with a newline per character
    # does not once JSON-escaped (each newline is 2 bytes), and the answer says which limit it was
    path = f"/api/notebooks/{notebook.id}/evaluate"
    status, cell = raw(service, "POST", path, json.dumps({"code": "x = 1\n#" + "y" * 900_000, "wait": True}))
    assert status == 200 and cell["status"] == "ok", cell
    status, data = raw(service, "POST", path, json.dumps({"code": "#" + "\n" * 600_000}))
    assert (status, data["error"], data["max_request_bytes"]) == (413, "request_too_large", 1024 * 1024)
    assert "TASKKERNEL_MAX_REQUEST_BYTES" in data["message"] and data["content_length"] > 1024 * 1024
