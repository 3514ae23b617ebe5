"""Cells run in the notebook's own persistent namespace, strictly in submission order."""

import time

import pytest

pytestmark = pytest.mark.timeout(90)


def text_result(cell):
    results = [o for o in cell["outputs"] if o["output_type"] == "execute_result"]
    return results[0]["data"]["text/plain"] if results else None


def test_namespace_persists_between_cells_and_is_separate_per_notebook(client):
    with client.start() as first, client.start() as second:
        first.evaluate("a = 12")
        cell = first.evaluate("a + a")
        assert cell["state"] == "done" and cell["status"] == "ok"
        assert text_result(cell) == "24"
        assert cell["execution_count"] == 2
        other = second.evaluate("a + a")
        assert other["status"] == "error"
        assert other["error"]["ename"] == "NameError"


def test_the_readme_example(notebook):
    cell = notebook.evaluate("a = 12\na + a")
    assert cell["outputs"] == [{"output_type": "execute_result", "execution_count": 1,
                                "data": {"text/plain": "24"}, "metadata": {}}]
    assert cell["stdout"] == "" and cell["error"] is None


def test_last_expression_gives_a_result_only_when_not_none(notebook):
    assert text_result(notebook.evaluate("x = 5")) is None
    assert text_result(notebook.evaluate("None")) is None
    assert text_result(notebook.evaluate("print('p')\nx * 2")) == "10"
    assert text_result(notebook.evaluate("for i in range(2):\n    pass")) is None


def test_stdout_and_stderr_are_kept_in_the_cell(notebook):
    cell = notebook.evaluate("import sys\nprint('out')\nprint('err', file=sys.stderr)")
    assert cell["stdout"] == "out\n"
    assert cell["stderr"] == "err\n"
    names = [o["name"] for o in cell["outputs"] if o["output_type"] == "stream"]
    assert names == ["stdout", "stderr"]


def test_output_of_subprocesses_and_threads_is_captured(notebook):
    cell = notebook.evaluate(
        "import os, threading\n"
        "os.system('echo from-shell')\n"
        "t = threading.Thread(target=print, args=('from-thread',)); t.start(); t.join()\n"
    )
    assert "from-shell\n" in cell["stdout"]
    assert "from-thread\n" in cell["stdout"]


def test_an_exception_in_user_code_is_an_error_cell_with_the_users_traceback(notebook):
    cell = notebook.evaluate("def f():\n    return 1 / 0\nf()")
    assert cell["state"] == "done" and cell["status"] == "error"
    error = cell["error"]
    assert error["ename"] == "ZeroDivisionError"
    assert error["evalue"] == "division by zero"
    text = "\n".join(error["traceback"])
    assert '<cell-1>", line 2, in f' in text
    assert "celery" not in text and "taskkernel" not in text, "worker internals are cut off"
    assert cell["outputs"][-1]["output_type"] == "error"


def test_a_syntax_error_is_an_error_cell(notebook):
    cell = notebook.evaluate("def (")
    assert cell["status"] == "error" and cell["error"]["ename"] == "SyntaxError"


def test_fifty_cells_sent_without_waiting_run_in_order(notebook):
    notebook.evaluate("order = []")
    cells = [notebook.evaluate(f"order.append({i})", wait=False) for i in range(50)]
    assert [(c["state"], c["code"]) for c in cells] == [("queued", f"order.append({i})") for i in range(50)], \
        "each is answered at once with the cell it queued"
    assert len({c["id"] for c in cells}) == 50
    last = notebook.wait(cells[-1]["id"], timeout=60)
    assert last["state"] == "done"
    assert text_result(notebook.evaluate("order")) == repr(list(range(50)))
    counts = [notebook.cell(c["id"])["execution_count"] for c in cells]
    assert counts == sorted(counts) and len(set(counts)) == 50


def test_evaluate_without_wait_answers_202_with_a_location(client, notebook):
    status, cell = client.request("POST", f"/notebooks/{notebook.id}/evaluate", {"code": "1 + 1"})
    assert status == 202
    assert (cell["state"], cell["status"], cell["code"]) == ("queued", None, "1 + 1"), "the cell as queued"
    done = notebook.wait(cell["id"])
    assert text_result(done) == "2"
    listed = client.request("GET", f"/notebooks/{notebook.id}/cells")[1]["cells"]
    assert [c["id"] for c in listed] == [cell["id"]]


def test_wait_with_a_timeout_returns_the_running_cell_with_202(client, notebook):
    started = time.monotonic()
    status, cell = client.request("POST", f"/notebooks/{notebook.id}/evaluate",
                                  {"code": "import time; time.sleep(3); 'late'", "wait": True, "timeout": 0.5})
    assert status == 202
    assert time.monotonic() - started < 2.5
    assert cell["state"] in ("queued", "running")
    assert text_result(notebook.wait(cell["id"], timeout=10)) == "'late'"


def test_cells_sent_while_one_runs_queue_behind_it(notebook):
    slow = notebook.evaluate("import time; time.sleep(1); done = 'slow'", wait=False)
    fast = notebook.evaluate("done", wait=False)
    assert text_result(notebook.wait(fast["id"], timeout=20)) == "'slow'"
    assert notebook.cell(slow["id"])["completed"] <= notebook.cell(fast["id"])["started"]


@pytest.mark.parametrize("text", ["x" * 10, "x" * 100_000, "h\u00e9llo \u2713 \U0001F600", "\x1b[31mred\x00\x7f\\\"/"])
def test_a_waiting_caller_gets_the_cell_exactly_as_it_is_stored(notebook, text):
    """Small records ride on the execute_reply stream entry, large ones are read back: same answer."""
    cell = notebook.evaluate(f"print({text!r})\n'done'")
    assert cell["state"] == "done" and cell["status"] == "ok"
    assert cell["stdout"] == text + "\n"
    assert text_result(cell) == "'done'"
    assert cell == notebook.cell(cell["id"])
