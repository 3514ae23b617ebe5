"""Notebooks are pinned to dedicated worker processes, listed, shown and deleted over HTTP."""

import re
import time

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
        # (engines sit in pid namespaces of their own: the address of a module object tells processes apart)
        identity = "import os, sys; (os.getpid(), id(sys), open('/proc/self/stat').read().split()[21])"
        seen = [first.evaluate(identity)["outputs"][0]["data"]["text/plain"] for _ in range(3)]
        other = second.evaluate(identity)["outputs"][0]["data"]["text/plain"]
        assert len(set(seen)) == 1, "a notebook always runs in the same process"
        assert seen[0] != other, "two notebooks never share a process"
        assert first.record["worker"]["pid"] != second.record["worker"]["pid"]


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


def test_a_notebook_whose_lease_is_not_renewed_is_deleted_and_its_worker_stopped(client):
    """A client that vanishes without deleting its notebook does not keep a worker forever."""
    kept, dropped = client.start("python", lease_s=2), client.start("python", lease_s=2)
    try:
        assert dropped.record["lease_s"] == 2 and dropped.record["lease_until"]
        dropped_pid = dropped.record["worker"]["pid"]
        kept.evaluate("x = 1")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # renewed every 0.5 s for 5 s: more than two leases
            renewed = kept.renew_lease()
            time.sleep(0.5)
        assert renewed["lease_until"] > kept.record["created"]
        assert kept.evaluate("x + 1")["outputs"][0]["data"]["text/plain"] == "2", "a renewed notebook lives on"
        with pytest.raises(ApiError) as gone:
            dropped.refresh()
        assert gone.value.status == 404
        wait_for(lambda: not pid_alive(dropped_pid), 10, "the expired notebook's worker to stop")
        with pytest.raises(ApiError) as late:
            dropped.renew_lease()
        assert late.value.status == 404
    finally:
        kept.close()


def test_leases_are_optional_and_checked(client, notebook):
    assert notebook.record["lease_s"] is None and notebook.record["lease_until"] is None
    with pytest.raises(ApiError) as none:
        notebook.renew_lease()
    assert none.value.status == 409 and none.value.code == "no_lease"
    for bad in (0, -1, 10 ** 9, "60"):
        with pytest.raises(ApiError) as refused:
            client.request("POST", "/notebooks", {"engine": "python", "lease_s": bad})
        assert refused.value.status == 400 and refused.value.code == "invalid_field"
