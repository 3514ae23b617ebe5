"""The bridge kernel keeps Jupyter's protocol rules, checked against ipykernel in the same run.

Every request gets a busy and an idle under its own parent header (JupyterLab waits for the idle of
complete and inspect), also while a cell runs; kernel_info says what ipykernel says about the
language; interrupt_request gets its interrupt_reply; comm_info and history answer.
"""

from __future__ import annotations

import time

import pytest

pytest.importorskip("jupyter_client")

from jupyter_client.manager import start_new_kernel  # noqa: E402

from bench.bridge_cost import run_cell  # noqa: E402
from tests.test_jupyter_kernel import KERNEL_NAME, jupyter_kernels, shell_reply, start_a_sleeping_cell  # noqa: E402,F401

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def bridge(jupyter_kernels):  # noqa: F811
    manager, client = start_new_kernel(kernel_name=KERNEL_NAME, startup_timeout=60)
    try:
        yield client
    finally:
        client.stop_channels()
        manager.shutdown_kernel()


@pytest.fixture(scope="module")
def ipykernel(jupyter_kernels):  # noqa: F811
    manager, client = start_new_kernel(kernel_name="python3", startup_timeout=60)
    try:
        yield client
    finally:
        client.stop_channels()
        manager.shutdown_kernel()


def statuses_of(client, msg_id: str, timeout_s: float = 30.0) -> list[str]:
    """The execution_state messages IOPub carries under `msg_id`, up to its idle."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while "idle" not in seen:
        msg = client.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
        if msg["msg_type"] == "status" and msg["parent_header"].get("msg_id") == msg_id:
            seen.append(msg["content"]["execution_state"])
    return seen


REQUESTS = {
    "complete": lambda c: c.complete("import ma", 9),
    "inspect": lambda c: c.inspect("len", 3),
    "is_complete": lambda c: c.is_complete("for i in range(3):"),
    "kernel_info": lambda c: c.kernel_info(),
    "history": lambda c: c.history(hist_access_type="tail", n=3),
    "comm_info": lambda c: c.comm_info(),
}


@pytest.mark.parametrize("request_type", REQUESTS)
def test_every_request_is_framed_by_busy_and_idle(bridge, request_type):
    msg_id = REQUESTS[request_type](bridge)
    reply = shell_reply(bridge, msg_id, timeout_s=30)
    assert reply["msg_type"] == f"{request_type}_reply" and reply["content"]["status"] != "error"
    assert statuses_of(bridge, msg_id) == ["busy", "idle"]


def test_requests_answered_beside_a_running_cell_have_their_own_busy_and_idle(bridge):
    cell = start_a_sleeping_cell(bridge, 4)
    asked = [REQUESTS[name](bridge) for name in ("complete", "inspect", "is_complete", "kernel_info")]
    # each request's own story, begun while the cell's busy still holds (a fresh engine's first
    # completion may take longer than the cell: its idle may come after the cell's)
    own: dict[str, list[str]] = {msg_id: [] for msg_id in [*asked, cell]}
    begun_while_running = set()
    deadline = time.monotonic() + 60
    while not all("idle" in states for states in own.values()):
        msg = bridge.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
        parent = msg["parent_header"].get("msg_id")
        if msg["msg_type"] == "status" and parent in own:
            own[parent].append(msg["content"]["execution_state"])
            if parent != cell and own[parent] == ["busy"] and "idle" not in own[cell]:
                begun_while_running.add(parent)
    assert all(own[msg_id] == ["busy", "idle"] for msg_id in asked), own
    assert begun_while_running == set(asked)
    replies = {}
    while len(replies) < len(asked) + 1:  # in whatever order they were answered
        msg = bridge.get_shell_msg(timeout=max(0.01, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") in own:
            replies[msg["parent_header"]["msg_id"]] = msg["content"]
    assert all(reply["status"] != "error" for reply in replies.values())
    assert replies[cell]["status"] == "ok"


def test_kernel_info_describes_the_language_as_ipykernel_does(bridge, ipykernel):
    ours = bridge.kernel_info(reply=True, timeout=30)["content"]
    theirs = ipykernel.kernel_info(reply=True, timeout=30)["content"]
    assert ours["status"] == "ok" and ours["implementation"] == "taskkernel"
    assert ours["protocol_version"] == theirs["protocol_version"]
    for key in ("name", "mimetype", "file_extension", "pygments_lexer", "codemirror_mode", "nbconvert_exporter"):
        assert ours["language_info"][key] == theirs["language_info"][key], key
    # what the cells cannot have on a worker is not claimed
    assert "debugger" not in ours["supported_features"]


def test_interrupt_request_gets_an_interrupt_reply_on_control(bridge):
    for running in (False, True):
        cell = start_a_sleeping_cell(bridge, 60) if running else None
        msg = bridge.session.msg("interrupt_request", {})
        bridge.control_channel.send(msg)
        deadline = time.monotonic() + 30
        while True:
            reply = bridge.get_control_msg(timeout=max(0.01, deadline - time.monotonic()))
            if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
                break
        assert (reply["msg_type"], reply["content"]["status"]) == ("interrupt_reply", "ok")
        if cell is not None:
            assert shell_reply(bridge, cell, timeout_s=30)["content"]["ename"] == "KeyboardInterrupt"
    assert run_cell(bridge, "'still here'")["status"] == "ok"


def test_is_complete_and_history_answer_as_on_ipykernel(bridge, ipykernel):
    for code, status in (("x = 1", "complete"), ("for i in range(3):", "incomplete"), ("1 +* 2", "invalid")):
        for client in (bridge, ipykernel):
            reply = shell_reply(client, client.is_complete(code), timeout_s=30)["content"]
            assert reply["status"] == status, (code, reply)
    for client in (bridge, ipykernel):
        run_cell(client, "marker = 'history'")
        history = client.history(hist_access_type="tail", n=1, output=False, raw=True, reply=True,
                                 timeout=30)["content"]["history"]
        assert [entry[2] for entry in history] == ["marker = 'history'"]


def test_comm_info_answers_with_no_comms_open(bridge):
    reply = bridge.comm_info(reply=True, timeout=30)["content"]
    assert reply == {"status": "ok", "comms": {}}
