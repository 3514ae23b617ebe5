"""Notebooks are pinned to dedicated worker processes, listed, shown and deleted over HTTP."""

import re

import pytest

from taskkernel.client import ApiError
from tests.conftest import pid_alive, wait_for

pytestmark = pytest.mark.timeout(60)


def test_create_pins_a_notebook_to_an_idle_worker(client):
    nb = client.start("python")
    try:
        record = nb.record
        assert re.fullmatch(r"[0-9a-f]{32}", record["id"]), "notebook ids carry 128 random bits"
        assert record["engine"] == "python"
        assert record["state"] == "idle"
        assert record["execution_count"] == 0
        assert record["worker"]["pid"] > 0 and pid_alive(record["worker"]["pid"])
    finally:
        nb.close()


def test_list_and_show_notebooks(client, notebook):
    listed = {n["id"] for n in client.notebooks()}
    assert notebook.id in listed
    assert notebook.refresh()["id"] == notebook.id


def test_two_notebooks_run_in_different_worker_processes_and_one_always_in_the_same(client):
    with client.start() as first, client.start() as second:
        pids = [first.evaluate("import os; os.getpid()")["outputs"][0]["data"]["text/plain"] for _ in range(3)]
        other = second.evaluate("import os; os.getpid()")["outputs"][0]["data"]["text/plain"]
        assert len(set(pids)) == 1, "a notebook always runs in the same process"
        assert pids[0] != other, "two notebooks never share a process"
        assert int(pids[0]) == first.record["worker"]["pid"]


def test_delete_stops_the_worker_process_and_later_calls_404(client):
    nb = client.start()
    pid = nb.record["worker"]["pid"]
    nb.evaluate("x = 1")
    nb.close()
    wait_for(lambda: not pid_alive(pid), 10, "the deleted notebook's worker to exit")
    for call in (nb.refresh, lambda: nb.evaluate("x"), lambda: nb.complete("x")):
        with pytest.raises(ApiError) as info:
            call()
        assert info.value.status == 404 and info.value.code == "notebook_not_found"


def test_the_pool_refills_after_notebooks_take_its_workers(service, client):
    notebooks = [client.start() for _ in range(5)]  # more than the pool of 3
    try:
        assert len({nb.record["worker"]["id"] for nb in notebooks}) == 5
        service.wait_idle("main", "python", 3, timeout_s=30)
    finally:
        for nb in notebooks:
            nb.close()


def test_engines_lists_the_engine_files(client):
    engines = {e["name"]: e for e in client.engines()}
    assert "python" in engines
    assert engines["python"]["source"].endswith("engines/python.toml")
