"""Output after a cell ends (issue 14, item 5): a thread's late output is its own cell's, never dropped.

A thread a cell starts keeps that cell as its parent: what it prints or displays after the cell
has ended is published on the feed under the cell that started it (as ipykernel 6.29 did; 7
would attribute it to whatever request runs then), whether the notebook is idle or running
another cell, and never lands in another cell's record.
"""

import time

import pytest

pytestmark = pytest.mark.timeout(120)


START_THREAD = """
import threading, time
release = threading.Event()
def later():
    release.wait(60)
    print('late line', flush=True)
    display('late display')
threading.Thread(target=later, daemon=True).start()
"""


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


def test_what_a_cell_makes_outside_its_outputs_stays_within_the_output_limit(private_service):
    """Comm messages count against the cell's output limit; a thread's late output gets one limit's
    worth until the next cell starts: neither is a way around the cap."""
    private_service.start_supervisor(pool=1, max_output_bytes=10_000)
    private_service.start_api()
    with private_service.client().start() as nb:
        cell = nb.evaluate("from comm import create_comm\nc = create_comm(target_name='flood')\n"
                           "for i in range(50):\n    c.send({'chunk': 'x' * 1000})")
        assert cell["status"] == "ok"
        assert "output truncated" in cell["stderr"]
        feed = list(nb.follow(cell["id"], timeout=30))
        sent = [m for m in feed if m["header"]["msg_type"] == "comm_msg"]
        assert 0 < len(sent) < 12
        position = feed[-1]["position"]
        started = nb.evaluate("import threading, time\ndef flood():\n    time.sleep(0.5)\n    for i in range(100):\n"
                              "        print('y' * 1000, flush=True)\nthreading.Thread(target=flood).start()")
        time.sleep(3)  # the thread has printed 100 KB after its cell ended
        late = "".join(m["content"]["text"] for m in nb.feed(after=position, timeout=1)
                       if m["header"]["msg_type"] == "stream" and m["parent_header"].get("msg_id") == started["id"])
        assert late.startswith("y" * 1000) and "output truncated" in late
        assert len(late) < 10_200
        assert nb.evaluate("print('next')")["stdout"] == "next\n"
