"""A running cell behaves as a Jupyter user expects: live output, interrupt, restart, rich output."""

import base64
import threading
import time

import pytest

from tests.conftest import pid_alive, wait_for

pytestmark = pytest.mark.timeout(90)


def types_of(cell):
    return [o["output_type"] for o in cell["outputs"]]


def test_output_reaches_the_feed_while_the_cell_runs(notebook):
    feed = notebook.feed(timeout=15)
    seen = {}

    def watch():
        for msg in feed:
            if msg["header"]["msg_type"] == "stream":
                seen.setdefault(msg["content"]["text"].strip(), time.monotonic())
            if msg["header"]["msg_type"] == "execute_reply":
                return

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    time.sleep(0.3)
    sent = time.monotonic()
    notebook.evaluate("import time\nprint('start')\ntime.sleep(3)\nprint('end')", wait=False)
    thread.join(20)
    assert seen["start"] - sent < 1.0, "the first line arrives long before the cell ends"
    assert seen["end"] - seen["start"] > 2.5


def test_a_hundred_thousand_lines_all_arrive_in_far_fewer_publishes(notebook):
    cell = notebook.evaluate("for i in range(100_000):\n    print(i)", timeout=60)
    assert cell["status"] == "ok"
    assert cell["stdout"] == "".join(f"{i}\n" for i in range(100_000))
    streams = [m for m in notebook.feed(timeout=1) if m["header"]["msg_type"] == "stream"]
    assert "".join(m["content"]["text"] for m in streams) == cell["stdout"]
    assert len(streams) < 200, f"{len(streams)} stream messages for 100,000 lines"


@pytest.mark.parametrize("code", ["while True:\n    pass", "import time\ntime.sleep(1000)"])
def test_interrupt_stops_a_busy_loop_or_a_sleep_and_keeps_the_namespace(notebook, code):
    notebook.evaluate("kept = 'still here'")
    running = notebook.evaluate(code, wait=False)
    queued = notebook.evaluate("kept", wait=False)
    wait_for(lambda: notebook.cell(running["id"])["state"] == "running", 10, "the cell to start")
    time.sleep(0.2)
    asked = time.monotonic()
    assert notebook.interrupt()["interrupted"] == running["id"]
    cell = notebook.wait(running["id"], timeout=10)
    assert time.monotonic() - asked < 2.0
    assert cell["status"] == "error" and cell["error"]["ename"] == "KeyboardInterrupt"
    assert notebook.wait(queued["id"])["outputs"][0]["data"]["text/plain"] == "'still here'"


def test_an_interrupt_that_comes_while_the_engine_still_compiles_the_cell_is_kept(notebook):
    """The cell is running (claimed) but its code has not begun: the interrupt waits for it."""
    code = "x = 0\n" * 60_000 + "import time\ntime.sleep(60)"  # seconds of parsing and compiling first
    running = notebook.evaluate(code, wait=False)
    wait_for(lambda: notebook.cell(running["id"])["state"] == "running", 10, "the cell to start")
    assert notebook.interrupt()["interrupted"] == running["id"]
    cell = notebook.wait(running["id"], timeout=40)  # a lost interrupt would leave it sleeping 60 s
    assert cell["status"] == "error" and cell["error"]["ename"] == "KeyboardInterrupt", cell["error"]
    assert notebook.evaluate("'next'")["outputs"][0]["data"]["text/plain"] == "'next'", "no interrupt left over"


def test_interrupt_with_no_running_cell_is_a_harmless_no_op(notebook):
    assert notebook.interrupt() == {"interrupted": None}
    assert notebook.evaluate("1 + 1")["status"] == "ok"


def test_restart_gives_a_fresh_namespace_and_aborts_queued_cells(notebook):
    notebook.evaluate("x = 1")
    old_pid = notebook.record["worker"]["pid"]
    running = notebook.evaluate("import time; time.sleep(30)", wait=False)
    queued = [notebook.evaluate(f"x += {i}", wait=False) for i in range(3)]
    wait_for(lambda: notebook.cell(running["id"])["state"] == "running", 10, "the cell to start")
    record = notebook.restart()
    assert record["execution_count"] == 0 and record["worker"]["pid"] != old_pid
    assert record["restarts"] == 1
    for cell in queued:
        assert notebook.cell(cell["id"])["status"] == "aborted"
    assert notebook.cell(running["id"])["status"] == "error"
    fresh = notebook.evaluate("'x' in globals()")
    assert fresh["outputs"][0]["data"]["text/plain"] == "False"
    assert fresh["execution_count"] == 1
    wait_for(lambda: not pid_alive(old_pid), 10, "the old worker to stop")
    states = [m["content"]["execution_state"] for m in notebook.feed(timeout=1)
              if m["header"]["msg_type"] == "status"]
    assert "restarting" in states and states.index("restarting") < len(states) - 1


def test_objects_with_repr_methods_give_mime_bundles(notebook):
    cell = notebook.evaluate(
        "class Rich:\n"
        "    def _repr_html_(self): return '<b>bold</b>'\n"
        "    def _repr_markdown_(self): return '**bold**'\n"
        "    def _repr_png_(self): return b'\\x89PNG fake'\n"
        "    def _repr_json_(self): return {'a': 1}\n"
        "    def __repr__(self): return 'Rich()'\n"
        "display(Rich())\n"
        "Rich()"
    )
    assert types_of(cell) == ["display_data", "execute_result"]
    for output in cell["outputs"]:
        data = output["data"]
        assert data["text/html"] == "<b>bold</b>" and data["text/markdown"] == "**bold**"
        assert base64.b64decode(data["image/png"]) == b"\x89PNG fake"
        assert data["application/json"] == {"a": 1} and data["text/plain"] == "Rich()"


