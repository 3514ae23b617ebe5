"""The OpenAPI document is the API's request validation: every route is described, and every
field of every request body is checked by the schema the document shows, with the limits the
running API enforces (`invalid_field` naming the field)."""

import json
import urllib.request

import pytest

from taskkernel import ApiError
from taskkernel.api import create_app
from taskkernel.api.validation import openapi_path
from taskkernel.settings import load_settings

pytestmark = pytest.mark.timeout(60)

SOME_ID = "0" * 32
WRONG = {"string": 12, "number": "12", "integer": 1.5, "boolean": "yes", "object": [1]}


def served_document(url: str) -> dict:
    with urllib.request.urlopen(url + "/api/openapi.json") as response:
        return json.load(response)


def concrete(path: str) -> str:
    return (path.replace("{notebook_id}", SOME_ID).replace("{cell_id}", SOME_ID)
            .replace("{name}", "x").replace("{engine}", "python"))


def refused_field(client, method: str, path: str, body: dict) -> str:
    with pytest.raises(ApiError) as info:
        client.request(method, concrete(path).removeprefix("/api"), body)
    assert (info.value.status, info.value.code) == (400, "invalid_field"), info.value.message
    return info.value.details["field"]


def test_every_route_of_the_app_is_in_the_document(redis_server):
    app = create_app(load_settings(redis_url=redis_server.url))
    described = {(path, method.upper()) for path, ops in _document_of(app)["paths"].items() for method in ops}
    routes = {(openapi_path(rule.rule), method) for rule in app.url_map.iter_rules()
              if rule.endpoint != "console.static" for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert routes - described == set(), "routes the document does not describe"
    assert described - routes == set(), "operations the app does not serve"


def _document_of(app) -> dict:
    with app.test_request_context():
        from taskkernel.api import openapi

        return openapi.document(app.extensions["taskkernel"].settings)


def test_every_body_field_is_checked_by_its_schema(service, client):
    document = served_document(service.api_url)
    checked = 0
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            schema = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if schema is None:
                continue
            required = {name: _valid(schema["properties"][name]) for name in schema.get("required", [])}
            assert refused_field(client, method.upper(), path, {**required, "no_such_field": 1}) == "no_such_field"
            for name in schema.get("required", []):
                assert refused_field(client, method.upper(), path, {k: v for k, v in required.items()
                                                                   if k != name}) == name
            for name, prop in schema["properties"].items():
                if prop.get("type") in WRONG:
                    body = {**required, name: WRONG[prop["type"]]}
                    assert refused_field(client, method.upper(), path, body) == name, (path, name)
                    checked += 1
    assert checked >= 15


def _valid(prop: dict):
    if prop.get("enum"):
        return prop["enum"][0]
    return {"string": "1", "number": 1, "integer": 1, "boolean": True, "object": {}}.get(prop.get("type"), "1")


def test_limits_follow_the_running_apis_settings(private_service):
    url = private_service.start_api(max_wait_timeout_s=7)
    document = served_document(url)
    for op in ("evaluate", "checkpoint", "restore"):
        schema = document["paths"][f"/api/notebooks/{{notebook_id}}/{op}"]["post"]["requestBody"]
        assert schema["content"]["application/json"]["schema"]["properties"]["timeout"]["maximum"] == 7
        client = private_service.client()
        with pytest.raises(ApiError) as info:
            client.request("POST", f"/notebooks/{SOME_ID}/{op}", {"code": "1", "timeout": 7.5} if op == "evaluate"
                           else {"timeout": 7.5})
        assert info.value.details["field"] == "timeout" and "7" in info.value.message
        with pytest.raises(ApiError) as missing:  # within the limit: valid, so the notebook is looked up
            client.request("POST", f"/notebooks/{SOME_ID}/{op}", {"code": "1", "timeout": 6.5} if op == "evaluate"
                           else {"timeout": 6.5})
        assert missing.value.status == 404


def test_limits_the_schema_cannot_say_are_documented_and_enforced(client, notebook):
    document = served_document(client.url)
    complete = document["paths"]["/api/notebooks/{notebook_id}/complete"]["post"]
    assert "len(code)" in complete["requestBody"]["content"]["application/json"]["schema"]["properties"][
        "cursor_pos"]["description"]
    with pytest.raises(ApiError) as info:
        notebook.complete("abc", cursor_pos=4)
    assert info.value.details["field"] == "cursor_pos"
    variable = document["paths"]["/api/notebooks/{notebook_id}/variables/{name}"]["put"]
    [name] = [p for p in variable["parameters"] if p["name"] == "name"]
    assert "identifier" in name["description"]
    with pytest.raises(ApiError) as bad_name:
        client.request("PUT", f"/notebooks/{notebook.id}/variables/1x", {"value": 1})
    assert bad_name.value.details["field"] == "name"


def test_an_integral_number_for_an_integer_field_is_taken_as_that_integer(client, notebook):
    notebook.evaluate("import math")
    reply = client.request("POST", f"/notebooks/{notebook.id}/complete", {"code": "math.sq", "cursor_pos": 7.0})[1]
    assert reply["matches"] == ["sqrt"] and reply["cursor_end"] == 7
