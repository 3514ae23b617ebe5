"""Push and pull variables, checkpoint and restore namespaces; the API never unpickles anything."""

import os
import signal

import pytest

from taskkernel.client import ApiError
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(120)


def test_push_and_pull_json_values_over_http(client, notebook):
    status, reply = client.request("PUT", f"/notebooks/{notebook.id}/variables/config",
                                   {"value": {"rate": 0.5, "names": ["a", "b"]}})
    assert status == 200 and reply["type"] == "dict"
    assert notebook.evaluate("config['names'][1]")["outputs"][0]["data"]["text/plain"] == "'b'"
    pulled = client.request("GET", f"/notebooks/{notebook.id}/variables/config")[1]
    assert pulled == {"name": "config", "json": True, "value": {"rate": 0.5, "names": ["a", "b"]}}


def test_pulling_something_that_is_not_json_gives_its_repr(client, notebook):
    notebook.evaluate("s = {1, 2}")
    pulled = client.request("GET", f"/notebooks/{notebook.id}/variables/s")[1]
    assert pulled["json"] is False and pulled["repr"] == "{1, 2}" and pulled["type"] == "set"


def test_missing_variables_and_bad_names_are_clear_errors(client, notebook):
    with pytest.raises(ApiError) as info:
        client.request("GET", f"/notebooks/{notebook.id}/variables/nothing")
    assert info.value.status == 404 and info.value.code == "variable_not_found"
    with pytest.raises(ApiError) as info:
        client.request("PUT", f"/notebooks/{notebook.id}/variables/1abc", {"value": 1})
    assert info.value.status == 400


def test_the_client_pushes_and_pulls_objects_only_dill_can_carry(notebook):
    factor = 3
    notebook.push(scale=lambda x: x * factor, point=complex(1, 2))
    assert notebook.evaluate("scale(point)")["outputs"][0]["data"]["text/plain"] == "(3+6j)"
    notebook.evaluate("def offset(x):\n    return x + 100\nresults = [offset(i) for i in range(3)]")
    offset = notebook.pull("offset")
    assert offset(1) == 101 and notebook.pull("results") == [100, 101, 102]


def test_a_push_queued_behind_a_cell_lands_in_order(notebook):
    notebook.evaluate("import time; time.sleep(0.5); order = ['cell']", wait=False)
    notebook.push(order_after=1)
    assert notebook.evaluate("order")["outputs"][0]["data"]["text/plain"] == "['cell']"


def test_checkpoint_reports_what_it_saved_and_skipped_then_restore_brings_values_back(notebook):
    notebook.evaluate("import socket, numpy\n"
                      "data = {'a': [1, 2, 3]}\n"
                      "square = lambda x: x * x\n"
                      "gen = (i for i in range(3))\n"
                      "sock = socket.socket()\n"
                      "arr = numpy.arange(5)")
    report = notebook.checkpoint()
    assert {"data", "square", "arr"} <= set(report["saved"])
    assert "gen" in report["skipped"] and "sock" in report["skipped"]
    assert "socket" not in report["saved"], "modules are not checkpointed"
    pid = notebook.record["worker"]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: notebook.refresh()["restarts"] == 1 and notebook.record["worker"], 15, "a fresh worker")
    assert notebook.evaluate("'data' in globals()")["outputs"][0]["data"]["text/plain"] == "False"
    restored = notebook.restore()
    assert {"data", "square", "arr"} <= set(restored["restored"])
    assert notebook.evaluate("data['a'], square(4), arr.sum()")["outputs"][0]["data"]["text/plain"] == \
        "([1, 2, 3], 16, np.int64(10))"


def test_restore_without_a_checkpoint_is_404(notebook):
    with pytest.raises(ApiError) as info:
        notebook.restore()
    assert info.value.status == 404 and info.value.code == "no_checkpoint"


def test_a_notebook_that_asked_for_it_is_restored_after_its_worker_dies(client):
    status, record = client.request("POST", "/notebooks", {"engine": "python", "restore_on_restart": True,
                                                           "checkpoint_every_cell": True})
    nb = client.notebook(record["id"])
    try:
        assert record["restore_on_restart"] and record["checkpoint_every_cell"]
        nb.evaluate("total = 41")
        nb.evaluate("total += 1")  # each cell is checkpointed after it runs
        died = nb.evaluate("import os; os._exit(1)")
        assert died["error"]["ename"] == "EngineDied"
        after = nb.evaluate("total")
        assert after["outputs"][0]["data"]["text/plain"] == "42"
    finally:
        nb.close()


def test_checkpoints_can_go_to_a_directory(private_service, tmp_path):
    private_service.start_supervisor(pool=1, checkpoint_dir=str(tmp_path / "checkpoints"))
    private_service.start_api()
    with private_service.client().start() as nb:
        nb.evaluate("kept = 'on disk'")
        report = nb.checkpoint()
        assert report["store"].startswith(str(tmp_path))
        assert "kept" in (tmp_path / "checkpoints" / nb.id / "meta.json").read_text()
        nb.write_file("data.txt", b"beside it")  # with its files: beside the namespace, in the same directory
        files = tmp_path / "checkpoints" / f"{nb.id}.files.tar"
        assert nb.checkpoint(include_files=True)["files"]["store"] == str(files) and files.is_file()
    # and both go with the notebook
    wait_for(lambda: not files.exists() and not (tmp_path / "checkpoints" / nb.id).exists(), 15,
             "the notebook's checkpoint to be removed with it")
