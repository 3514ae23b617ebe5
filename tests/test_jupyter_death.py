"""An engine that dies under the bridge is a dead kernel to Jupyter, as ipykernel's death is.

nbclient raises DeadKernelError, a kernel manager sees the process gone (a Jupyter server's
restarter then starts a fresh kernel), and the notebook whose namespace was lost is deleted.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

from jupyter_client.manager import start_new_kernel  # noqa: E402
from nbclient.exceptions import DeadKernelError  # noqa: E402

from bench.bridge_cost import run_cell  # noqa: E402
from tests.conftest import wait_for  # noqa: E402
from tests.test_isolation import engine_pid  # noqa: E402
from tests.test_jupyter_kernel import KERNEL_NAME, jupyter_kernels, notebook_gone, notebook_id_of, start_a_sleeping_cell  # noqa: E402,F401

pytestmark = pytest.mark.timeout(180)


def execute(kernel_name: str, *sources: str):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in sources])
    nbclient.NotebookClient(nb, kernel_name=kernel_name, timeout=60, startup_timeout=60).execute()
    return nb


@pytest.mark.parametrize("kernel_name", [KERNEL_NAME, "python3"])
@pytest.mark.parametrize("death", ["import os\nos._exit(1)",
                                   "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)",
                                   "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"],
                         ids=["os._exit", "SIGTERM", "SIGKILL"])
def test_nbclient_raises_dead_kernel_error_when_the_cell_kills_its_interpreter(jupyter_kernels, kernel_name, death):  # noqa: F811
    with pytest.raises(DeadKernelError):
        execute(kernel_name, "x = 1", death, "print('never')")


@pytest.fixture
def bridge(jupyter_kernels, client):  # noqa: F811
    """A started bridge kernel, its client, and its notebook on the service."""
    manager, kc = start_new_kernel(kernel_name=KERNEL_NAME, startup_timeout=60)
    try:
        yield manager, kc, client.notebook(notebook_id_of(kc))
    finally:
        kc.stop_channels()
        if manager.has_kernel:
            manager.shutdown_kernel(now=True)


def test_an_engine_killed_from_outside_during_a_cell_ends_the_kernel_process(bridge, client):
    manager, kc, notebook = bridge
    assert run_cell(kc, "x = 1")["status"] == "ok"
    cell = start_a_sleeping_cell(kc, 60)
    notebook.refresh()
    os.kill(engine_pid(notebook), signal.SIGKILL)
    wait_for(lambda: not manager.is_alive(), 20, "the bridge kernel process to exit")
    died = []
    while True:  # the EngineDied error was published before the process went; no execute_reply
        try:
            msg = kc.get_iopub_msg(timeout=1)
        except Exception:
            break
        if msg["parent_header"].get("msg_id") == cell and msg["msg_type"] == "error":
            died.append(msg["content"]["ename"])
    assert died == ["EngineDied"]
    wait_for(lambda: notebook_gone(client, notebook.id), 15, "the lost notebook to be deleted")


def test_an_engine_lost_just_after_a_cell_ends_the_kernel_at_once(jupyter_kernels, client):  # noqa: F811
    """The feed stays open after a cell (feed_linger_s, here long): its 'restarting' is seen at once."""
    manager, kc = started_with("--TaskkernelKernel.feed_linger_s=120")
    try:
        notebook = client.notebook(notebook_id_of(kc))
        assert run_cell(kc, "x = 1")["status"] == "ok"
        notebook.refresh()
        os.kill(engine_pid(notebook), signal.SIGKILL)
        wait_for(lambda: not manager.is_alive(), 30, "the bridge kernel process to exit")
        wait_for(lambda: notebook_gone(client, notebook.id), 15, "the lost notebook to be deleted")
    finally:
        kc.stop_channels()
        if manager.has_kernel:
            manager.shutdown_kernel(now=True)


def started_with(*arguments: str):
    import jupyter_client

    manager = jupyter_client.KernelManager(kernel_name=KERNEL_NAME)
    manager.start_kernel(extra_arguments=list(arguments))
    kc = manager.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
    except Exception:
        kc.stop_channels()
        manager.shutdown_kernel(now=True)
        raise
    return manager, kc


def test_an_engine_lost_while_the_kernel_idles_ends_it_at_the_next_cell(jupyter_kernels, client):  # noqa: F811
    manager, kc = started_with("--TaskkernelKernel.feed_linger_s=0.3")
    try:
        notebook = client.notebook(notebook_id_of(kc))
        assert run_cell(kc, "x = 1")["status"] == "ok"
        time.sleep(1.5)  # the feed stream is closed: an idle kernel holds no API thread
        restarts = notebook.refresh()["restarts"]
        os.kill(engine_pid(notebook), signal.SIGKILL)
        wait_for(lambda: notebook.refresh()["restarts"] > restarts, 20, "the service to restart the notebook")
        assert manager.is_alive()
        kc.execute("x")  # the namespace it would run in is not the one 'x' was set in
        wait_for(lambda: not manager.is_alive(), 20, "the bridge kernel process to exit")
        wait_for(lambda: notebook_gone(client, notebook.id), 15, "the lost notebook to be deleted")
    finally:
        kc.stop_channels()
        if manager.has_kernel:
            manager.shutdown_kernel(now=True)


def test_a_restart_asked_for_is_no_death(jupyter_kernels):  # noqa: F811
    manager, kc = start_new_kernel(kernel_name=KERNEL_NAME, startup_timeout=60)
    try:
        assert run_cell(kc, "x = 1")["status"] == "ok"
        kc.stop_channels()
        manager.restart_kernel()
        kc = manager.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        reply = run_cell(kc, "'x' in globals()")
        assert reply["status"] == "ok"
        time.sleep(0.5)
        assert manager.is_alive()
    finally:
        kc.stop_channels()
        manager.shutdown_kernel()


def test_a_shutdown_asked_for_is_no_death(jupyter_kernels, client, tmp_path):  # noqa: F811
    """The kernel's own shutdown deletes its notebook, whose engine then reads "dead" on the feed:
    the kernel exits cleanly, with no error logged (nbclient's parallel tests check its stderr)."""
    log = tmp_path / "kernel.err"
    with open(log, "wb") as stderr:
        manager, kc = start_new_kernel(kernel_name=KERNEL_NAME, startup_timeout=60, stderr=stderr)
    process = manager.provisioner.process
    try:
        assert run_cell(kc, "1 + 1")["status"] == "ok"
        notebook_id = notebook_id_of(kc)
    finally:
        kc.stop_channels()
        manager.shutdown_kernel()
    assert process.wait(timeout=10) == 0 and "ERROR" not in log.read_text(), log.read_text()
    wait_for(lambda: notebook_gone(client, notebook_id), 10, "the shut-down kernel's notebook to be deleted")