def test_matplotlib_figures_arrive_as_png_without_show(notebook):
    cell = notebook.evaluate("import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nx = 1", timeout=60)
    assert cell["status"] == "ok", cell["error"]
    images = [o for o in cell["outputs"] if o["output_type"] == "display_data"]
    assert len(images) == 1
    assert base64.b64decode(images[0]["data"]["image/png"]).startswith(b"\x89PNG")
    backend = notebook.evaluate("import matplotlib; matplotlib.get_backend()")
    assert backend["outputs"][0]["data"]["text/plain"].lower() == "'agg'"


def test_input_fails_at_once_instead_of_hanging(notebook):
    """Without allow_stdin, input() raises as on ipykernel (tests/test_stdin.py has the round trip)."""
    started = time.monotonic()
    cell = notebook.evaluate("input('name? ')", timeout=10)
    assert time.monotonic() - started < 5
    assert cell["status"] == "error" and cell["error"]["ename"] == "StdinNotImplementedError"
    assert notebook.evaluate("import sys; sys.stdin.read()")["status"] == "error"


@pytest.mark.parametrize("fatal", ["import os\nos._exit(1)", "import ctypes\nctypes.string_at(0)"])
def test_a_worker_that_dies_fails_the_cell_and_the_notebook_gets_a_fresh_worker(notebook, fatal):
    notebook.evaluate("x = 1")
    old_pid = notebook.record["worker"]["pid"]
    started = time.monotonic()
    fatal_cell = notebook.evaluate(fatal, wait=False)
    behind = notebook.evaluate("x", wait=False)
    cell = notebook.wait(fatal_cell["id"], timeout=15)
    assert time.monotonic() - started < 5
    assert cell["status"] == "error" and cell["error"]["ename"] == "EngineDied"
    # the cell sent behind it was either queued before the death was known (aborted with the queue) or
    # arrived after it and waited for the fresh worker (its namespace has no x): never the dead engine
    behind_cell = notebook.wait(behind["id"])
    assert behind_cell["status"] == "aborted" or behind_cell["error"]["ename"] == "NameError", behind_cell
    wait_for(lambda: notebook.refresh()["worker"], 15, "a fresh worker (the pool may be refilling)")
    record = notebook.record
    assert record["worker"]["pid"] != old_pid and record["restarts"] == 1
    after = notebook.evaluate("'x' in globals()")
    assert after["status"] == "ok" and after["outputs"][0]["data"]["text/plain"] == "False"


def test_a_waiting_caller_gets_the_death_as_its_answer(client, notebook):
    status, cell = client.request("POST", f"/notebooks/{notebook.id}/evaluate",
                                  {"code": "import os; os._exit(3)", "wait": True, "timeout": 20})
    assert status == 200 and cell["error"]["ename"] == "EngineDied"
    assert "exit code 3" in cell["error"]["evalue"]


def test_complete_inspect_and_is_complete_answer_while_a_long_cell_runs(notebook):
    notebook.evaluate("import math")
    running = notebook.evaluate("import time; time.sleep(60)", wait=False)
    wait_for(lambda: notebook.cell(running["id"])["state"] == "running", 10, "the cell to start")
    # the first of each warms jedi / IPython's transformer up in the engine (seconds, not a minute)
    assert "sqrt" in notebook.complete("math.sq")["matches"]
    inspected = notebook.inspect("math.sqrt")
    assert inspected["found"] and "square root" in inspected["data"]["text/plain"]
    assert notebook.is_complete("for i in range(3):")["status"] == "incomplete"
    assert notebook.cell(running["id"])["state"] == "running", "answered while the cell runs, not after it"
    notebook.interrupt()


def test_is_complete_says_complete_incomplete_or_invalid(notebook):
    assert notebook.is_complete("x = 1")["status"] == "complete"
    reply = notebook.is_complete("def f():")
    assert reply == {"status": "incomplete", "indent": "    "}
    assert notebook.is_complete("x = (1,")["status"] == "incomplete"
    assert notebook.is_complete("1 +* 2")["status"] == "invalid"


def test_stop_on_error_aborts_the_cells_queued_behind_a_failure(notebook):
    failing = notebook.evaluate("import time; time.sleep(0.5); 1/0", wait=False, stop_on_error=True)
    behind = [notebook.evaluate("'ran'", wait=False) for _ in range(3)]
    assert notebook.wait(failing["id"])["status"] == "error"
    assert [notebook.wait(c["id"])["status"] for c in behind] == ["aborted"] * 3
    assert notebook.evaluate("'later'")["status"] == "ok"


def test_without_stop_on_error_the_queue_goes_on(notebook):
    failing = notebook.evaluate("import time; time.sleep(0.3); 1/0", wait=False)
    behind = notebook.evaluate("'ran'", wait=False)
    assert notebook.wait(failing["id"])["status"] == "error"
    assert notebook.wait(behind["id"])["status"] == "ok"
