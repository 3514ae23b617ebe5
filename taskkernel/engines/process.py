"""The engine process: one notebook's namespace, the untrusted side of the worker boundary.

Started by its worker with exec (inside the sandbox), as `python -I -m taskkernel.engines.process
--socket-fd N`, with the socket to its worker inherited as fd N and pipes as fds 1 and 2 that the
worker reads (output of C code and child processes; Python's own prints travel as `stream` frames
on the socket, see streams.py). It holds no Redis connection, URL, password, token or
settings: everything it knows comes in the `init` frame (its engine spec and limits). The main
thread runs cells and namespace operations in order; a reader thread answers complete, inspect
and is_complete at once, even while a cell runs, and hands input values to a waiting input()
(engines/stdin.py); a comm thread hands front-end comm messages to their widgets (engines/comms.py)
in order, also while a cell runs, so a slow widget callback delays no other request. SIGINT
interrupts the running cell. Every event names the parent it belongs to (engines/parents.py).
"""

from __future__ import annotations

import os
import queue
import resource
import signal
import socket
import sys
import threading

from taskkernel.engines import comms, namespace, parents, registry, wire
from taskkernel.engines.base import Engine
from taskkernel.engines.stdin import Stdin
from taskkernel.engines.streams import StreamSet

INSTANT_OPS = ("complete", "inspect", "is_complete", "comm_info", "input_reply")
INTERRUPT_OP = "interrupt"  # {"request": the execute's id}: no reply; handled on the reader thread
COMM_OPS = ("comm",)  # handled in order on the comm thread
# a cell's events that go out with the next frame rather than alone (the worker announces the
# cell's start itself; a value or an error is followed by the reply at once)
HELD_EVENTS = ("execute_input", "execute_result", "error")
# [limits] key in an engine file -> the rlimit the engine sets on itself before any user code
RLIMITS = {
    "memory_bytes": resource.RLIMIT_AS,
    "processes": resource.RLIMIT_NPROC,
    "open_files": resource.RLIMIT_NOFILE,
    "file_bytes": resource.RLIMIT_FSIZE,
}


class NoStdin:
    """sys.stdin of an engine: reading fails at once instead of hanging the notebook."""

    def _refuse(self, *args, **kwargs):
        raise OSError("taskkernel cells cannot read standard input (input() is not supported)")

    read = readline = readlines = __next__ = _refuse

    def __iter__(self):
        return self

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return 0

    def close(self) -> None:
        pass

    closed = False
    encoding = "utf-8"


