"""A notebook's working directory and environment (taskkernel/workspace.py), asked for at create.

The cwd is a directory inside the notebook's private home, created on demand, so relative paths
in a cell read and write there and nowhere else; the env is added to what the engine file gives;
names that belong to the service or could subvert the engine's start are refused.
"""

from __future__ import annotations

import os

import pytest

from taskkernel.client import ApiError
from tests.conftest import wait_for
from tests.test_jupyter_kernel import jupyter_kernels  # noqa: F401

pytestmark = pytest.mark.timeout(120)


def text(cell: dict) -> str:
    assert cell["status"] == "ok", cell.get("error")
    return cell["outputs"][-1]["data"]["text/plain"]


@pytest.fixture
def opened(client):
    notebooks = []

    def start(engine="python", **workspace):
        nb = client.start(engine, **workspace)
        notebooks.append(nb)
        return nb

    try:
        yield start
    finally:
        for nb in notebooks:
            nb.close()


@pytest.mark.parametrize("engine", ["python", "ipython"])
def test_cells_run_in_the_asked_directory_with_the_asked_environment(service, opened, engine):
    service.wait_idle("main", engine, 1)
    nb = opened(engine, cwd="projects/./run1", env={"GREETING": "hello", "RUN": "1"})
    assert (nb.record["cwd"], nb.record["env"]) == ("projects/run1", {"GREETING": "hello", "RUN": "1"})
    assert text(nb.evaluate("import os; os.getcwd()")) == repr(os.path.join("/home/notebook", "projects/run1"))
    assert text(nb.evaluate("os.environ['GREETING'], os.environ['RUN']")) == "('hello', '1')"
    nb.evaluate("open('data.txt', 'w').write('kept')")
    assert text(nb.evaluate("open('data.txt').read(), os.path.exists(os.path.expanduser('~/projects/run1/data.txt'))")) \
        == "('kept', True)"
    # the processes a cell starts inherit both
    assert text(nb.evaluate("import subprocess; subprocess.run(['sh', '-c', 'pwd; echo $GREETING'], "
                            "capture_output=True, text=True).stdout")) == repr("/home/notebook/projects/run1\nhello\n")


def test_a_notebook_without_a_workspace_runs_in_its_private_home(opened):
    nb = opened()
    assert (nb.record["cwd"], nb.record["env"]) == ("", {})
    assert text(nb.evaluate("import os; os.getcwd(), 'GREETING' in os.environ")) == "('/home/notebook', False)"


def test_the_fresh_worker_of_a_restart_enters_the_workspace_again(opened):
    nb = opened(cwd="again", env={"GREETING": "back"})
    nb.evaluate("x = 1")
    restarts = nb.refresh()["restarts"]
    nb.restart()
    wait_for(lambda: nb.refresh()["restarts"] > restarts and nb.record["worker"], 30, "the restarted notebook")
    assert text(nb.evaluate("import os; os.getcwd(), os.environ['GREETING'], 'x' in globals()")) \
        == "('/home/notebook/again', 'back', False)"


@pytest.mark.parametrize("body,field", [
    ({"env": {"TASKKERNEL_TOKEN": "stolen"}}, "env"),
    ({"env": {"taskkernel_redis_url": "redis://x"}}, "env"),
    ({"env": {"LD_PRELOAD": "/tmp/evil.so"}}, "env"),
    ({"env": {"PYTHONPATH": "/tmp"}}, "env"),
    ({"env": {"PYTHONSTARTUP": "/tmp/x.py"}}, "env"),
    ({"env": {"HOME": "/"}}, "env"),
    ({"env": {"BAD NAME": "x"}}, "env"),
    ({"env": {"N": 3}}, "env"),
    ({"env": ["A=1"]}, "env"),
    ({"cwd": "../escape"}, "cwd"),
    ({"cwd": "a/../../b"}, "cwd"),
    ({"cwd": "/etc"}, "cwd"),
    ({"cwd": "~root"}, "cwd"),
    ({"cwd": 7}, "cwd"),
], ids=lambda v: str(v))
def test_a_refused_cwd_or_env_is_a_400_naming_the_field(client, body, field):
    with pytest.raises(ApiError) as refused:
        client.request("POST", "/notebooks", {"engine": "python", **body})
    assert (refused.value.status, refused.value.code) == (400, "invalid_field")
    assert refused.value.details["field"] == field


# --- through the Jupyter bridge --------------------------------------------------------------------

def test_the_bridge_opens_its_notebook_with_the_kernels_working_dir_and_kernel_env(jupyter_kernels, tmp_path):  # noqa: F811
    """jupyter_client starts a kernel with env= (Enterprise Gateway's KERNEL_* convention for what a
    client asks for); the bridge forwards KERNEL_* and nothing else of its environment. The files of
    the kernel's own working directory are copied in (as an ipykernel there would see them): regular
    files of the directory itself, not hidden ones, symlinks or subdirectories."""
    import jupyter_client

    from bench.bridge_cost import run_cell
    from tests.test_jupyter_kernel import KERNEL_NAME

    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    (tmp_path / ".hidden").write_text("no")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deeper.txt").write_text("no")
    (tmp_path / "link").symlink_to("/etc/hostname")
    manager = jupyter_client.KernelManager(kernel_name=KERNEL_NAME)
    manager.start_kernel(cwd=str(tmp_path), env={**os.environ, "KERNEL_WORKING_DIR": "analysis",
                                                 "KERNEL_GREETING": "hi", "UNRELATED_SECRET": "s3cr3t"})
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        reply = run_cell(client, "import os\nopen('result.txt', 'w').write('x')\n"
                                 "assert os.getcwd() == '/home/notebook/analysis', os.getcwd()\n"
                                 "assert os.environ['KERNEL_GREETING'] == 'hi'\n"
                                 "assert 'UNRELATED_SECRET' not in os.environ and 'TASKKERNEL_URL' not in os.environ\n"
                                 "assert open('data.csv').read() == 'a,b\\n1,2\\n'\n"
                                 "assert sorted(os.listdir()) == ['data.csv', 'result.txt'], os.listdir()")
        assert reply["status"] == "ok", reply
        assert not (tmp_path / "result.txt").exists()  # the kernel's host directory is not written to
    finally:
        client.stop_channels()
        manager.shutdown_kernel()


def test_what_the_bridge_copies_of_its_working_directory_is_bounded(tmp_path):
    """A pure function: breadth first, regular visible files, within the byte budget and the depth."""
    from taskkernel.jupyter import workdir

    (tmp_path / "a.txt").write_bytes(b"x" * 10)
    (tmp_path / "big.bin").write_bytes(b"x" * 100)
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "m.pyc").write_bytes(b"x")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "b.csv").write_bytes(b"x" * 20)
    (tmp_path / "data" / "deep").mkdir()
    (tmp_path / "data" / "deep" / "c.txt").write_bytes(b"x")
    plan = workdir.plan(tmp_path, "work", max_bytes=50, depth=1)
    assert [(remote, size) for _, remote, size in plan.files] == [("work/a.txt", 10), ("work/data/b.csv", 20)]
    assert plan.bytes == 30 and [s.split(":")[0] for s in plan.skipped] == ["work/big.bin"]
    assert [remote for _, remote, _ in workdir.plan(tmp_path, "", max_bytes=1000).files] == ["a.txt", "big.bin"]
    assert workdir.plan(tmp_path, "", max_bytes=0).files == []
