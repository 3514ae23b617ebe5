"""Deadlines: every API call ends by its own deadline, Redis frozen or a worker retired under it."""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.error
import urllib.request

import pytest

from taskkernel.client import ApiError
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(120)


def test_with_redis_frozen_an_evaluate_answers_by_its_own_timeout(frozen_redis_service):
    svc, server = frozen_redis_service
    svc.start_supervisor(pool=1)
    svc.start_api(request_deadline_s=2)
    client = svc.client()
    nb = client.start()
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(ApiError) as info:
            nb.evaluate("1 + 1", wait=True, timeout=3)
        evaluated_s = time.monotonic() - started
        # the submit could not reach Redis: the caller is told, with the cell id it may look up later
        assert info.value.status == 503 and info.value.code == "redis_unavailable"
        started = time.monotonic()
        with pytest.raises(ApiError) as info:
            nb.refresh()
        refreshed_s = time.monotonic() - started
        assert info.value.status == 503
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    print(f"Redis frozen: evaluate(timeout=3) answered in {evaluated_s:.2f} s, GET in {refreshed_s:.2f} s")
    assert evaluated_s < 3 + 1.0, evaluated_s
    assert refreshed_s < 2 + 1.0, refreshed_s
    assert nb.evaluate("1 + 1", timeout=30)["status"] == "ok", "all is well once Redis is back"
    nb.close()


def test_is_complete_during_a_restart_is_answered_by_the_new_worker(private_service):
    private_service.start_supervisor(pool=2)
    private_service.start_api(rpc_timeout_s=20)
    nb = private_service.client().start()
    old_pid = nb.record["worker"]["pid"]
    os.kill(old_pid, signal.SIGSTOP)  # the worker cannot answer: as a worker retired under the request
    answers = []
    asking = threading.Thread(target=lambda: answers.append(nb.is_complete("for x in y:")))
    try:
        asking.start()
        time.sleep(0.5)  # the question is waiting on the stopped worker
        restarted = time.monotonic()
        nb.restart()
        asking.join(timeout=20)
    finally:
        try:
            os.kill(old_pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert answers and answers[0]["status"] == "incomplete"
    assert time.monotonic() - restarted < 5, "answered by the new worker, not after the old one's timeout"
    nb.close()


def test_a_checkpoint_whose_timeout_passed_is_never_run(private_service):
    private_service.start_supervisor(pool=1)
    private_service.start_api()
    nb = private_service.client().start()
    nb.evaluate("kept = 1")
    long_cell = nb.evaluate("import time; time.sleep(3)", wait=False)
    with pytest.raises(ApiError) as info:
        nb.client.request("POST", f"/notebooks/{nb.id}/checkpoint", {"timeout": 0.5})
    assert info.value.status == 504 and "not started after that" in info.value.message
    nb.wait(long_cell["id"], timeout=30)
    time.sleep(0.5)  # the worker reached the checkpoint's message by now, and dropped it
    with pytest.raises(ApiError) as info:
        nb.client.request("POST", f"/notebooks/{nb.id}/restore", {})
    assert info.value.code == "no_checkpoint", "the checkpoint did not run after its caller gave up"
    nb.close()


def test_method_not_allowed_says_which_are(service):
    request = urllib.request.Request(service.api_url + "/api/engines", method="DELETE")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 405
    assert "GET" in info.value.headers["Allow"]
    assert info.value.headers["Content-Type"] == "application/json"