class EngineServer:
    """Serves one engine over the worker's socket until the worker goes away."""

    def __init__(self, sock: socket.socket, engine: Engine, streams: StreamSet):
        self.sock = sock
        self.engine = engine
        self.streams = streams
        self._send_lock = threading.Lock()
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._comm_work: queue.SimpleQueue = queue.SimpleQueue()
        # interrupts are of one execute request: the one running, or one still queued behind it
        self._interrupt_lock = threading.Lock()
        self._started_rid = 0  # the execute the main thread took last (ids only grow)
        self._finished_rid = 0
        self._early_interrupts: set[int] = set()
        self.stdin = Stdin(lambda prompt, password: self.send_event(
            "input_request", {"prompt": prompt, "password": password}, parents.current()))
        engine.emit_elsewhere = lambda msg_type, content: self.send_event(msg_type, content, parents.current())
        engine.publish = self.send_event

    def send(self, message: dict, buffers=()) -> None:
        self.streams.flush()  # what the cell printed goes out before this frame
        self.send_now(message, buffers)

    def send_now(self, message: dict, buffers=()) -> None:
        with self._send_lock:
            wire.send(self.sock, message, buffers)

    def send_stream(self, name: str, text: str, parent: dict) -> None:
        self.send_now({"event": "stream", "content": {"name": name, "text": text}, "parent": parent})

    def send_event(self, msg_type: str, content: dict, parent: dict, metadata: dict | None = None,
                   buffers=()) -> None:
        """An event outside the running cell's frames: a comm's, an input request, a thread's."""
        event = {"event": msg_type, "content": content, "parent": parent}
        if metadata:
            event["metadata"] = metadata
        self.send(event, buffers)

    def publish_comm(self, msg_type: str, content: dict, metadata: dict, buffers: list, parent: dict) -> None:
        self.send_event(msg_type, content, parent, metadata, buffers)

    def serve(self) -> None:
        threading.Thread(target=self._read_loop, name="taskkernel-engine-reader", daemon=True).start()
        threading.Thread(target=self._comm_loop, name="taskkernel-engine-comms", daemon=True).start()
        self.send({"ready": True, "pid": os.getpid()})
        while True:
            request, buffers = self._work.get()
            if request is None:
                return
            self._answer(request, buffers)

    def _read_loop(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # interrupts are for the main thread
        try:
            while True:
                request, buffers = wire.receive(self.sock)
                if request.get("op") == INTERRUPT_OP:
                    self._interrupt(int(request.get("request") or 0))
                elif request.get("op") in INSTANT_OPS and self.engine.requests_wait:
                    threading.Thread(target=self._answer, args=(request, buffers), daemon=True,
                                     name="taskkernel-engine-request").start()
                elif request.get("op") in INSTANT_OPS:
                    self._answer(request, buffers)
                elif request.get("op") in COMM_OPS:
                    self._comm_work.put((request, buffers))
                else:
                    self._work.put((request, buffers))
        except (EOFError, OSError):
            os._exit(0)  # the worker is gone: so is this notebook

    def _interrupt(self, rid: int) -> None:
        """KeyboardInterrupt in execute `rid`: at once if its code runs, when it begins if it is
        queued or still being set up, not at all if it has finished (a late interrupt is nobody's)."""
        with self._interrupt_lock:
            if rid > self._started_rid:
                self._early_interrupts.add(rid)
                return
            if rid != self._started_rid or rid == self._finished_rid:
                return
            self.engine.interrupt_pending = True
            running = self.engine.running_user_code
        if running:
            self.engine.interrupt_user_code()

    def _comm_loop(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        while True:
            self._answer(*self._comm_work.get())

    def _answer(self, request: dict, buffers: list[bytes]) -> None:
        rid, op = request.get("id"), request.get("op")
        if op == "execute":
            self._execute(request)
            return
        try:
            reply, out = self._perform(op, request, buffers)
        except namespace.NamespaceError as exc:
            self.send({"id": rid, "error": str(exc), "code": exc.code})
        except BaseException as exc:  # noqa: BLE001 - an interrupt between cells is no cell's error
            self.send({"id": rid, "error": f"{type(exc).__name__}: {exc}", "code": "operation_failed"})
        else:
            self.send({"id": rid, "reply": reply}, out)

    def _execute(self, request: dict) -> None:
        """Run a cell. Events that a watcher need not see at once (HELD_EVENTS) wait for the next
        frame, so a quick cell is one frame back: its events and its reply together."""
        rid, held = request["id"], []
        with self._interrupt_lock:
            self._started_rid = rid
            self.engine.interrupt_pending = rid in self._early_interrupts or bool(request.get("interrupted"))
            self._early_interrupts.discard(rid)
        cell = request.get("parent") or {}
        parents.set_main(cell)
        options = request.get("options") or {}
        self.stdin.allowed = self.engine.allow_stdin = bool(options.get("allow_stdin"))

        def emit(msg_type: str, content: dict) -> None:
            parent = parents.current()
            if parent.get("msg_id") != cell.get("msg_id"):
                self.send_event(msg_type, content, parent)  # a comm handler's, or a thread's after the cell
                return
            event = {"event": msg_type, "content": content}
            if msg_type in HELD_EVENTS:
                held.append(event)
                return
            self.send({"id": rid, "events": [*held, event]})
            held.clear()

        try:
            reply = self.engine.execute(request["code"], emit, **{
                k: options[k] for k in ("silent", "store_history", "user_expressions") if k in options})
        except BaseException as exc:  # noqa: BLE001 - the engine itself failed (an interrupt between hooks)
            reply = {"status": "error", "execution_count": self.engine.execution_count,
                     "ename": type(exc).__name__, "evalue": str(exc), "traceback": []}
        finally:
            self.stdin.allowed = self.engine.allow_stdin = False
            with self._interrupt_lock:
                self._finished_rid = rid
                self.engine.interrupt_pending = False
        self.send({"id": rid, "events": held, "reply": reply})

    def _perform(self, op: str, request: dict, buffers: list[bytes]) -> tuple[dict, list[bytes]]:
        engine, ns = self.engine, getattr(self.engine, "namespace", None)
        answered = engine.perform(op, request, buffers)
        if answered is not NotImplemented:
            return answered
        if op == "complete":
            return engine.complete(request["code"], int(request["cursor_pos"])), []
        if op == "inspect":
            return engine.inspect(request["code"], int(request["cursor_pos"]),
                                  int(request.get("detail_level", 0))), []
        if op == "is_complete":
            return engine.is_complete(request["code"]), []
        if op == "comm":
            comms.deliver(request["msg_type"], request.get("content") or {}, buffers, request.get("parent") or {},
                          request.get("metadata") or {})
            return {}, []
        if op == "comm_info":
            return comms.info(request.get("target_name")), []
        if op == "input_reply":
            return {"delivered": self.stdin.answer(str(request.get("value", "")))}, []
        if op == "workspace":
            return enter_workspace(request["cwd"], request["env"]), []
        if ns is None:
            raise namespace.NamespaceError("not_supported", "this engine has no Python namespace")
        if op == "push":
            return namespace.push(ns, request["name"], value=request.get("value"),
                                  dill_blob=buffers[0] if buffers else None), []
        if op == "pull":
            return namespace.pull(ns, request["name"], as_dill=bool(request.get("dill")))
        if op == "checkpoint":
            meta, blobs = namespace.snapshot(ns)
            names = list(blobs)
            return {**meta, "names": names}, [blobs[n] for n in names]
        if op == "restore":
            return namespace.load(ns, dict(zip(request["names"], buffers))), []
        raise namespace.NamespaceError("bad_request", f"unknown operation {op!r}")


def enter_workspace(cwd: str, env: dict[str, str]) -> dict:
    """Change into `cwd` (relative to HOME, created on demand) and add `env` to os.environ: the
    notebook's workspace (taskkernel/workspace.py, checked by the API), applied before its first cell."""
    os.environ.update(env)
    if cwd:
        path = os.path.join(os.path.expanduser("~"), cwd)
        os.makedirs(path, exist_ok=True)
        os.chdir(path)
    return {"cwd": os.getcwd()}


def apply_limits(limits: dict) -> None:
    """Set the engine file's rlimits on this process (its children inherit them)."""
    for name, which in RLIMITS.items():
        value = limits.get(name)
        if value:
            resource.setrlimit(which, (int(value), int(value)))


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m taskkernel.engines.process")
    parser.add_argument("--socket-fd", type=int, required=True, help="the worker's socket, inherited")
    sock = socket.socket(fileno=parser.parse_args(argv).socket_fd)
    init, _ = wire.receive(sock)
    apply_limits(init.get("limits", {}))
    sys.path[:0] = [p for p in init.get("sys_path", []) if p not in sys.path]
    server: EngineServer | None = None
    parents.install()
    streams = StreamSet(lambda name, text, parent: server.send_stream(name, text, parent))
    sys.stdout, sys.stderr = streams.streams()
    sys.stdin = NoStdin()
    spec = init["spec"]
    engine = registry.engine_class(spec)(spec)

    def between_cells(signum, frame):
        """SIGINT outside a cell's code: nobody's interrupt (the engine's own code must not fail)."""

    def on_user_code(running: bool) -> None:
        # While the cell's code runs, SIGINT is Python's own C handler, as on ipykernel: the
        # KeyboardInterrupt then has no frame of ours in its traceback (a Python handler would be
        # its last frame), and its message is empty (`KeyboardInterrupt: `)
        signal.signal(signal.SIGINT, signal.default_int_handler if running else between_cells)

    signal.signal(signal.SIGINT, between_cells)
    engine.on_user_code = on_user_code
    server = EngineServer(sock, engine, streams)
    comms.install(server.publish_comm, on_import=getattr(engine, "ensure_shell", None))
    server.stdin.install()
    engine.start()
    server.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
