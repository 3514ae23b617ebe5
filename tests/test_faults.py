"""Faults: Redis restarts, API restarts and killed workers never leave a caller hanging or lose results."""

import os
import signal
import time

import pytest

from taskkernel.client import ApiError
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(180)


def test_a_redis_restart_loses_no_cell_and_everything_reconnects(persistent_service):
    svc, server = persistent_service
    svc.start_supervisor(pool=2)
    svc.start_api()
    nb = svc.client().start()
    nb.evaluate("x = 1")
    in_flight = nb.evaluate("import time\ntime.sleep(3)\nx += 1\nprint('survived')\nx", wait=False)
    wait_for(lambda: nb.cell(in_flight["id"])["state"] == "running", 10, "the cell to start")
    server.stop(keep_data=True)
    with pytest.raises(ApiError) as info:
        nb.refresh()
    assert info.value.status == 503 and info.value.code == "redis_unavailable"
    time.sleep(1.5)
    server.start()
    cell = nb.wait(in_flight["id"], timeout=60)
    assert cell["state"] == "done", "the cell in flight was neither finished nor failed"
    assert cell["status"] == "ok" and cell["stdout"] == "survived\n"
    after = nb.evaluate("x", timeout=30)
    assert after["outputs"][0]["data"]["text/plain"] == "2", "the namespace is untouched"
    with svc.client().start() as other:  # the warm pool still serves new notebooks
        assert other.evaluate("1 + 1")["status"] == "ok"
    nb.close()


def test_an_api_restart_leaves_notebooks_and_namespaces_untouched(private_service):
    private_service.start_supervisor(pool=1)
    private_service.start_api()
    nb = private_service.client().start()
    nb.evaluate("kept = [1, 2, 3]")
    private_service.stop_process(private_service.api_process)
    private_service.start_api()
    again = private_service.client().notebook(nb.id)
    assert again.evaluate("kept")["outputs"][0]["data"]["text/plain"] == "[1, 2, 3]"
    again.close()


def test_a_worker_killed_from_outside_is_reported_to_the_waiting_caller(private_service):
    private_service.start_supervisor(pool=2)
    private_service.start_api()
    api = private_service.client()
    nb = api.start()
    pid = nb.record["worker"]["pid"]
    cell = nb.evaluate("import time; time.sleep(60)", wait=False)
    wait_for(lambda: nb.cell(cell["id"])["state"] == "running", 10, "the cell to start")
    os.kill(pid, signal.SIGKILL)
    done = nb.wait(cell["id"], timeout=10)
    assert done["error"]["ename"] == "EngineDied" and "SIGKILL" in done["error"]["evalue"]
    record = nb.refresh()
    assert record["restarts"] == 1 and record["worker"]["pid"] != pid
    assert nb.evaluate("1 + 1")["status"] == "ok"
    nb.close()
