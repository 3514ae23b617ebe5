"""Jupyter front ends on taskkernel: the bridge kernel, driven by jupyter_client, nbclient and papermill.

The kernelspec is installed with `taskkernel kernelspec install --prefix` into a temporary Jupyter
data directory that JUPYTER_PATH points at, with the URL of the live test service; every kernel
here is a real kernel process speaking ZMQ, whose cells run on the service's Celery workers.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

jupyter_client = pytest.importorskip("jupyter_client")
jupyter_kernel_test = pytest.importorskip("jupyter_kernel_test")
nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

from jupyter_client.manager import start_new_kernel  # noqa: E402

from taskkernel.client import ApiError  # noqa: E402
from bench.bridge_cost import run_cell  # noqa: E402
from tests.conftest import wait_for  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

KERNEL_NAME = "taskkernel-test"
JUPYTER_ENV = ("JUPYTER_PATH", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR", "MPLBACKEND")


@pytest.fixture(scope="module")
def jupyter_kernels(service, tmp_path_factory):
    """The taskkernel kernelspec installed (by the CLI) where jupyter_client looks for kernels.

    ipykernel's own `python3` kernel stays available beside it. MPLBACKEND is cleared for the
    kernels so that ipykernel shows figures inline, as it does for a user.
    """
    root = tmp_path_factory.mktemp("jupyter")
    prefix = root / "prefix"
    done = subprocess.run([sys.executable, "-m", "taskkernel", "kernelspec", "install", "--url", service.api_url,
                           "--name", KERNEL_NAME, "--prefix", str(prefix)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    saved = {name: os.environ.get(name) for name in JUPYTER_ENV}
    os.environ["JUPYTER_PATH"] = str(prefix / "share" / "jupyter")
    os.environ["JUPYTER_RUNTIME_DIR"] = str(root / "runtime")
    os.environ["IPYTHONDIR"] = str(root / "ipython")
    os.environ.pop("MPLBACKEND", None)
    try:
        yield prefix / "share" / "jupyter" / "kernels" / KERNEL_NAME
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def kernel(jupyter_kernels):
    """One started bridge kernel and a blocking client on it."""
    manager, client = start_new_kernel(kernel_name=KERNEL_NAME, startup_timeout=60)
    try:
        yield manager, client
    finally:
        client.stop_channels()
        manager.shutdown_kernel()


def notebook_id_of(client) -> str:
    """The taskkernel notebook behind a bridge kernel, from its kernel_info banner."""
    reply = client.kernel_info(reply=True, timeout=15)
    return re.search(r"notebook ([0-9a-f]{32})", reply["content"]["banner"]).group(1)


def shell_reply(client, msg_id: str, timeout_s: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        msg = client.get_shell_msg(timeout=max(0.01, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") == msg_id:
            return msg


# --- the kernelspec ------------------------------------------------------------------------------

def test_kernelspec_install_writes_a_message_interrupt_kernel(jupyter_kernels, service):
    spec = json.loads((jupyter_kernels / "kernel.json").read_text())
    assert spec["argv"] == [sys.executable, "-m", "taskkernel.jupyter", "-f", "{connection_file}"]
    assert spec["interrupt_mode"] == "message"
    assert spec["language"] == "python"
    # the default engine is the ipython one: notebooks written for ipykernel run as they do there
    assert spec["env"] == {"TASKKERNEL_URL": service.api_url, "TASKKERNEL_ENGINE": "ipython"}
    found = jupyter_client.kernelspec.KernelSpecManager().get_kernel_spec(KERNEL_NAME)
    assert found.interrupt_mode == "message" and found.display_name == "IPython (taskkernel)"


def test_kernelspec_install_refuses_an_engine_the_service_lacks(service, tmp_path):
    done = subprocess.run([sys.executable, "-m", "taskkernel", "kernelspec", "install", "--url", service.api_url,
                           "--engine", "cobol", "--prefix", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "no engine 'cobol'" in done.stderr
    assert not (tmp_path / "share").exists()


# --- conformance: jupyter_kernel_test's standard checks --------------------------------------------

@pytest.mark.usefixtures("jupyter_kernels")
class TestKernelConformance(jupyter_kernel_test.KernelTests):
    """jupyter_kernel_test's KernelTests with the python samples, on the bridge kernel."""

    kernel_name = KERNEL_NAME
    language_name = "python"
    file_extension = ".py"
    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('test', file=sys.stderr)"
    completion_samples = [{"text": "zi", "matches": {"zip"}}]
    complete_code_samples = ["1", "print('hello, world')", "def f(x):\n  return x*2\n\n\n"]
    incomplete_code_samples = ["print('''hello", "def f(x):\n  x*2"]
    invalid_code_samples = ["import = 7q"]
    code_generate_error = "raise"
    code_execute_result = [
        {"code": "1+2+3", "result": "6"},
        {"code": "[n*n for n in range(1, 4)]", "result": "[1, 4, 9]"},
    ]
    # the python engine provides display() and _repr_*_ support (IPython.display is not needed)
    code_display_data = [
        {"code": "class B:\n    def _repr_html_(self): return '<b>test</b>'\ndisplay(B())", "mime": "text/html"},
        {"code": "class M:\n    def _repr_latex_(self): return r'$\\frac{1}{2}$'\ndisplay(M())", "mime": "text/latex"},
    ]
    code_history_pattern = "1?2*"
    supported_history_operations = ("tail", "range", "search")
    code_inspect_sample = "zip"
    # the ipython engine (the kernelspec's default) sends these as ipykernel does
    code_clear_output = "from IPython.display import clear_output; clear_output()"
    code_page_something = "zip?"


