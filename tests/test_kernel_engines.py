"""Any Jupyter kernel as an engine (issue 14, item 8): an engine file's `kernelspec = "..."`.

bash_kernel (from PyPI, its spec installed with `python -m bash_kernel.install --prefix` into a
private JUPYTER_PATH that only this module's supervisor sees) and ipykernel's own `python3`
kernelspec run as engines in the real sandbox, on real workers of a service of this module's own
(its own Redis database and engine files, so the shared service's engines stay as they are).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis

pytest.importorskip("bash_kernel")
jupyter_client = pytest.importorskip("jupyter_client")

from taskkernel.client import ApiError  # noqa: E402
from taskkernel.settings import SOURCE_CONFIG_DIR  # noqa: E402
from tests.conftest import Service, wait_for  # noqa: E402
from tests.test_engine_death import statuses_after  # noqa: E402
from tests.test_isolation import engine_pid  # noqa: E402

pytestmark = pytest.mark.timeout(120)

DB = 5  # this module's Redis database (conftest's fixtures use 0-3)
ENGINE_FILES = {
    "bash": 'name = "bash"\ndisplay_name = "Bash"\nlanguage = "bash"\nkernelspec = "bash"\npool_size = 1\n',
    "pykernel": 'name = "pykernel"\ndisplay_name = "Python 3 (ipykernel)"\nlanguage = "python"\n'
                'kernelspec = "python3"\npool_size = 1\n',
    # ipykernel again, under a spec that asks for interrupt_request messages instead of SIGINT
    "pymessage": 'name = "pymessage"\nkernelspec = "pymessage"\npool_size = 1\n',
}


def install_bash_kernelspec(prefix: Path) -> Path:
    """bash_kernel's spec in `prefix`; returns the Jupyter data directory to put on JUPYTER_PATH."""
    done = subprocess.run([sys.executable, "-m", "bash_kernel.install", "--prefix", str(prefix)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([sys.executable, "-m", "ipykernel", "install", "--prefix", str(prefix), "--name", "pymessage"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    spec_file = prefix / "share" / "jupyter" / "kernels" / "pymessage" / "kernel.json"
    spec_file.write_text(json.dumps({**json.loads(spec_file.read_text()), "interrupt_mode": "message"}))
    return prefix / "share" / "jupyter"


@pytest.fixture(scope="module")
def kernels_service(redis_server, tmp_path_factory):
    """An API and a supervisor keeping one bash and one python3-kernel worker warm."""
    root = tmp_path_factory.mktemp("kernels")
    jupyter_path = install_bash_kernelspec(root / "prefix")
    config = root / "config"
    shutil.copytree(SOURCE_CONFIG_DIR, config)
    for path in (config / "engines").glob("*.toml"):  # no python workers of this module's own
        path.unlink()
    for name, text in ENGINE_FILES.items():
        (config / "engines" / f"{name}.toml").write_text(text)
    admin = redis.Redis.from_url(redis_server.db_url(DB, admin=True))
    admin.flushdb()
    svc = Service(redis_server.db_url(DB), config, {"TASKKERNEL_LOG_LEVEL": "WARNING",
                                                     "JUPYTER_PATH": str(jupyter_path)})
    try:
        host = svc.start_supervisor(pool=1, wait=False, output=root / "supervisor.log")
        for engine in ENGINE_FILES:
            svc.wait_idle(host, engine, 1, timeout_s=90, process=svc.supervisors[host])
        svc.start_api()
        svc.jupyter_path = jupyter_path
        yield svc
    finally:
        svc.close()
        admin.flushdb()
        admin.close()


@pytest.fixture(scope="module")
def bash(kernels_service):
    nb = kernels_service.client().start("bash")
    try:
        yield nb
    finally:
        nb.close()


@pytest.fixture(scope="module")
def pykernel(kernels_service):
    nb = kernels_service.client().start("pykernel")
    try:
        yield nb
    finally:
        nb.close()


def text_of(cell: dict) -> str:
    return "".join(o.get("text", "") for o in cell["outputs"] if o["output_type"] == "stream")


def test_the_engines_list_their_kernelspec(kernels_service):
    engines = {e["name"]: e for e in kernels_service.client().engines()}
    assert engines["bash"]["kernelspec"] == "bash" and engines["bash"]["language"] == "bash"
    assert engines["pykernel"]["class"] == "taskkernel.engines.jupyter_kernel:KernelEngine"


def test_a_bash_cell_prints_keeps_variables_and_fails(bash):
    done = bash.evaluate("X=41; echo hello $((X + 1))")
    assert done["status"] == "ok" and text_of(done) == "hello 42\n", done
    assert done["execution_count"] >= 1
    kept = bash.evaluate("echo $X")
    assert text_of(kept) == "41\n" and kept["execution_count"] == done["execution_count"] + 1
    failed = bash.evaluate("false")
    assert failed["status"] == "error" and failed["error"]["evalue"] == "1", failed


def test_a_bash_cell_runs_in_the_sandbox(bash):
    done = bash.evaluate("id -u; echo $HOME; pwd; cat /proc/1/cmdline | tr '\\0' ' '; echo; "
                         "env | grep -c TASKKERNEL_ || true")
    lines = text_of(done).splitlines()
    assert lines[1] == "/home/notebook" and lines[2] == "/home/notebook", lines
    if os.geteuid() == 0:
        assert int(lines[0]) >= 200000  # the slot's own uid, not root
    assert lines[3].split()[0].endswith("bwrap"), lines[3]  # pid 1 is the sandbox's init, not the host's
    assert lines[4] == "0"  # no credential of the service in the kernel's environment


def test_python3_kernel_outputs_values_errors_and_state(pykernel):
    pykernel.evaluate("import sys\nx = 20")
    done = pykernel.evaluate("print('out'); x + 1")
    assert done["status"] == "ok", done
    assert [o["output_type"] for o in done["outputs"]] == ["stream", "execute_result"]
    assert done["outputs"][1]["data"]["text/plain"] == "21"
    shown = pykernel.evaluate("from IPython.display import display, HTML\ndisplay(HTML('<b>b</b>'))")
    assert shown["outputs"][0]["data"]["text/html"] == "<b>b</b>"
    failed = pykernel.evaluate("1/0")
    assert failed["status"] == "error" and failed["error"]["ename"] == "ZeroDivisionError"
    assert any("ZeroDivisionError" in line for line in failed["error"]["traceback"])


def test_feed_of_a_kernel_cell_is_a_python_engines(pykernel):
    cell = pykernel.evaluate("print('a'); 7", wait=False)
    feed = list(pykernel.follow(cell["id"], timeout=60))
    types = [m["header"]["msg_type"] for m in feed]
    assert types == ["status", "execute_input", "stream", "execute_result", "execute_reply"], types
    reply = feed[-1]["content"]
    assert reply["status"] == "ok" and reply["execution_count"] == feed[3]["content"]["execution_count"]
    assert all(m["parent_header"]["msg_id"] == cell["id"] for m in feed)


def test_complete_inspect_is_complete(bash, pykernel):
    assert "echo" in bash.complete("ech")["matches"]
    pykernel.evaluate("import math")
    got = pykernel.complete("math.sq")
    assert "math.sqrt" in got["matches"] or "sqrt" in got["matches"], got
    assert "sqrt" in pykernel.inspect("math.sqrt")["data"]["text/plain"]
    assert pykernel.is_complete("for i in x:")["status"] == "incomplete"


def test_interrupt_of_sleep(bash):
    cell = bash.evaluate("echo started; sleep 30; echo never", wait=False)
    for message in bash.follow(cell["id"], timeout=30):
        if message["header"]["msg_type"] == "stream":
            break
    bash.interrupt()
    done = bash.wait(cell["id"], timeout=15)
    assert done["status"] in ("aborted", "error") and "never" not in text_of(done), done
    assert text_of(bash.evaluate("echo after")) == "after\n"  # the kernel goes on


@pytest.mark.parametrize("engine", ["pykernel", "pymessage"])
def test_interrupt_of_a_python3_kernel_cell(kernels_service, pykernel, engine):
    """By SIGINT to the kernel (python3's interrupt_mode) and by interrupt_request on control."""
    nb = pykernel if engine == "pykernel" else kernels_service.client().start(engine)
    try:
        interrupted(nb)
    finally:
        if nb is not pykernel:
            nb.close()


def interrupted(pykernel) -> None:
    cell = pykernel.evaluate("import time\nprint('started', flush=True)\ntime.sleep(30)", wait=False)
    for message in pykernel.follow(cell["id"], timeout=30):
        if message["header"]["msg_type"] == "stream":
            break
    pykernel.interrupt()
    done = pykernel.wait(cell["id"], timeout=15)
    assert done["status"] == "error" and done["error"]["ename"] == "KeyboardInterrupt", done


def test_stdin_input_request_and_reply(pykernel):
    cell = pykernel.evaluate("name = input('who? ')\nprint('hi', name)", wait=False, allow_stdin=True)
    for message in pykernel.follow(cell["id"], timeout=30):
        if message["header"]["msg_type"] == "input_request":
            assert message["content"]["prompt"] == "who? "
            break
    assert pykernel.input_reply("ann")["delivered"]
    done = pykernel.wait(cell["id"], timeout=15)
    assert "hi ann" in text_of(done), done


def test_comms_pass_both_ways(pykernel):
    pykernel.evaluate(
        "from comm import create_comm\n"
        "got = []\n"
        "def opened(comm, msg):\n"
        "    comm.on_msg(lambda m: (got.append(m['content']['data']), comm.send({'echo': m['content']['data']})))\n"
        "get_ipython().kernel.comm_manager.register_target('t', opened)")
    opened = pykernel.send_comm("comm_open", {"comm_id": "c1", "target_name": "t", "data": {}})
    pykernel.comm_msg("c1", {"n": 1})
    assert opened
    echoes = []
    for message in pykernel.comms(timeout=20):
        if message["header"]["msg_type"] == "comm_msg" and message["content"]["comm_id"] == "c1":
            echoes.append(message["content"]["data"])
            break
    assert echoes == [{"echo": {"n": 1}}]
    assert "c1" in pykernel.comm_info("t")["comms"]


def test_namespace_operations_are_refused_with_a_code(kernels_service, pykernel):
    for call in (lambda: pykernel.pull("x"), pykernel.checkpoint, lambda: pykernel.push(y=1)):
        with pytest.raises(ApiError) as refused:
            call()
        assert refused.value.code == "not_supported_by_engine" and refused.value.status == 400
    with pytest.raises(ApiError) as refused:
        kernels_service.client().request("POST", "/notebooks", {"engine": "bash", "checkpoint_every_cell": True})
    assert refused.value.code == "not_supported_by_engine"


def test_displays_updates_clear_output_and_user_expressions(pykernel):
    done = pykernel.evaluate(
        "from IPython.display import display, clear_output\n"
        "h = display('first', display_id=True)\nh.update('second')\nprint('gone')\n"
        "clear_output(wait=True)\nprint('kept')", user_expressions={"two": "1+1"})
    assert [o["output_type"] for o in done["outputs"]] == ["stream"] and text_of(done) == "kept\n", done
    cell = pykernel.evaluate("h = display('a', display_id=True); h.update('b')", wait=False)
    feed = list(pykernel.follow(cell["id"], timeout=60))
    types = [m["header"]["msg_type"] for m in feed]
    assert "display_data" in types and "update_display_data" in types, types
    assert pykernel.cell(cell["id"])["outputs"][0]["data"]["text/plain"] == "'b'"
    cell = pykernel.evaluate("1", wait=False, user_expressions={"two": "1+1"})
    reply = list(pykernel.follow(cell["id"], timeout=60))[-1]["content"]
    assert reply["user_expressions"]["two"]["data"]["text/plain"] == "2", reply


def test_working_directory_and_environment(kernels_service):
    with kernels_service.client().start("bash", cwd="work/here", env={"RUN_ID": "r7"}) as nb:
        assert text_of(nb.evaluate("pwd; echo $RUN_ID")) == "/home/notebook/work/here\nr7\n"


def test_restart_gives_a_fresh_kernel_never_one_a_cell_installed(kernels_service):
    """The files of the notebook's home go to the fresh worker; a kernel.json a cell put there is not
    a kernelspec: the worker looks in the service's Jupyter path only."""
    with kernels_service.client().start("bash") as nb:
        planted = ('{"argv": ["sh", "-c", "touch /home/notebook/planted"], "display_name": "x", "language": "bash"}')
        for where in ("~/.local/share/jupyter/kernels/bash", "~/share/jupyter/kernels/bash"):
            nb.evaluate(f"mkdir -p {where} && echo '{planted}' > {where}/kernel.json")
        nb.evaluate("Z=3")
        nb.restart()
        done = nb.evaluate("echo ${Z:-unset}; ls ~/.local/share/jupyter/kernels/bash; test -e ~/planted || echo clean")
        assert text_of(done) == "unset\nkernel.json\nclean\n", done


def test_engine_files_with_a_kernelspec(tmp_path):
    """Pure: the class defaults to the kernel engine; read_only_paths must be absolute; the sandbox
    shows them read-only (and the kernelspec's directory, unless it is within the Python installation)."""
    from taskkernel.engines import registry
    from taskkernel.exceptions import ConfigurationError
    from taskkernel.settings import Settings
    from taskkernel.workers import kernelspecs, sandbox

    (tmp_path / "engines").mkdir()
    (tmp_path / "opt").mkdir()
    (tmp_path / "engines" / "k.toml").write_text(
        f'name = "k"\nkernelspec = "python3"\nread_only_paths = ["{tmp_path / "opt"}"]\n')
    (tmp_path / "engines" / "bad.toml").write_text('name = "bad"\nkernelspec = "python3"\nread_only_paths = ["rel"]\n')
    specs, errors = registry.load_specs(tmp_path)
    assert specs["k"]["class"] == registry.KERNEL_ENGINE_CLASS and "bad" not in specs
    assert any("read_only_paths" in e for e in errors.values())
    resolved = kernelspecs.resolve(specs["k"])  # ipykernel's native python3 spec
    assert resolved["kernel"]["language"] == "python" and resolved["kernel"]["interrupt_mode"] == "signal"
    with pytest.raises(ConfigurationError, match="no kernelspec"):
        kernelspecs.resolve({"name": "n", "kernelspec": "no-such-kernel"})
    (tmp_path / "box").mkdir()
    launch = sandbox.engine_launch(Settings(), resolved, directory=tmp_path / "box", uid=None)
    pairs = list(zip(launch.argv, launch.argv[1:], launch.argv[2:]))
    assert ("--ro-bind", str(tmp_path / "opt"), str(tmp_path / "opt")) in pairs
    spec_dir = tmp_path / "jupyter" / "kernels" / "k"
    spec_dir.mkdir(parents=True)
    elsewhere = {**resolved, "read_only_paths": [], "kernel": {**resolved["kernel"], "resource_dir": str(spec_dir)}}
    launch = sandbox.engine_launch(Settings(), elsewhere, directory=tmp_path / "box", uid=None)
    assert ("--ro-bind", str(spec_dir), str(spec_dir)) in list(zip(launch.argv, launch.argv[1:], launch.argv[2:]))


def test_a_killed_kernel_is_reported_as_the_engines_death(kernels_service):
    nb = kernels_service.client().start("bash")
    try:
        nb.evaluate("X=1")
        kernel = int(Path(f"/proc/{engine_pid(nb)}/task/{engine_pid(nb)}/children").read_text().split()[0])
        cell = nb.evaluate("echo running; sleep 60", wait=False)
        for message in nb.follow(cell["id"], timeout=30):
            if message["header"]["msg_type"] == "stream":
                break
        os.kill(kernel, signal.SIGKILL)
        done = nb.wait(cell["id"], timeout=20)
        assert done["status"] == "error" and done["error"]["ename"] == "EngineDied", done
        assert "SIGKILL" in done["error"]["evalue"]
        assert "restarting" in statuses_after(nb, "0-0", "restarting")
        wait_for(lambda: nb.refresh()["worker"] and nb.record["restarts"] == 1, 60, "a fresh worker")
        assert text_of(nb.evaluate("echo ${X:-unset}")) == "unset\n"  # a fresh kernel
        position = list(nb.feed(timeout=0.5))[-1]["position"]
        engine = engine_pid(nb)  # between cells, too
        os.kill(int(Path(f"/proc/{engine}/task/{engine}/children").read_text().split()[0]), signal.SIGKILL)
        assert "restarting" in statuses_after(nb, position, "restarting")
        wait_for(lambda: nb.refresh()["worker"] and nb.record["restarts"] == 2, 60, "another fresh worker")
    finally:
        nb.close()


def test_the_bash_notebook_through_the_bridge(kernels_service, tmp_path):
    """jupyter_client on the bridge kernel (`taskkernel kernelspec install --engine bash`)."""
    from jupyter_client.manager import start_new_kernel

    prefix = tmp_path / "bridge"
    done = subprocess.run([sys.executable, "-m", "taskkernel", "kernelspec", "install", "--url",
                           kernels_service.api_url, "--engine", "bash", "--prefix", str(prefix)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    saved = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = str(prefix / "share" / "jupyter")
    try:
        manager, client = start_new_kernel(kernel_name="taskkernel-bash", startup_timeout=60)
    finally:
        if saved is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = saved
    try:
        outputs = []
        reply = client.execute_interactive("Y=5; echo y=$Y", timeout=60,
                                           output_hook=lambda m: outputs.append(m))
        assert reply["content"]["status"] == "ok"
        streams = "".join(m["content"]["text"] for m in outputs if m["header"]["msg_type"] == "stream")
        assert streams == "y=5\n"
        failed = client.execute_interactive("ls /nonexistent", timeout=60, output_hook=lambda m: None)
        assert failed["content"]["status"] == "error"
        matches = client.complete("ech", reply=True, timeout=30)["content"]["matches"]
        assert "echo" in matches
        banner = client.kernel_info(reply=True, timeout=15)["content"]["banner"]
        assert re.search(r"notebook [0-9a-f]{32}", banner)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def test_the_bash_notebook_through_the_gateway(kernels_service, tmp_path):
    """Jupyter Server's gateway protocol (taskkernel/gateway) on the bash engine: its kernelspec, a cell."""
    import asyncio

    from tests.conftest import start_gateway
    from tests.jupyter_ws import KernelSocket, of_type, reply_of
    from tests.test_gateway import call

    url, _ = start_gateway(kernels_service, output=tmp_path / "gateway.log")
    status, specs = call("GET", url + "/api/kernelspecs")
    assert status == 200 and specs["kernelspecs"]["bash"]["spec"]["language"] == "bash"
    status, model = call("POST", url + "/api/kernels", {"name": "bash"})
    assert status == 201, model

    async def scenario():
        ws = await KernelSocket.open(f"{url}/api/kernels/{model['id']}/channels")
        try:
            messages = await ws.execute("W=2; echo w=$W")
            return reply_of(messages)["content"], "".join(m["content"]["text"] for m in of_type(messages, "stream"))
        finally:
            ws.close()

    try:
        reply, text = asyncio.run(scenario())
        assert reply["status"] == "ok" and text == "w=2\n", (reply, text)
    finally:
        call("DELETE", f"{url}/api/kernels/{model['id']}")
