"""The Jupyter peers: ipykernel through jupyter_client (peer A) and jupyter-kernel-gateway (peer B).

Both are driven the way their users drive them. Peer A is a KernelManager that launches the
kernel and a BlockingKernelClient that sends execute_request on the shell socket and reads iopub
(ZMQ). Peer B is what a web front end does with the gateway: create a kernel over REST, then speak
the same messages as JSON over the kernel's websocket channels. A cell counts as finished, for
both, once its execute_reply and its iopub `idle` status are both in hand, which is what a front
end waits for before it shows the cell as done.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import socket
import time
import uuid
from pathlib import Path

SESSION = uuid.uuid4().hex


def peer_a_missing() -> str | None:
    """Why peer A cannot run here, or None when it can."""
    for module in ("ipykernel", "jupyter_client"):
        if importlib.util.find_spec(module) is None:
            return f"peer not installed ({module}; pip install -e '.[bench]')"
    return None


def peer_b_missing() -> str | None:
    """Why peer B cannot run here, or None when it can."""
    for module in ("ipykernel", "kernel_gateway", "websocket"):
        if importlib.util.find_spec(module) is None:
            return f"peer not installed ({module}; pip install -e '.[bench]')"
    return None


class _Outcome:
    """What one executed cell gave back: its result text and every stdout line count."""

    def __init__(self):
        self.result: str | None = None
        self.reply: dict | None = None
        self.idle = False
        self.lines = 0
        self.text: list[str] = []
        self.all_lines_at: float | None = None

    def take(self, msg_type: str, content: dict, want_lines: int, keep_text: bool) -> None:
        if msg_type == "execute_result":
            self.result = content["data"].get("text/plain")
        elif msg_type == "stream" and content.get("name") == "stdout":
            self.lines += content["text"].count("\n")
            if keep_text:
                self.text.append(content["text"])
            if want_lines and self.all_lines_at is None and self.lines >= want_lines:
                self.all_lines_at = time.perf_counter()
        elif msg_type == "status" and content.get("execution_state") == "idle":
            self.idle = True
        elif msg_type == "execute_reply":
            self.reply = content


class IPyKernel:
    """Peer A: one ipykernel, launched by jupyter_client and driven by its blocking client."""

    def __init__(self, runtime_dir: Path):
        from jupyter_client import KernelManager

        runtime_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = runtime_dir / "ipykernels.log"
        self.manager = KernelManager(kernel_name="python3",
                                     connection_file=str(runtime_dir / f"kernel-{uuid.uuid4().hex}.json"))
        self.client = None

    def start(self) -> "IPyKernel":
        """Launch the kernel and connect (does not wait for it to answer); its output goes to a log."""
        with open(self.log_path, "ab") as log:
            self.manager.start_kernel(stdout=log, stderr=log)
        self.client = self.manager.client()
        self.client.start_channels()
        return self

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        self.client.wait_for_ready(timeout=timeout_s)

    @property
    def pid(self) -> int:
        return self.manager.provisioner.pid

    def execute(self, code: str, timeout_s: float = 60.0, want_lines: int = 0, keep_text: bool = False) -> _Outcome:
        """Run `code`; return once its execute_reply and iopub idle are both in."""
        msg_id = self.client.execute(code)
        outcome = _Outcome()
        deadline = time.monotonic() + timeout_s
        while not outcome.idle:
            msg = self.client.get_iopub_msg(timeout=max(0.001, deadline - time.monotonic()))
            if msg["parent_header"].get("msg_id") == msg_id:
                outcome.take(msg["msg_type"], msg["content"], want_lines, keep_text)
        while outcome.reply is None:
            msg = self.client.get_shell_msg(timeout=max(0.001, deadline - time.monotonic()))
            if msg["parent_header"].get("msg_id") == msg_id:
                outcome.take(msg["msg_type"], msg["content"], want_lines, keep_text)
        return outcome

    def complete(self, code: str, timeout_s: float = 30.0) -> dict:
        msg_id = self.client.complete(code, len(code))
        deadline = time.monotonic() + timeout_s
        while True:
            msg = self.client.get_shell_msg(timeout=max(0.001, deadline - time.monotonic()))
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "complete_reply":
                return msg["content"]

    def close(self) -> None:
        try:
            if self.client is not None:
                self.client.stop_channels()
        finally:
            if self.manager.has_kernel:
                self.manager.shutdown_kernel(now=True)
            self.manager.cleanup_resources()


class GatewayKernel:
    """Peer B: one kernel of a jupyter-kernel-gateway, over REST and its websocket channels."""

    def __init__(self, port: int, quickack: bool = False, name: str = "python3"):
        """`quickack`: the client acknowledges every TCP segment at once (Linux TCP_QUICKACK), which
        shows how much of the gateway's latency is Nagle's algorithm waiting for a delayed ACK.
        `name`: the kernelspec (taskkernel's gateway, bench/gateway.py, names its engines)."""
        self.port = port
        self.name = name
        self.quickack = quickack and hasattr(socket, "TCP_QUICKACK")
        self.kernel_id = ""
        self.ws = None

    def _rest(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict | None]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=json.dumps(body) if body is not None else None,
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            return response.status, (json.loads(data) if data else None)
        finally:
            conn.close()

    def start(self) -> "GatewayKernel":
        """Create the kernel (REST) and open its channels (websocket), as a web front end does."""
        import websocket

        status, kernel = self._rest("POST", "/api/kernels", {"name": self.name})
        if status != 201:
            raise RuntimeError(f"kernel gateway answered {status}: {kernel}")
        self.kernel_id = kernel["id"]
        self.ws = websocket.create_connection(
            f"ws://127.0.0.1:{self.port}/api/kernels/{self.kernel_id}/channels?session_id={SESSION}", timeout=60)
        return self

    def _send(self, msg_type: str, content: dict) -> str:
        msg_id = uuid.uuid4().hex
        self.ws.send(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": msg_type, "username": "bench", "session": SESSION,
                       "date": "", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "content": content, "channel": "shell", "buffers": [],
        }))
        return msg_id

    def _recv(self) -> dict:
        msg = json.loads(self.ws.recv())
        if self.quickack:
            self.ws.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        return msg

    def execute(self, code: str, timeout_s: float = 60.0, want_lines: int = 0, keep_text: bool = False) -> _Outcome:
        msg_id = self._send("execute_request", {"code": code, "silent": False, "store_history": True,
                                                "user_expressions": {}, "allow_stdin": False,
                                                "stop_on_error": True})
        outcome = _Outcome()
        self.ws.settimeout(timeout_s)
        while not (outcome.idle and outcome.reply is not None):
            msg = self._recv()
            if msg["parent_header"].get("msg_id") == msg_id:
                outcome.take(msg["msg_type"], msg["content"], want_lines, keep_text)
        return outcome

    def complete(self, code: str, timeout_s: float = 30.0) -> dict:
        msg_id = self._send("complete_request", {"code": code, "cursor_pos": len(code)})
        self.ws.settimeout(timeout_s)
        while True:
            msg = self._recv()
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "complete_reply":
                return msg["content"]

    def close(self) -> None:
        try:
            if self.ws is not None:
                self.ws.close()
        finally:
            if self.kernel_id:
                self._rest("DELETE", f"/api/kernels/{self.kernel_id}")