# --- live outputs, introspection beside a running cell, interrupt ----------------------------------

def test_outputs_arrive_live_under_the_cells_parent_header(kernel):
    _, client = kernel
    msg_id = client.execute("import time\nprint('first', flush=True)\ntime.sleep(1.5)\nprint('second')")
    arrivals = {}
    deadline = time.monotonic() + 30
    while "second" not in arrivals:
        msg = client.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
        if msg["msg_type"] == "stream":
            assert msg["parent_header"]["msg_id"] == msg_id
            for word in ("first", "second"):
                if word in msg["content"]["text"]:
                    arrivals[word] = time.monotonic()
    reply = shell_reply(client, msg_id)
    assert reply["content"]["status"] == "ok"
    assert arrivals["second"] - arrivals["first"] > 1.0  # 'first' was shown while the cell slept


def start_a_sleeping_cell(client, seconds: float) -> str:
    """Execute `time.sleep(seconds)` and return once the cell is seen running (it printed); its msg_id."""
    msg_id = client.execute(f"import time\nprint('sleeping', flush=True)\ntime.sleep({seconds})")
    deadline = time.monotonic() + 30
    while True:
        msg = client.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
        if msg["msg_type"] == "stream" and "sleeping" in msg["content"]["text"]:
            return msg_id


def interrupt_a_sleeping_cell(manager, client) -> dict:
    """Start `time.sleep(100)` on the worker, interrupt it through the kernel manager; the reply."""
    msg_id = start_a_sleeping_cell(client, 100)
    started = time.monotonic()
    manager.interrupt_kernel()
    reply = shell_reply(client, msg_id, timeout_s=20)
    assert time.monotonic() - started < 10
    return reply["content"]


def test_interrupt_on_the_control_channel_stops_a_sleeping_cell_on_the_worker(kernel):
    manager, client = kernel
    assert manager.kernel_spec.interrupt_mode == "message"  # so: an interrupt_request on control
    reply = interrupt_a_sleeping_cell(manager, client)
    assert (reply["status"], reply["ename"]) == ("error", "KeyboardInterrupt")
    assert run_cell(client, "40 + 2")["status"] == "ok"  # the notebook lives on


def test_sigint_to_the_kernel_process_interrupts_the_cell_on_the_worker(jupyter_kernels):
    manager = jupyter_client.KernelManager(kernel_name=KERNEL_NAME)
    manager.kernel_spec.interrupt_mode = "signal"  # as a front end that ignores interrupt_mode would
    manager.start_kernel()
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        reply = interrupt_a_sleeping_cell(manager, client)
        assert (reply["status"], reply["ename"]) == ("error", "KeyboardInterrupt")
        assert run_cell(client, "40 + 2")["status"] == "ok"  # the kernel process survived its SIGINT
    finally:
        client.stop_channels()
        manager.shutdown_kernel()


def test_requests_queued_behind_a_failed_cell_are_aborted_and_one_sent_after_its_reply_runs(kernel):
    """ipykernel's stop_on_error: what was sent before the error's reply is aborted, nothing after.

    The second half is the race a loaded machine showed (the cell after an interrupt aborted):
    each request here goes out the moment the failed cell's reply arrives.
    """
    _, client = kernel
    failing, queued = client.execute("raise ValueError('first')"), client.execute("'never run'")
    assert shell_reply(client, failing)["content"]["status"] == "error"
    assert shell_reply(client, queued)["content"]["status"] == "aborted"
    for attempt in range(5):
        assert shell_reply(client, client.execute("raise ValueError('again')"))["content"]["status"] == "error"
        after = shell_reply(client, client.execute(f"{attempt} + 40"))["content"]
        assert after["status"] == "ok", f"attempt {attempt}: the request sent after the reply was {after['status']}"


