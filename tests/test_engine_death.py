"""Death is reported (issue 14, item 6): however the engine dies, its caller and its feed are told.

SIGTERM or SIGKILL from outside, SIGTERM to itself, os._exit, a segfault and running out of its
notebook's memory: the running cell is answered at once with EngineDied and the cause, the feed
says `restarting` (what a front end shows, and what makes a Jupyter client see the kernel die),
and the notebook's next cell runs in a fresh namespace. An engine dying between cells is
reported the same way. Real sandboxed engines, real workers.
"""

import os
import signal
import time

import pytest

from tests.conftest import wait_for
from tests.test_isolation import engine_pid

pytestmark = pytest.mark.timeout(180)

LONG_CELL = "import time\nprint('running', flush=True)\ntime.sleep(60)"

# way to die -> (what the running cell does, what the test does to the engine, the cause reported)
WAYS = {
    "sigterm": (LONG_CELL, signal.SIGTERM, "SIGTERM"),
    "sigkill": (LONG_CELL, signal.SIGKILL, "SIGKILL"),
    "own_sigterm": ("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)", None, "SIGTERM"),
    "os_exit": ("import os\nos._exit(9)", None, "exit code 9"),
    "segfault": ("import ctypes\nctypes.string_at(0)", None, "SIGSEGV"),
}


def statuses_after(nb, position: str, want: str, timeout_s: float = 30) -> list[str]:
    """The notebook's status messages after feed position `position`, until one says `want`."""
    seen, deadline = [], time.monotonic() + timeout_s
    for message in nb.feed(after=position, timeout=timeout_s):
        if message["header"]["msg_type"] == "status":
            seen.append(message["content"]["execution_state"])
            if seen[-1] == want:
                break
        assert time.monotonic() < deadline
    return seen


def feed_end(nb) -> str:
    return list(nb.feed(timeout=0.5))[-1]["position"]


def dies_in_a_cell(nb, code: str, sig, cause: str) -> None:
    nb.evaluate("x = 1")
    position = feed_end(nb)
    cell = nb.evaluate(code, wait=False)
    if sig is not None:
        for message in nb.follow(cell["id"], timeout=30):  # the cell runs
            if message["header"]["msg_type"] == "stream":
                break
        os.kill(engine_pid(nb), sig)
    started = time.monotonic()
    done = nb.wait(cell["id"], timeout=20)
    assert time.monotonic() - started < 10
    assert done["status"] == "error" and done["error"]["ename"] == "EngineDied", done
    assert cause in done["error"]["evalue"]
    assert "restarting" in statuses_after(nb, position, "restarting")
    wait_for(lambda: nb.refresh()["worker"] and nb.record["restarts"] == 1, 30, "a fresh worker")
    assert nb.evaluate("'x' in globals()")["outputs"][0]["data"]["text/plain"] == "False"


@pytest.mark.parametrize("way", list(WAYS))
def test_an_engine_dying_in_a_cell_answers_the_cell_and_says_restarting(notebook, way):
    dies_in_a_cell(notebook, *WAYS[way])


def test_an_engine_killed_between_cells_is_reported_and_replaced(notebook):
    notebook.evaluate("x = 1")
    position = feed_end(notebook)
    os.kill(engine_pid(notebook), signal.SIGTERM)
    assert "restarting" in statuses_after(notebook, position, "restarting")
    wait_for(lambda: notebook.refresh()["worker"] and notebook.record["restarts"] == 1, 30, "a fresh worker")
    cell = notebook.evaluate("'x' in globals()")
    assert cell["status"] == "ok" and cell["outputs"][0]["data"]["text/plain"] == "False"


@pytest.mark.skipif(os.geteuid() != 0, reason="a memory cgroup per notebook needs root")
def test_an_engine_out_of_memory_is_reported_as_its_death(private_service):
    (private_service.config_dir / "engines" / "small.toml").write_text(
        'name = "small"\nclass = "taskkernel.engines.python:PythonEngine"\n'
        '[limits]\nnotebook_memory_bytes = 200_000_000\n')
    host = private_service.start_supervisor(pool=1, wait=False)
    private_service.start_api()
    private_service.wait_idle(host, "small", 1)
    with private_service.client().start("small") as nb:
        # written, not only allocated: the pages are the cgroup's, and its OOM killer ends the engine
        dies_in_a_cell(nb, "hog = b'x' * 400_000_000", None, "SIGKILL")
