"""Fan-out: one cell on many notebooks in parallel, results gathered, failures kept per notebook."""

import time

import pytest

from taskkernel.client import ApiError

pytestmark = pytest.mark.timeout(120)


def test_a_cell_fans_out_to_five_notebooks_and_one_failure_stays_its_own(client):
    with client.cluster(5) as cluster:
        assert len(cluster) == 5
        for index, nb in enumerate(cluster.notebooks):
            nb.evaluate(f"index = {index}")

        indexes = cluster.evaluate("index")
        assert list(indexes) == cluster.ids, "results come back in the cluster's order"
        assert [r.value for r in indexes.values()] == [str(i) for i in range(5)], "five separate namespaces"
        assert len({nb.refresh()["worker"]["pid"] for nb in cluster.notebooks}) == 5, "five separate workers"

        results = cluster.evaluate("print('index', index)\n10 / (index - 3)")
        failed = [r for r in results.values() if not r.ok]
        assert [r.notebook_id for r in failed] == [cluster.ids[3]]
        assert failed[0].error["ename"] == "ZeroDivisionError"
        assert failed[0].stdout == "index 3\n"
        assert [r.value for r in results.values() if r.ok] == [str(10 / (i - 3)) for i in (0, 1, 2, 4)]

        started = time.monotonic()
        slept = cluster.evaluate("import time\ntime.sleep(1)")
        assert all(r.ok for r in slept.values())
        assert time.monotonic() - started < 4.0, "the five cells ran side by side, not one after another"
        interrupted = cluster.interrupt()
        assert all(r.ok and r.cell == {"interrupted": None} for r in interrupted.values()), "nothing was running"
        ids = cluster.ids
    remaining = {nb["id"] for nb in client.notebooks()}
    assert not remaining & set(ids), "the cluster deletes the notebooks it started"


def test_an_unreachable_notebook_is_one_failed_result_not_an_exception(client, notebook):
    cluster = client.cluster([notebook, "0" * 32])
    results = cluster.evaluate("6 * 7")
    assert results[notebook.id].ok and results[notebook.id].value == "42"
    missing = results["0" * 32]
    assert not missing.ok and isinstance(missing.exception, ApiError) and missing.exception.status == 404
    assert missing.error["ename"] == "ApiError"
    cluster.close()  # it started none of them: both are left alone
    assert notebook.refresh()["id"] == notebook.id