def test_introspection_answers_while_a_cell_runs(kernel):
    """ipykernel would queue these behind the cell; the worker answers them from its side thread."""
    _, client = kernel
    # a fresh engine's first completion warms jedi up (~3 s in the sandbox, longer on a loaded
    # machine), and the inspect sent beside it waits for the same import
    msg_id = start_a_sleeping_cell(client, 12)
    deadline = time.monotonic() + 40
    asked = {client.complete("import ti", 9): "complete", client.inspect("len", 3): "inspect", msg_id: "execute"}
    replies = {}
    while len(replies) < 3:
        msg = client.get_shell_msg(timeout=max(0.01, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") in asked:
            replies[asked[msg["parent_header"]["msg_id"]]] = msg["content"]
    # in the order they were answered: both introspection requests (sent concurrently, so either may
    # come first) before the cell that was already running
    assert set(list(replies)[:2]) == {"complete", "inspect"} and list(replies)[2] == "execute"
    assert "time" in replies["complete"]["matches"]
    assert replies["inspect"]["found"] and "len" in replies["inspect"]["data"]["text/plain"]
    assert replies["execute"]["status"] == "ok"


def test_errors_and_history_of_the_session(kernel):
    _, client = kernel
    reply = run_cell(client, "def boom():\n    raise ValueError('no good')\nboom()")
    assert reply["status"] == "error"
    assert (reply["ename"], reply["evalue"]) == ("ValueError", "no good")
    assert any("boom" in line for line in reply["traceback"])
    run_cell(client, "answer = 6 * 7")
    history = client.history(hist_access_type="tail", n=2, output=False, raw=True, reply=True, timeout=15)
    assert [entry[2] for entry in history["content"]["history"]] == [
        "def boom():\n    raise ValueError('no good')\nboom()", "answer = 6 * 7"]


def test_restart_gives_a_fresh_namespace_on_the_same_notebook_and_shutdown_deletes_it(jupyter_kernels, client):
    manager, kc = start_new_kernel(kernel_name=KERNEL_NAME, startup_timeout=60)
    try:
        notebook_id = notebook_id_of(kc)
        assert run_cell(kc, "x = 1")["status"] == "ok"
        kc.stop_channels()
        manager.restart_kernel()
        kc = manager.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        assert notebook_id_of(kc) == notebook_id
        reply = run_cell(kc, "x")
        assert (reply["status"], reply["ename"], reply["execution_count"]) == ("error", "NameError", 1)
        assert client.notebook(notebook_id).record["restarts"] >= 1
    finally:
        kc.stop_channels()
        manager.shutdown_kernel()
    with pytest.raises(ApiError) as gone:
        client.notebook(notebook_id)
    assert gone.value.status == 404


def test_a_killed_kernel_leaves_no_notebook_behind(jupyter_kernels, client):
    """The kernel renews its notebook's lease; SIGKILL stops the renewals and the service deletes it."""
    manager = jupyter_client.KernelManager(kernel_name=KERNEL_NAME)
    manager.start_kernel(extra_arguments=["--TaskkernelKernel.lease_s=2"])
    kc = manager.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        notebook_id = notebook_id_of(kc)
        assert client.notebook(notebook_id).record["lease_s"] == 2
        time.sleep(5)  # more than two leases: the kernel's renewals keep it
        assert run_cell(kc, "1 + 1")["status"] == "ok"
        os.kill(manager.provisioner.process.pid, signal.SIGKILL)  # no shutdown request, no delete
        manager.provisioner.process.wait(timeout=10)
    finally:
        kc.stop_channels()
        if manager.has_kernel:
            manager.shutdown_kernel(now=True)
    wait_for(lambda: notebook_gone(client, notebook_id), 15, "the killed kernel's notebook to be deleted")


def notebook_gone(client, notebook_id: str) -> bool:
    """The notebook has been deleted (404)."""
    try:
        client.notebook(notebook_id)
    except ApiError as exc:
        return exc.status == 404
    return False


def test_a_kernel_whose_service_is_down_fails_its_cells_and_stays_up(jupyter_kernels):
    from taskkernel.jupyter.kernelspec import install
    from tests.conftest import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    install(url, name="taskkernel-down", prefix=str(jupyter_kernels.parents[3]))
    manager, client = start_new_kernel(kernel_name="taskkernel-down", startup_timeout=60)
    try:
        for _ in range(2):
            reply = run_cell(client, "1 + 1")
            assert reply["status"] == "error" and reply["ename"].startswith("taskkernel.")
            assert url in reply["evalue"]
        completion = client.complete("zi", 2, reply=True, timeout=15)["content"]
        assert (completion["status"], completion["matches"]) == ("ok", [])
        assert manager.is_alive()
    finally:
        client.stop_channels()
        manager.shutdown_kernel()


# --- real notebooks: nbclient on both kernels ------------------------------------------------------

NOTEBOOK_CELLS = [
    "print('hello')\nimport sys\nprint('to stderr', file=sys.stderr)",
    "x = 6 * 7\nx",
    "1 / 0",
    "class Bold:\n    def __repr__(self):\n        return 'Bold()'\n"
    "    def _repr_html_(self):\n        return '<b>bold</b>'\n\ndisplay(Bold())\nBold()",
    "import matplotlib.pyplot as plt\nfig, ax = plt.subplots(figsize=(2, 2))\n_ = ax.plot([1, 3, 2])",
    "print(x + 1)",
    # IPython's own behaviour (issue 14): kept outputs must match ipykernel's
    "%matplotlib inline\nimport warnings\nprint('magic ok')",
    "from IPython.display import display, clear_output\nh = display('first', display_id=True)\n"
    "print('between')\nh.update('second')",
    "print('gone')\nclear_output()\nfor i in range(3):\n    clear_output(wait=True)\n    print(i)",
    "fig",
    "'quiet';",
    "Out[2], In[2]",
    "len?",
]


def run_notebook(kernel_name: str):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in NOTEBOOK_CELLS])
    nbclient.NotebookClient(nb, kernel_name=kernel_name, allow_errors=True, timeout=60,
                            startup_timeout=60).execute()
    return nb


