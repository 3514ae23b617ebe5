"""Output after a cell ends (issue 14, item 5): a thread's late output is its own cell's, never dropped.

A thread a cell starts keeps that cell as its parent: what it prints or displays after the cell
has ended is published on the feed under the cell that started it (as ipykernel 6.29 did; 7
would attribute it to whatever request runs then), whether the notebook is idle or running
another cell, and never lands in another cell's record.
"""

import time

import pytest

pytestmark = pytest.mark.timeout(120)

ENGINES = ["python", "ipython"]

START_THREAD = """
import threading, time
release = threading.Event()
def later():
    release.wait(60)
    print('late line', flush=True)
    display('late display')
threading.Thread(target=later, daemon=True).start()
"""


@pytest.fixture(params=ENGINES)
def any_notebook(request, service, client):
    service.wait_idle("main", request.param, 1, timeout_s=60)
    nb = client.start(request.param)
    try:
        yield nb
    finally:
        nb.close()


def late_messages(nb, cell_id: str, after: str, want: int = 2) -> list[dict]:
    """The stream and display messages published under `cell_id` after feed position `after`."""
    found, deadline = [], time.monotonic() + 30
    for message in nb.feed(after=after, timeout=30):
        if message["parent_header"].get("msg_id") == cell_id and \
                message["header"]["msg_type"] in ("stream", "display_data"):
            found.append(message)
            if len(found) >= want:
                break
        assert time.monotonic() < deadline
    return found


def test_a_thread_printing_after_its_cell_ended_is_published_under_that_cell(any_notebook):
    nb = any_notebook
    first = nb.evaluate(START_THREAD)
    assert first["status"] == "ok", first
    position = list(nb.follow(first["id"], timeout=30))[-1]["position"]
    nb.evaluate("release.set()", wait=False)  # the thread runs on while this short cell ends
    late = late_messages(nb, first["id"], position)
    assert [m["header"]["msg_type"] for m in late] == ["stream", "display_data"]
    assert late[0]["content"] == {"name": "stdout", "text": "late line\n"}
    assert late[1]["content"]["data"]["text/plain"] == "'late display'"


def test_late_output_during_another_cell_stays_out_of_that_cell(any_notebook):
    nb = any_notebook
    first = nb.evaluate(START_THREAD)
    position = list(nb.follow(first["id"], timeout=30))[-1]["position"]
    second = nb.evaluate("release.set()\ntime.sleep(1.5)\nprint('second cell')")
    assert second["status"] == "ok", second
    assert second["stdout"] == "second cell\n"
    assert [o.get("text") for o in second["outputs"]] == ["second cell\n"]
    late = late_messages(nb, first["id"], position)
    assert late[0]["content"]["text"] == "late line\n"
    assert late[1]["content"]["data"]["text/plain"] == "'late display'"
