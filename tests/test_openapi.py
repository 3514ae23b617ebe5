"""The API is described by /api/openapi.json, and schemathesis finds no 500 and no response that
contradicts the document when it throws generated requests at a live server."""

import json
import urllib.request

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def test_every_route_is_described(service):
    with urllib.request.urlopen(service.api_url + "/api/openapi.json") as response:
        document = json.load(response)
    assert document["openapi"].startswith("3.")
    described = {(path, method.upper()) for path, ops in document["paths"].items() for method in ops}
    for expected in [("/api/notebooks", "POST"), ("/api/notebooks/{notebook_id}/evaluate", "POST"),
                     ("/api/notebooks/{notebook_id}/feed", "GET"), ("/api/engines", "GET"),
                     ("/api/notebooks/{notebook_id}/cells/{cell_id}", "GET")]:
        assert expected in described


def test_schemathesis_finds_no_server_errors_and_no_undocumented_responses(private_service):
    # imported here: schemathesis and hypothesis take seconds to import, and every xdist worker
    # collects this module (their pytest plugins are off in addopts: nothing else needs them)
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

    private_service.start_supervisor(pool=2, max_workers=6)  # generated pool resizes stay small
    private_service.start_api(assign_timeout_s=0.5, rpc_timeout_s=2, max_wait_timeout_s=5)
    schema = schemathesis.openapi.from_url(private_service.api_url + "/api/openapi.json")
    failures = []
    ran = 0
    calls = []
    for operation in schema.get_all_operations():
        operation = operation.ok()
        if operation.path.endswith("/feed"):
            continue  # an endless event stream; covered by test_feed_http.py

        @settings(max_examples=15, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case):
            if case.body and isinstance(case.body, dict) and "timeout" in case.body:
                case.body["timeout"] = min(float(case.body["timeout"] or 0), 1.0) \
                    if isinstance(case.body["timeout"], (int, float)) and not isinstance(case.body["timeout"], bool) \
                    else case.body["timeout"]
            response = case.call(base_url=private_service.api_url, timeout=30)
            calls.append(response.status_code)
            assert response.status_code != 500, f"500 for {case.method} {case.formatted_path}: {response.text}"
            # a 503 (no idle worker within the short wait) or 504 is documented, not a crash
            case.validate_response(response, checks=[status_code_conformance, response_schema_conformance])

        try:
            check()
            ran += 1
        except Exception as exc:  # collect every operation's failure, then report them together
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert ran >= 10 and len(calls) >= 100
    assert {200, 400, 404} <= set(calls), "valid and invalid requests were both generated"
    assert not failures, "\n\n".join(failures)
