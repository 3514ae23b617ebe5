"""The Jupyter gateway (taskkernel/gateway): Jupyter Server's gateway protocol on taskkernel notebooks.

REST as GatewayClient reads it, and the kernel websocket with Jupyter's framing, against a real
`taskkernel gateway` process on the shared service (real Redis, real workers, the real sandbox).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import urllib.error
import urllib.request
import uuid

import pytest

from taskkernel.gateway import framing
from tests.conftest import start_gateway, wait_for
from tests.jupyter_ws import KernelSocket, of_type, reply_of

pytestmark = pytest.mark.timeout(120)


def call(method: str, url: str, body=None, headers: dict | None = None):
    """(status, decoded JSON or None) of one HTTP request."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw else None


@pytest.fixture
def kernel(gateway_url):
    """A python kernel started through the gateway, shut down after the test."""
    status, model = call("POST", gateway_url + "/api/kernels", {"name": "python"})
    assert status == 201, model
    try:
        yield model
    finally:
        call("DELETE", f"{gateway_url}/api/kernels/{model['id']}")


def channels(gateway_url: str, kernel: dict) -> str:
    return f"{gateway_url}/api/kernels/{kernel['id']}/channels"


# --- REST -------------------------------------------------------------------------------------

def test_kernelspecs_are_the_engines_with_a_default(gateway_url):
    status, specs = call("GET", gateway_url + "/api/kernelspecs")
    assert status == 200
    assert {"python", "ipython"} <= set(specs["kernelspecs"])
    assert specs["default"] == "ipython"
    python = specs["kernelspecs"]["python"]
    assert python["name"] == "python" and python["resources"] == {}
    assert python["spec"]["display_name"] == "Python 3" and python["spec"]["language"] == "python"
    assert call("GET", gateway_url + "/api/kernelspecs/python") == (200, python)
    status, error = call("GET", gateway_url + "/api/kernelspecs/cobol")
    assert status == 404 and error["error"] == "not_found"


