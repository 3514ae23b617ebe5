"""A real `jupyter server --gateway-url=<taskkernel gateway>`: Jupyter's own server runs every kernel on
taskkernel, with no bridge process. Sessions, kernels, the websocket, interrupt and restart go through
Jupyter Server's REST API exactly as JupyterLab calls it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid

import pytest

pytest.importorskip("jupyter_server")

from tests.conftest import free_port  # noqa: E402
from tests.conftest import wait_for, _stop  # noqa: E402
from tests.jupyter_ws import KernelSocket, of_type, reply_of  # noqa: E402
from tests.test_gateway import call  # noqa: E402

pytestmark = pytest.mark.timeout(180)

TOKEN = uuid.uuid4().hex


@pytest.fixture(scope="module")
def jupyter(gateway_url, tmp_path_factory):
    """Jupyter Server on a free loopback port, its kernels on the gateway; stopped by PID."""
    root = tmp_path_factory.mktemp("jupyter-server")
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(root / "config"), "JUPYTER_DATA_DIR": str(root / "data"),
           "JUPYTER_RUNTIME_DIR": str(root / "runtime"), "JUPYTER_PLATFORM_DIRS": "1"}
    port = free_port()
    (root / "notebooks").mkdir()
    log = open(root / "jupyter-server.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", f"--gateway-url={gateway_url}", "--ip=127.0.0.1", f"--port={port}",
         "--no-browser", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root / 'notebooks'}",
         "--GatewayClient.request_timeout=60", *(["--allow-root"] if os.geteuid() == 0 else [])],
        env=env, stdout=log, stderr=log, start_new_session=True)
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(url + "/api/status"), 60, f"jupyter server on {url}", process)
        yield url
    finally:
        _stop(process)


def _answers(url: str) -> bool:
    try:
        return call("GET", url, headers=auth())[0] == 200
    except OSError:
        return False


def auth() -> dict:
    return {"Authorization": f"token {TOKEN}"}


@pytest.fixture
def session(jupyter):
    """A notebook session created through Jupyter Server's REST API, as JupyterLab opens a notebook."""
    status, model = call("POST", jupyter + "/api/sessions",
                         {"path": "work.ipynb", "name": "work.ipynb", "type": "notebook", "kernel": {"name": "python"}},
                         headers=auth())
    assert status == 201, model
    try:
        yield model
    finally:
        call("DELETE", f"{jupyter}/api/sessions/{model['id']}", headers=auth())


def test_jupyter_server_lists_taskkernels_engines_as_its_kernelspecs(jupyter):
    status, specs = call("GET", jupyter + "/api/kernelspecs", headers=auth())
    assert status == 200 and {"python", "ipython"} <= set(specs["kernelspecs"])
    # Jupyter Server adopts the gateway's default on its next fetch
    assert call("GET", jupyter + "/api/kernelspecs", headers=auth())[1]["default"] == "ipython"


def test_a_session_runs_its_kernel_on_taskkernel(jupyter, gateway_url, session, client):
    kernel_id = session["kernel"]["id"]
    assert client.notebook(uuid.UUID(kernel_id).hex).refresh()["engine"] == "python"
    status, listed = call("GET", jupyter + "/api/kernels", headers=auth())
    assert status == 200 and kernel_id in [k["id"] for k in listed]
    status, sessions = call("GET", jupyter + "/api/sessions", headers=auth())
    assert [s["kernel"]["id"] for s in sessions if s["id"] == session["id"]] == [kernel_id]


def test_execute_interrupt_and_restart_through_jupyter_server(jupyter, gateway_url, session):
    kernel_id = session["kernel"]["id"]
    channels = f"{jupyter}/api/kernels/{kernel_id}/channels?session_id={uuid.uuid4().hex}"

    async def scenario():
        ws = await KernelSocket.open(channels, headers=auth())
        try:
            messages = await ws.execute("print('through jupyter server')\nx = 6 * 7\nx")
            assert of_type(messages, "stream")[0]["content"]["text"] == "through jupyter server\n"
            assert of_type(messages, "execute_result")[0]["content"]["data"] == {"text/plain": "42"}
            assert reply_of(messages)["content"]["status"] == "ok"

            running = ws.send("execute_request", {"code": "import time\nprint('napping', flush=True)\ntime.sleep(60)"})
            while not of_type(ws.seen, "stream")[1:]:
                await ws.next()
            status, _ = call("POST", f"{jupyter}/api/kernels/{kernel_id}/interrupt", {}, headers=auth())
            assert status == 204
            interrupted = await ws.collect(running, timeout_s=30)
            assert of_type(interrupted, "error")[0]["content"]["ename"] == "KeyboardInterrupt"

            status, model = call("POST", f"{jupyter}/api/kernels/{kernel_id}/restart", {}, headers=auth())
            assert status == 200 and model["id"] == kernel_id
            after = await ws.execute("x")
            assert of_type(after, "error")[0]["content"]["ename"] == "NameError"  # a fresh namespace
            assert reply_of(after)["content"]["execution_count"] == 1
        finally:
            ws.close()

    asyncio.run(scenario())


def test_deleting_the_session_shuts_the_kernel_down_on_taskkernel(jupyter, gateway_url):
    status, model = call("POST", jupyter + "/api/sessions",
                         {"path": "gone.ipynb", "type": "notebook", "kernel": {"name": "python"}}, headers=auth())
    assert status == 201
    kernel_id = model["kernel"]["id"]
    assert call("GET", f"{gateway_url}/api/kernels/{kernel_id}")[0] == 200
    assert call("DELETE", f"{jupyter}/api/sessions/{model['id']}", headers=auth())[0] == 204
    assert call("GET", f"{gateway_url}/api/kernels/{kernel_id}")[0] == 404
    status, listed = call("GET", jupyter + "/api/kernels", headers=auth())
    assert kernel_id not in [k["id"] for k in listed]