def comparable(outputs: list[dict]) -> list[dict]:
    """Outputs with what legitimately differs between kernels taken out: execution counts (checked
    apart), traceback formatting (ipykernel colours it and shows its own frames) and how stdout was
    cut into stream messages. Everything else, figures' PNG bytes included, must be equal."""
    result: list[dict] = []
    for output in outputs:
        output = dict(output)
        output.pop("execution_count", None)
        output.pop("traceback", None)
        if output["output_type"] == "stream" and result and result[-1].get("name") == output["name"]:
            result[-1]["text"] += output["text"]
            continue
        result.append(output)
    return result


def test_nbclient_runs_a_notebook_with_the_same_outputs_as_on_ipykernel(jupyter_kernels):
    bridged = run_notebook(KERNEL_NAME)
    native = run_notebook("python3")
    assert bridged.metadata["language_info"]["name"] == "python"
    for number, (ours, theirs) in enumerate(zip(bridged.cells, native.cells, strict=True), start=1):
        assert comparable(ours.outputs) == comparable(theirs.outputs), f"cell {number}: {ours.source!r}"
    assert [c.outputs[0]["output_type"] if c.outputs else None for c in bridged.cells] == [
        "stream", "execute_result", "error", "display_data", "display_data", "stream",
        "stream", "display_data", "stream", "execute_result", None, "execute_result", None]
    figure = bridged.cells[4].outputs[0]["data"]
    assert base64.b64decode(figure["image/png"]).startswith(b"\x89PNG\r\n\x1a\n")
    counts = [c.execution_count for c in bridged.cells]
    assert counts == list(range(1, len(NOTEBOOK_CELLS) + 1))


def test_papermill_executes_a_parameterised_notebook(jupyter_kernels, tmp_path):
    papermill = pytest.importorskip("papermill")
    parameters = nbformat.v4.new_code_cell("n = 1")
    parameters.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[parameters, nbformat.v4.new_code_cell("print(n * 10)")])
    nb.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "Python 3 (taskkernel)", "language": "python"}
    source, target = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, source)
    papermill.execute_notebook(str(source), str(target), parameters={"n": 4}, progress_bar=False,
                               start_timeout=60)
    result = nbformat.read(target, as_version=4)
    assert result.metadata["language_info"]["name"] == "python"
    injected = [c.source for c in result.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected == ["# Parameters\nn = 4\n"]
    assert result.cells[-1].outputs[0]["text"] == "40\n"