def test_a_kernel_is_a_notebook_under_its_dashed_uuid(gateway_url, client, kernel):
    notebook_id = uuid.UUID(kernel["id"]).hex
    assert str(uuid.UUID(notebook_id)) == kernel["id"]
    assert client.notebook(notebook_id).refresh()["engine"] == "python"
    assert kernel["name"] == "python" and kernel["execution_state"] == "idle" and kernel["connections"] == 0
    # the exact format Jupyter Server's GatewayKernelManager parses
    when = dt.datetime.strptime(kernel["last_activity"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert abs((dt.datetime.utcnow() - when).total_seconds()) < 60
    assert call("GET", f"{gateway_url}/api/kernels/{kernel['id']}") == (200, kernel)
    status, listed = call("GET", gateway_url + "/api/kernels")
    assert status == 200 and kernel["id"] in [k["id"] for k in listed]


def test_start_tolerates_env_and_unknown_fields_and_refuses_unknown_engines(gateway_url):
    status, model = call("POST", gateway_url + "/api/kernels",
                         {"name": "python", "env": {"KERNEL_WORKING_DIR": "/tmp", "KERNEL_USERNAME": "ann"},
                          "something_new": [1, 2]})
    assert status == 201 and model["name"] == "python"
    assert call("DELETE", f"{gateway_url}/api/kernels/{model['id']}") == (204, None)
    status, error = call("GET", f"{gateway_url}/api/kernels/{model['id']}")
    assert status == 404 and error["error"] == "notebook_not_found"
    # what Jupyter Server asks for before it knows the gateway's default: the default engine
    status, model = call("POST", gateway_url + "/api/kernels", {"name": "python3"})
    assert status == 201 and model["name"] == "ipython"
    assert call("DELETE", f"{gateway_url}/api/kernels/{model['id']}") == (204, None)
    status, error = call("POST", gateway_url + "/api/kernels", {"name": "cobol"})
    assert status == 400 and error["error"] == "unknown_engine"
    status, error = call("POST", gateway_url + "/api/kernels", {"name": 3})
    assert status == 400 and error == {"error": "invalid_field", "message": "field 'name' must be a string",
                                       "field": "name"}
    status, error = call("GET", gateway_url + "/api/kernels/not-a-kernel")
    assert status == 404 and error["error"] == "not_found"


def test_a_kernel_runs_in_jupyters_working_directory_with_its_kernel_variables(gateway_url):
    """As Jupyter Server asks: KERNEL_* variables are the notebook's; a relative KERNEL_WORKING_DIR
    its cwd under the private home; Jupyter's other variables (and refused names) are left out."""
    status, model = call("POST", gateway_url + "/api/kernels", {"name": "python", "env": {
        "KERNEL_WORKING_DIR": "projects/one", "KERNEL_USERNAME": "ann",
        "JUPYTER_TOKEN": "secret", "PATH": "/evil"}})
    assert status == 201, model

    async def scenario():
        ws = await KernelSocket.open(channels(gateway_url, model))
        try:
            messages = await ws.execute("import os\nprint(os.getcwd(), os.environ.get('KERNEL_USERNAME'), "
                                        "'JUPYTER_TOKEN' in os.environ, os.environ['PATH'] != '/evil')")
            return "".join(m["content"]["text"] for m in of_type(messages, "stream"))
        finally:
            ws.close()

    try:
        assert asyncio.run(scenario()) == "/home/notebook/projects/one ann False True\n"
    finally:
        call("DELETE", f"{gateway_url}/api/kernels/{model['id']}")


def test_restart_keeps_the_kernel_id_and_starts_a_fresh_namespace(gateway_url, kernel):
    async def scenario():
        ws = await KernelSocket.open(channels(gateway_url, kernel))
        try:
            await ws.execute("x = 41")
            status, model = call("POST", f"{gateway_url}/api/kernels/{kernel['id']}/restart", {})
            assert status == 200 and model["id"] == kernel["id"]
            messages = await ws.execute("x")
            assert reply_of(messages)["content"]["status"] == "error"
            assert of_type(messages, "error")[0]["content"]["ename"] == "NameError"
            assert reply_of(messages)["content"]["execution_count"] == 1  # counts from 1 again
            states = [m["content"]["execution_state"] for m in ws.seen if m["msg_type"] == "status"]
            assert "restarting" in states  # every watcher hears of the restart on iopub
        finally:
            ws.close()

    asyncio.run(scenario())


def test_interrupt_over_rest_stops_the_running_cell(gateway_url, kernel):
    async def scenario():
        ws = await KernelSocket.open(channels(gateway_url, kernel))
        try:
            header = ws.send("execute_request", {"code": "import time\nprint('sleeping', flush=True)\ntime.sleep(60)"})
            while not any(m["msg_type"] == "stream" for m in ws.seen):
                await ws.next()
            assert call("POST", f"{gateway_url}/api/kernels/{kernel['id']}/interrupt", {}) == (204, None)
            messages = await ws.collect(header, timeout_s=30)
            assert reply_of(messages)["content"]["status"] == "error"
            assert of_type(messages, "error")[0]["content"]["ename"] == "KeyboardInterrupt"
        finally:
            ws.close()

    asyncio.run(scenario())


# --- the websocket ------------------------------------------------------------------------------

def test_a_cell_runs_under_the_requests_own_header_with_busy_and_idle_around_it(gateway_url, kernel):
    async def scenario():
        ws = await KernelSocket.open(channels(gateway_url, kernel))
        try:
            messages = await ws.execute("print('hello')\n6 * 7")
        finally:
            ws.close()
        types = [(m["channel"], m["msg_type"]) for m in messages]
        assert types == [("iopub", "status"), ("iopub", "execute_input"), ("iopub", "stream"),
                         ("iopub", "execute_result"), ("shell", "execute_reply"), ("iopub", "status")]
        assert [m["content"]["execution_state"] for m in of_type(messages, "status")] == ["busy", "idle"]
        assert of_type(messages, "stream")[0]["content"] == {"name": "stdout", "text": "hello\n"}
        assert of_type(messages, "execute_result")[0]["content"]["data"] == {"text/plain": "42"}
        reply = reply_of(messages)["content"]
        assert reply["status"] == "ok" and reply["execution_count"] == 1
        for m in messages:
            assert set(m["header"]) >= {"msg_id", "msg_type", "session", "username", "date", "version"}
            assert m["header"]["msg_type"] == m["msg_type"]

    asyncio.run(scenario())


def test_replies_go_to_the_asker_and_iopub_to_every_watcher(gateway_url, kernel):
    async def scenario():
        asker = await KernelSocket.open(channels(gateway_url, kernel))
        watcher = await KernelSocket.open(channels(gateway_url, kernel))
        try:
            status, model = call("GET", f"{gateway_url}/api/kernels/{kernel['id']}")
            assert model["connections"] == 2
            header = asker.send("execute_request", {"code": "print('to all')"})
            mine = await asker.collect(header)
            seen = await watcher.collect(header, reply=False)
            assert of_type(mine, "execute_reply") and not of_type(seen, "execute_reply")
            assert [m["content"]["text"] for m in of_type(seen, "stream")] == ["to all\n"]
            # a request other than execute: its reply and its busy/idle go to the asker only
            complete = asker.send("complete_request", {"code": "pri", "cursor_pos": 3})
            await asker.collect(complete)
            await watcher.execute("1")  # everything of the watcher's own is its own; nothing of `complete`
            assert not [m for m in watcher.seen if m["parent_header"].get("msg_id") == complete["msg_id"]]
        finally:
            asker.close()
            watcher.close()
        wait_for(lambda: call("GET", f"{gateway_url}/api/kernels/{kernel['id']}")[1]["connections"] == 0, 10,
                 "the closed websockets to be uncounted")

    asyncio.run(scenario())


def test_complete_inspect_is_complete_kernel_info_history_and_comm_info(gateway_url, kernel):
    async def scenario():
        ws = await KernelSocket.open(channels(gateway_url, kernel))
        try:
            await ws.execute("import math\nanswer = 42\nanswer")
            complete = reply_of(await ws.request("complete_request", {"code": "math.sq", "cursor_pos": 7}))
            assert complete["content"]["status"] == "ok" and "sqrt" in complete["content"]["matches"]
            assert complete["content"]["cursor_end"] == 7
            inspect = reply_of(await ws.request("inspect_request", {"code": "math.sqrt", "cursor_pos": 9,
                                                                    "detail_level": 0}))
            assert inspect["content"]["found"] and "sqrt" in json.dumps(inspect["content"]["data"])
            incomplete = reply_of(await ws.request("is_complete_request", {"code": "def f():"}))
            assert incomplete["content"]["status"] == "incomplete"
            info = reply_of(await ws.request("kernel_info_request", {}))["content"]
            assert info["status"] == "ok" and info["language_info"]["name"] == "python"
            assert info["protocol_version"] == "5.3" and info["implementation"] == "taskkernel"
            history = reply_of(await ws.request("history_request", {"hist_access_type": "tail", "n": 10,
                                                                    "output": True, "raw": True}))
            assert history["content"]["history"] == [[1, 1, ["import math\nanswer = 42\nanswer", "42"]]]
            comms = reply_of(await ws.request("comm_info_request", {}))
            assert comms["content"] == {"status": "ok", "comms": {}}
        finally:
            ws.close()

    asyncio.run(scenario())


def test_interrupt_request_on_control_and_a_completion_while_a_cell_runs(gateway_url, kernel):
    async def scenario():
        ws = await KernelSocket.open(channels(gateway_url, kernel))
        try:
            running = ws.send("execute_request", {"code": "import time\nprint('go', flush=True)\ntime.sleep(60)"})
            while not any(m["msg_type"] == "stream" for m in ws.seen):
                await ws.next()
            complete = reply_of(await ws.request("complete_request", {"code": "tim", "cursor_pos": 3}, timeout_s=20))
            assert "time" in complete["content"]["matches"]  # answered beside the running cell
            interrupt = reply_of(await ws.request("interrupt_request", {}, channel="control"))
            assert interrupt["channel"] == "control" and interrupt["content"]["status"] == "ok"
            messages = await ws.collect(running, timeout_s=30)
            assert of_type(messages, "error")[0]["content"]["ename"] == "KeyboardInterrupt"
        finally:
            ws.close()

    asyncio.run(scenario())


def test_a_failed_cell_aborts_the_queued_ones_with_stop_on_error(gateway_url, kernel):
    async def scenario():
        ws = await KernelSocket.open(channels(gateway_url, kernel))
        try:
            failing = ws.send("execute_request", {"code": "import time; time.sleep(0.5); 1/0", "stop_on_error": True})
            queued = ws.send("execute_request", {"code": "print('never')"})
            assert reply_of(await ws.collect(failing))["content"]["status"] == "error"
            messages = await ws.collect(queued)
            assert reply_of(messages)["content"]["status"] == "aborted"
            assert [m["content"]["execution_state"] for m in of_type(messages, "status")] == ["busy", "idle"]
            assert not of_type(messages, "stream")
        finally:
            ws.close()

    asyncio.run(scenario())


def test_binary_frames_carry_buffers(gateway_url, kernel):
    msg = framing.jupyter_message("comm_msg", {"data": {}}, None, "shell", session="s", buffers=[b"\x00\x01", b"xyz"])
    frame = framing.dump(msg)
    assert isinstance(frame, bytes)
    parsed = framing.parse(frame)
    assert parsed["buffers"] == [b"\x00\x01", b"xyz"] and parsed["header"] == msg["header"]
    assert framing.parse(framing.dump({**msg, "buffers": []}))["buffers"] == []

    async def scenario():  # a request that arrives as a binary frame is served like a text one
        ws = await KernelSocket.open(channels(gateway_url, kernel))
        try:
            messages = await ws.request("execute_request", {"code": "'binary'"}, buffers=[b"ignored"])
            assert of_type(messages, "execute_result")[0]["content"]["data"] == {"text/plain": "'binary'"}
        finally:
            ws.close()

    asyncio.run(scenario())


def test_shutdown_request_deletes_the_notebook_and_closes_the_socket(gateway_url, client):
    status, model = call("POST", gateway_url + "/api/kernels", {"name": "python"})
    assert status == 201

    async def scenario():
        ws = await KernelSocket.open(channels(gateway_url, model))
        reply = reply_of(await ws.request("shutdown_request", {"restart": False}, channel="control"))
        assert reply["content"] == {"status": "ok", "restart": False}
        with pytest.raises(ConnectionError):
            for _ in range(100):
                await ws.next(timeout_s=10)

    try:
        asyncio.run(scenario())
    finally:
        call("DELETE", f"{gateway_url}/api/kernels/{model['id']}")
    assert call("GET", f"{gateway_url}/api/kernels/{model['id']}")[0] == 404


def test_a_websocket_on_a_missing_kernel_is_a_json_404(gateway_url):
    async def scenario():
        with pytest.raises(Exception) as failure:
            await KernelSocket.open(f"{gateway_url}/api/kernels/{uuid.uuid4()}/channels")
        assert getattr(failure.value, "code", None) == 404

    asyncio.run(scenario())


# --- several gateways, tokens ----------------------------------------------------------------------

def test_a_second_gateway_process_watches_the_same_kernel(service, gateway_url, kernel):
    other_url, process = start_gateway(service)
    try:
        async def scenario():
            here = await KernelSocket.open(channels(gateway_url, kernel))
            there = await KernelSocket.open(channels(other_url, kernel))
            try:
                header = here.send("execute_request", {"code": "print('seen elsewhere')"})
                await here.collect(header)
                stream = None
                while stream is None:
                    msg = await there.next()
                    stream = msg if msg["msg_type"] == "stream" else None
                assert stream["content"]["text"] == "seen elsewhere\n"
                assert call("GET", f"{other_url}/api/kernels/{kernel['id']}")[1]["connections"] == 2
            finally:
                here.close()
                there.close()

        asyncio.run(scenario())
    finally:
        service.stop_process(process)


def test_with_a_token_the_jupyter_scheme_and_bearer_are_accepted(service, tmp_path):
    log = tmp_path / "gateway.log"
    url, process = start_gateway(service, output=log, token="s3cret-gateway", log_level="DEBUG")
    try:
        status, error = call("GET", url + "/api/kernels")
        assert status == 401 and error["error"] == "unauthorized"
        assert call("GET", url + "/api/kernels", headers={"Authorization": "token wrong"})[0] == 401
        assert call("GET", url + "/api/kernelspecs", headers={"Authorization": "token s3cret-gateway"})[0] == 200
        assert call("GET", url + "/api/kernels", headers={"Authorization": "Bearer s3cret-gateway"})[0] == 200

        async def refused():
            with pytest.raises(Exception) as failure:
                await KernelSocket.open(f"{url}/api/kernels/{uuid.uuid4()}/channels")
            assert getattr(failure.value, "code", None) == 401

        asyncio.run(refused())

        # a browser cannot set headers on a websocket: ?token= opens it, and never reaches the log
        status, model = call("POST", url + "/api/kernels", {"name": "python"},
                             headers={"Authorization": "token s3cret-gateway"})
        assert status == 201

        async def by_query():
            ws = await KernelSocket.open(f"{url}/api/kernels/{model['id']}/channels?token=s3cret-gateway")
            try:
                assert reply_of(await ws.request("kernel_info_request", {}))["content"]["status"] == "ok"
            finally:
                ws.close()

        try:
            asyncio.run(by_query())
        finally:
            call("DELETE", f"{url}/api/kernels/{model['id']}", headers={"Authorization": "Bearer s3cret-gateway"})
        wait_for(lambda: f"/api/kernels/{model['id']}/channels" in log.read_text(), 10, "the websocket's log line")
        assert "s3cret-gateway" not in log.read_text()
    finally:
        service.stop_process(process)


def test_requests_from_other_sites_and_hosts_are_refused(gateway_url):
    status, error = call("POST", gateway_url + "/api/kernels", {"name": "python"},
                         headers={"Origin": "https://evil.example"})
    assert status == 403 and error["error"] == "cross_site_request"
    status, error = call("GET", gateway_url + "/api/kernels", headers={"Host": "rebound.example"})
    assert status == 403 and error["error"] == "host_not_allowed"


# --- comms, stdin, execute_request flags (the engine's, from branch fidelity) -------------------------

def test_widgets_round_trip_over_the_websocket_with_their_buffers(gateway_url, kernel):
    async def scenario():
        ws = await KernelSocket.open(channels(gateway_url, kernel))
        try:
            header = ws.send("execute_request", {"code": (
                "import ipywidgets as w\nslider = w.IntSlider(value=1)\n"
                "slider.observe(lambda change: print('moved to', change['new']), 'value')\n"
                "image = w.Image(value=b'\\x89PNG-bytes', format='png')\nslider")})
            messages = await ws.collect(header)
            opens = {m["content"]["data"]["state"]["_model_name"]: m for m in of_type(messages, "comm_open")}
            slider, image = opens["IntSliderModel"], opens["ImageModel"]
            assert slider["channel"] == "iopub" and slider["parent_header"]["msg_id"] == header["msg_id"]
            assert image["buffers"] == [b"\x89PNG-bytes"]  # a binary frame, as Jupyter sends buffers
            comm_id = slider["content"]["comm_id"]
            info = reply_of(await ws.request("comm_info_request", {"target_name": "jupyter.widget"}))
            assert info["content"]["comms"][comm_id] == {"target_name": "jupyter.widget"}
            # the user moves the slider: the callback's print comes back under the comm_msg's header
            moved = await ws.request("comm_msg", {"comm_id": comm_id, "data": {
                "method": "update", "state": {"value": 7}, "buffer_paths": []}}, reply=False)
            assert [m["content"]["execution_state"] for m in of_type(moved, "status")] == ["busy", "idle"]
            while not [m for m in ws.seen if m["msg_type"] == "stream" and "moved to 7" in m["content"]["text"]]:
                await ws.next()
            (printed,) = [m for m in ws.seen if m["msg_type"] == "stream" and "moved to 7" in m["content"]["text"]]
            assert printed["parent_header"]["msg_id"] == moved[0]["parent_header"]["msg_id"]
            result = await ws.execute("slider.value")
            assert of_type(result, "execute_result")[0]["content"]["data"] == {"text/plain": "7"}
        finally:
            ws.close()

    asyncio.run(scenario())


def test_input_is_asked_on_stdin_of_the_asking_socket_and_answered_there(gateway_url, kernel):
    async def scenario():
        ws = await KernelSocket.open(channels(gateway_url, kernel))
        try:
            header = ws.send("execute_request", {"code": "name = input('who? ')\nprint('hi', name)",
                                                 "allow_stdin": True})
            asked = None
            while asked is None:
                msg = await ws.next()
                asked = msg if msg["msg_type"] == "input_request" else None
            assert asked["channel"] == "stdin" and asked["parent_header"]["msg_id"] == header["msg_id"]
            assert asked["content"] == {"prompt": "who? ", "password": False}
            ws.send("input_reply", {"value": "ann"}, channel="stdin")
            messages = await ws.collect(header)
            assert [m["content"]["text"] for m in of_type(messages, "stream")] == ["hi ann\n"]
        finally:
            ws.close()

    asyncio.run(scenario())


def test_silent_and_user_expressions_as_ipykernel_answers_them(gateway_url, kernel):
    async def scenario():
        ws = await KernelSocket.open(channels(gateway_url, kernel))
        try:
            quiet = await ws.execute("x = 6\nx * 7", silent=True)
            assert not of_type(quiet, "execute_input") and not of_type(quiet, "execute_result")
            loud = await ws.execute("x", user_expressions={"answer": "x * 7", "bad": "1/0"})
            reply = reply_of(loud)["content"]
            assert reply["execution_count"] == 1  # the silent cell did not count
            assert reply["user_expressions"]["answer"]["data"] == {"text/plain": "42"}
            assert reply["user_expressions"]["bad"]["status"] == "error"
        finally:
            ws.close()

    asyncio.run(scenario())
