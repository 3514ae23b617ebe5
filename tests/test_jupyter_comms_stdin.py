"""Comms and stdin through the bridge: widgets both ways, comm_info, input() on Jupyter's stdin channel.

The engine side (the comm package, input_request on the feed, the comms and input endpoints) is
tests/test_comms.py and tests/test_stdin.py; here a jupyter_client front end drives a bridge kernel.
"""

from __future__ import annotations

import time

import pytest

pytest.importorskip("ipywidgets")

from jupyter_client.manager import start_new_kernel  # noqa: E402

from bench.bridge_cost import run_cell  # noqa: E402
from tests.test_jupyter_kernel import KERNEL_NAME, jupyter_kernels, shell_reply  # noqa: E402,F401

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def bridge(jupyter_kernels):  # noqa: F811
    manager, client = start_new_kernel(kernel_name=KERNEL_NAME, startup_timeout=60)
    try:
        yield manager, client
    finally:
        client.stop_channels()
        manager.shutdown_kernel()


def iopub_until_idle(client, msg_id: str, timeout_s: float = 60) -> list[dict]:
    """The IOPub messages under `msg_id` up to its idle."""
    found = []
    deadline = time.monotonic() + timeout_s
    while True:
        msg = client.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") == msg_id:
            found.append(msg)
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return found


def result_of(client, code: str) -> str:
    msg_id = client.execute(code)
    for msg in iopub_until_idle(client, msg_id):
        if msg["msg_type"] == "execute_result":
            return msg["content"]["data"]["text/plain"]
    raise AssertionError(f"no result for {code!r}: {shell_reply(client, msg_id)['content']}")


def open_slider(client) -> str:
    """Show an IntSlider; the comm_id of its model, from the comm_open on IOPub."""
    msg_id = client.execute("import ipywidgets as w\nslider = w.IntSlider(value=3, max=10)\nslider")
    for msg in iopub_until_idle(client, msg_id):
        if msg["msg_type"] == "comm_open" and \
                msg["content"]["data"].get("state", {}).get("_model_name") == "IntSliderModel":
            assert msg["content"]["target_name"] == "jupyter.widget"
            # JupyterLab's widget manager refuses a comm_open without the protocol version
            assert msg["metadata"]["version"].split(".")[0] == "2"
            return msg["content"]["comm_id"]
    raise AssertionError("no comm_open of an IntSliderModel")


def move(client, comm_id: str, value: int) -> str:
    """What JupyterLab sends when the user drags the slider."""
    msg = client.session.msg("comm_msg", {"comm_id": comm_id, "data": {
        "method": "update", "state": {"value": value}, "buffer_paths": []}})
    client.shell_channel.send(msg)
    return msg["header"]["msg_id"]


def test_a_widget_round_trip_through_the_bridge(bridge):
    _, client = bridge
    comm_id = open_slider(client)
    moved = move(client, comm_id, 7)
    echoed = iopub_until_idle(client, moved)  # ipywidgets echoes the update under the front end's message
    assert [m["msg_type"] for m in echoed if m["msg_type"] != "status"] == ["comm_msg"], echoed
    assert echoed[1]["content"]["data"]["method"] == "echo_update" and echoed[1]["content"]["comm_id"] == comm_id
    assert result_of(client, "slider.value") == "7"
    info = client.comm_info(target_name="jupyter.widget", reply=True, timeout=30)["content"]
    assert info["status"] == "ok" and info["comms"][comm_id] == {"target_name": "jupyter.widget"}


def test_a_slider_moved_during_a_loop_is_seen_by_the_loop(bridge):
    _, client = bridge
    comm_id = open_slider(client)
    looping = client.execute("import time\nprint('looping', flush=True)\ndeadline = time.time() + 60\n"
                             "while slider.value != 9 and time.time() < deadline:\n    time.sleep(0.05)\n"
                             "print('saw', slider.value)")
    deadline = time.monotonic() + 60
    while True:
        msg = client.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
        if msg["msg_type"] == "stream" and "looping" in msg["content"]["text"]:
            break
    started = time.monotonic()
    move(client, comm_id, 9)
    texts = "".join(m["content"]["text"] for m in iopub_until_idle(client, looping) if m["msg_type"] == "stream")
    assert "saw 9" in texts and time.monotonic() - started < 30


def test_input_is_asked_on_the_stdin_channel_and_answered(bridge):
    _, client = bridge
    msg_id = client.execute("name = input('your name: ')\nprint('hello', name)", allow_stdin=True)
    request = client.get_stdin_msg(timeout=60)
    assert request["msg_type"] == "input_request" and request["parent_header"]["msg_id"] == msg_id
    assert request["content"] == {"prompt": "your name: ", "password": False}
    client.input("Ada")
    texts = "".join(m["content"]["text"] for m in iopub_until_idle(client, msg_id) if m["msg_type"] == "stream")
    assert "hello Ada" in texts
    assert shell_reply(client, msg_id)["content"]["status"] == "ok"


def test_getpass_asks_for_a_password(bridge):
    _, client = bridge
    msg_id = client.execute("import getpass\nsecret = getpass.getpass('pin: ')", allow_stdin=True)
    request = client.get_stdin_msg(timeout=60)
    assert request["content"] == {"prompt": "pin: ", "password": True}
    client.input("1234")
    assert shell_reply(client, msg_id, timeout_s=60)["content"]["status"] == "ok"
    assert result_of(client, "len(secret)") == "4"


def test_input_without_stdin_raises_as_on_ipykernel(bridge):
    _, client = bridge
    msg_id = client.execute("input('never asked: ')", allow_stdin=False)  # as nbclient sends every cell
    reply = shell_reply(client, msg_id, timeout_s=60)["content"]
    assert (reply["status"], reply["ename"]) == ("error", "StdinNotImplementedError")


def test_an_interrupt_ends_a_cell_waiting_for_input(bridge):
    manager, client = bridge
    msg_id = client.execute("input('waiting: ')", allow_stdin=True)
    assert client.get_stdin_msg(timeout=60)["msg_type"] == "input_request"
    manager.interrupt_kernel()
    reply = shell_reply(client, msg_id, timeout_s=30)["content"]
    assert (reply["status"], reply["ename"]) == ("error", "KeyboardInterrupt")
    assert run_cell(client, "40 + 2")["status"] == "ok"
