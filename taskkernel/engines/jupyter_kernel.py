"""An installed Jupyter kernel as a notebook's engine: an engine file's `kernelspec = "bash"`.

The engine process stays what it is for every engine (the worker <-> engine protocol of wire.py
does not change); this engine launches the kernel as its own child, inside the same sandbox (same
uid, rlimits, network namespace, working directory and environment), and speaks Jupyter's
protocol to it with jupyter_client's Session over ZMQ `ipc` sockets in a private 0700 directory:
no TCP port exists, so nothing outside the sandbox's mount namespace can reach the kernel, and the
connection file with its key (new at each launch) is readable by the engine's uid alone. The
kernel runs the cell's code, so it holding the key gives the cell nothing it did not have.

The kernelspec is found by the worker (workers/kernelspecs.py, in the service's Jupyter path:
only specs the operator installed) and arrives resolved in the engine spec's `kernel` field; a
cell cannot add or change one. One I/O thread owns every ZMQ socket (they are not thread-safe):
other threads queue what they send and wake it through a pipe. The kernel's iopub messages go
to the worker as events naming their parent (the cell, or the front end's comm message), so the
worker treats them exactly as a Python engine's; when the kernel dies, this process dies the same
way, and the worker reports the death as for any engine.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import secrets
import signal
import sys
import tempfile
import threading
import time

import zmq
from jupyter_client.connect import write_connection_file
from jupyter_client.launcher import launch_kernel
from jupyter_client.session import Session

from taskkernel.engines import namespace, parents
from taskkernel.engines.base import Engine

READY_TIMEOUT_S = 60.0  # a kernel's start (R, Julia) may take this long
REQUEST_TIMEOUT_S = 60.0  # complete/inspect wait behind a running cell in the kernel's shell queue
KERNEL_INFO_RETRY_S = 0.2  # until the iopub subscription is live (ZMQ's slow joiner), as wait_for_ready
PARENTS_KEPT = 1024  # kernel msg_id -> taskkernel parent, for output that comes late
# iopub messages that are outputs or comm traffic, passed on under their parent
PASSED_ON = ("stream", "display_data", "update_display_data", "clear_output", "execute_result", "error",
             "comm_open", "comm_msg", "comm_close")
# execute_reply fields the worker may take (the rest of a kernel's reply is its own business)
REPLY_FIELDS = ("status", "execution_count", "user_expressions", "payload", "ename", "evalue", "traceback")
CHANNELS = ("shell", "iopub", "stdin", "control")
PYTHON_NAMES = ("python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info[:2]))


class KernelEngine(Engine):
    """A Jupyter kernel, run by this engine process in its sandbox."""

    requests_wait = True  # complete/inspect/is_complete wait on the kernel: answered on threads of their own

    def __init__(self, spec: dict | None = None):
        super().__init__(spec)
        self.kernel = dict(self.spec.get("kernel") or {})
        if not self.kernel.get("argv"):
            raise RuntimeError(f"engine {self.spec.get('name')!r}: no resolved kernelspec in its spec")
        self.language = self.kernel.get("language") or self.spec.get("language") or ""
        self.interrupt_mode = self.kernel.get("interrupt_mode") or "signal"
        self.kernel_info: dict = {}
        self.process = None
        self._directory = ""
        self._connection_file = ""
        self._session: Session | None = None
        self._outgoing: queue.SimpleQueue = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        self._lock = threading.Lock()
        self._waiting: dict[str, queue.SimpleQueue] = {}  # kernel msg_id -> its replies (and idle)
        self._parents: collections.OrderedDict[str, dict] = collections.OrderedDict()
        self._running_msg = ""  # the execute_request in the kernel now
        self._code_started = False  # its execute_input came: the kernel runs the cell's code
        self._interrupt_again = False  # interrupted before that: interrupt once more when it starts
        self._input_pending = False
        self._retired: set[int] = set()  # pids of kernels we stopped ourselves (a restart): no death

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._directory = tempfile.mkdtemp(prefix="taskkernel-kernel-")  # 0700, in the sandbox's own /tmp
        self._connection_file = os.path.join(self._directory, "connection.json")
        key = secrets.token_hex(32).encode()
        write_connection_file(self._connection_file, transport="ipc", ip=os.path.join(self._directory, "k"),
                              key=key, kernel_name=str(self.spec.get("kernelspec", "")))
        self._session = Session(key=key, username="taskkernel")
        with open(self._connection_file) as handle:
            info = json.load(handle)
        self._sockets = self._connect(info)
        threading.Thread(target=self._io_loop, name="taskkernel-kernel-io", daemon=True).start()
        self._launch()

    def _connect(self, info: dict) -> dict:
        context = zmq.Context.instance()
        kinds = {"shell": zmq.DEALER, "iopub": zmq.SUB, "stdin": zmq.DEALER, "control": zmq.DEALER}
        sockets = {}
        for channel in CHANNELS:
            sock = context.socket(kinds[channel])
            sock.linger = 0
            if channel in ("shell", "stdin"):  # the kernel sends input_request to the shell's identity
                sock.identity = self._session.bsession
            if channel == "iopub":
                sock.setsockopt(zmq.SUBSCRIBE, b"")
            sock.connect(f"ipc://{info['ip']}-{info[channel + '_port']}")
            sockets[channel] = sock
        return sockets

    def _launch(self) -> None:
        """Start the kernel (in this process's cwd and environment) and wait until it answers."""
        resource_dir = str(self.kernel.get("resource_dir") or "")
        argv = [str(a).replace("{connection_file}", self._connection_file).replace("{resource_dir}", resource_dir)
                for a in self.kernel["argv"]]
        if argv[0] in PYTHON_NAMES:  # as jupyter_client's KernelManager: the launching interpreter
            argv[0] = sys.executable
        env = {**os.environ, **{str(k): str(v) for k, v in (self.kernel.get("env") or {}).items()}}
        # the kernel's fds 1 and 2 are this process's: the worker's pipes (C code's output, start-up noise)
        self.process = launch_kernel(argv, env=env, cwd=os.getcwd())
        process = self.process
        threading.Thread(target=self._watch, args=(process,), name="taskkernel-kernel-watch", daemon=True).start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:  # kernel_info until both its reply and an iopub message come (the SUB is live)
            if process.poll() is not None:
                raise RuntimeError(f"the kernel exited at start ({process.returncode}): {' '.join(argv)}")
            msg = self._session.msg("kernel_info_request", {})
            answers = self._expect(msg["header"]["msg_id"])
            self._send("shell", msg)
            reply, seen_iopub = None, False
            wait_until = time.monotonic() + KERNEL_INFO_RETRY_S
            while time.monotonic() < wait_until and not (reply and seen_iopub):
                try:
                    kind, got = answers.get(timeout=max(0.01, wait_until - time.monotonic()))
                except queue.Empty:
                    continue
                if kind == "reply":
                    reply = got
                    wait_until = max(wait_until, time.monotonic() + KERNEL_INFO_RETRY_S)
                else:
                    seen_iopub = True
            self._forget(msg["header"]["msg_id"])
            if reply and seen_iopub:
                self.kernel_info = reply["content"]
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the kernel did not answer kernel_info in {READY_TIMEOUT_S:g} s")

    def _watch(self, process) -> None:
        """The kernel's death is this engine's: die as it died, so the worker reports it as for any engine."""
        code = process.wait()
        if process.pid in self._retired:
            return
        os.write(2, f"[taskkernel] the kernel exited ({code})\n".encode())
        if code < 0:
            if signal.getsignal(-code) in (signal.SIG_DFL, None):  # SIGKILL, SIGSEGV, SIGTERM: the same death
                os.kill(os.getpid(), -code)
                time.sleep(1)
            os._exit(128 + -code)  # a signal this process handles itself: the shell's way of saying it
        os._exit(code if 0 < code < 256 else 1)

    def restart_kernel(self) -> None:
        """A fresh kernel on the same connection (our sockets reconnect by themselves)."""
        old = self.process
        self._retired.add(old.pid)
        try:
            os.killpg(old.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        old.wait()
        self._launch()

    # --- the I/O thread -----------------------------------------------------------------------

    def _send(self, channel: str, msg: dict, buffers=()) -> None:
        self._outgoing.put((channel, msg, list(buffers)))
        os.write(self._wake_w, b"x")

    def _expect(self, msg_id: str) -> queue.SimpleQueue:
        answers: queue.SimpleQueue = queue.SimpleQueue()
        with self._lock:
            self._waiting[msg_id] = answers
        return answers

    def _forget(self, msg_id: str) -> None:
        with self._lock:
            self._waiting.pop(msg_id, None)

    def _io_loop(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        poller = zmq.Poller()
        for sock in self._sockets.values():
            poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        by_socket = {sock: channel for channel, sock in self._sockets.items()}
        while True:
            for sock, _ in poller.poll():
                if sock == self._wake_r:
                    os.read(self._wake_r, 4096)
                    while True:
                        try:
                            channel, msg, buffers = self._outgoing.get_nowait()
                        except queue.Empty:
                            break
                        self._session.send(self._sockets[channel], msg, buffers=buffers or None)
                    continue
                while True:
                    try:
                        idents, raw = self._session.feed_identities(sock.recv_multipart(zmq.NOBLOCK), copy=True)
                    except zmq.Again:
                        break
                    try:
                        msg = self._session.deserialize(raw, content=True, copy=True)
                    except Exception as exc:  # a bad signature: not our kernel's message
                        os.write(2, f"[taskkernel] dropped a kernel message: {exc!r}\n".encode())
                        continue
                    self._received(by_socket[sock], msg)

    def _received(self, channel: str, msg: dict) -> None:
        msg_type = msg["header"].get("msg_type", "")
        parent_id = (msg.get("parent_header") or {}).get("msg_id", "")
        with self._lock:
            answers = self._waiting.get(parent_id)
            parent = self._parents.get(parent_id)
            running = parent_id and parent_id == self._running_msg
        if channel in ("shell", "control"):
            if answers is not None:
                answers.put(("reply", msg))
            return
        if channel == "stdin":
            if msg_type == "input_request" and parent is not None:
                self._input_pending = True
                self.publish("input_request", {"prompt": str(msg["content"].get("prompt", "")),
                                               "password": bool(msg["content"].get("password"))}, parent)
            return
        if msg_type == "execute_input" and running:
            with self._lock:
                self._code_started = True
                again, self._interrupt_again = self._interrupt_again, False
            if again:
                self._interrupt_kernel()
        if msg_type in PASSED_ON and parent is not None:
            self.publish(msg_type, msg["content"], parent, msg.get("metadata") or {}, msg.get("buffers") or [])
        if answers is not None and (msg_type != "status" or msg["content"].get("execution_state") == "idle"):
            answers.put(("iopub", msg))

    def _remember(self, msg_id: str, parent: dict) -> None:
        with self._lock:
            self._parents[msg_id] = parent
            while len(self._parents) > PARENTS_KEPT:
                self._parents.popitem(last=False)

    # --- requests -------------------------------------------------------------------------------

    def _ask(self, msg_type: str, content: dict, timeout_s: float = REQUEST_TIMEOUT_S) -> dict:
        """One shell request and its reply's content."""
        msg = self._session.msg(msg_type, content)
        msg_id = msg["header"]["msg_id"]
        answers = self._expect(msg_id)
        self._send("shell", msg)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                kind, got = answers.get(timeout=max(0.01, deadline - time.monotonic()))
                if kind == "reply":
                    return got["content"]
        except queue.Empty:
            raise TimeoutError(f"the kernel did not answer {msg_type} in {timeout_s:g} s") from None
        finally:
            self._forget(msg_id)

    def execute(self, code: str, emit, *, silent: bool = False, store_history: bool = True,
                user_expressions: dict | None = None) -> dict:
        """Run a cell in the kernel; its outputs reach the worker from the I/O thread, before this returns."""
        cell = parents.current()
        msg = self._session.msg("execute_request", {
            "code": code, "silent": silent, "store_history": store_history,
            "user_expressions": user_expressions or {}, "allow_stdin": self.allow_stdin, "stop_on_error": False})
        msg_id = msg["header"]["msg_id"]
        self._remember(msg_id, cell)
        answers = self._expect(msg_id)
        with self._lock:
            self._running_msg, self._code_started, self._interrupt_again = msg_id, False, False
        try:
            self.enter_user_code()  # an interrupt that came first: the cell is not run
        except KeyboardInterrupt:
            self.running_user_code = False
            self._forget(msg_id)
            error = {"ename": "KeyboardInterrupt", "evalue": "", "traceback": ["KeyboardInterrupt: "]}
            self.publish("error", error, cell)
            return {"status": "error", "execution_count": self.execution_count, **error}
        self._send("shell", msg)
        reply = None
        idle = False
        try:
            while reply is None or not idle:  # the reply on shell, and the idle after the outputs on iopub
                kind, got = answers.get()
                if kind == "reply" and got["header"].get("msg_type") == "execute_reply":
                    reply = got["content"]
                elif kind == "iopub" and got["header"].get("msg_type") == "status":
                    idle = True
        finally:
            self.running_user_code = False
            self._input_pending = False
            self._forget(msg_id)
            with self._lock:
                self._running_msg = ""
        reply = {k: reply[k] for k in REPLY_FIELDS if k in reply}
        if reply.get("status") == "abort":  # an older kernel's word for an interrupted cell
            reply["status"] = "aborted"
        if isinstance(reply.get("execution_count"), int):
            self.execution_count = reply["execution_count"]
        return reply

    def interrupt_user_code(self) -> None:
        with self._lock:
            if not self._code_started:
                self._interrupt_again = True  # the kernel has not begun the cell's code: once more when it does
        self._interrupt_kernel()

    def _interrupt_kernel(self) -> None:
        """As jupyter_client's KernelManager: SIGINT to the kernel's process group, or interrupt_request."""
        if self.interrupt_mode == "message":
            self._send("control", self._session.msg("interrupt_request", {}))
            return
        try:
            os.killpg(self.process.pid, signal.SIGINT)
        except ProcessLookupError:
            pass

    def complete(self, code: str, cursor_pos: int) -> dict:
        return self._ask("complete_request", {"code": code, "cursor_pos": cursor_pos})

    def inspect(self, code: str, cursor_pos: int, detail_level: int = 0) -> dict:
        return self._ask("inspect_request", {"code": code, "cursor_pos": cursor_pos, "detail_level": detail_level})

    def is_complete(self, code: str) -> dict:
        return self._ask("is_complete_request", {"code": code})

    def perform(self, op: str, request: dict, buffers: list[bytes]):
        """Comms, stdin and the workspace go to the kernel; namespace operations do not exist here."""
        if op == "comm":
            msg = self._session.msg(str(request["msg_type"]), request.get("content") or {},
                                    metadata=request.get("metadata") or {})
            self._remember(msg["header"]["msg_id"], request.get("parent") or {})
            self._send("shell", msg, buffers)
            return {}, []  # delivered: the kernel runs its handler in its own order
        if op == "comm_info":
            fields = {"target_name": request["target_name"]} if request.get("target_name") else {}
            return self._ask("comm_info_request", fields), []
        if op == "input_reply":
            if not self._input_pending:
                return {"delivered": False}, []
            self._input_pending = False
            self._send("stdin", self._session.msg("input_reply", {"value": str(request.get("value", ""))}))
            return {"delivered": True}, []
        if op == "workspace":
            from taskkernel.engines.process import enter_workspace

            entered = enter_workspace(request["cwd"], request["env"])
            self.restart_kernel()  # no cell has run yet: the kernel starts again in the notebook's cwd and env
            return entered, []
        if op in ("push", "pull", "checkpoint", "restore"):
            raise namespace.NamespaceError(
                "not_supported_by_engine",
                f"{op} needs a Python namespace; engine {self.spec.get('name')!r} runs the Jupyter kernel "
                f"{self.spec.get('kernelspec')!r}")
        return NotImplemented
