"""The worker's handle on its engine process: start it, send it requests, interrupt it, see it die.

The worker owns the engine for its whole life. It launches it (inside the sandbox), hands it
one end of a socketpair and the write ends of two pipes as stdout and stderr, and from then on
speaks only the framed protocol of taskkernel.engines.wire. A reader thread routes the engine's
frames: events to the running cell, replies to whoever waits for them, and events that name
their own parent (a comm's, an input request, a thread's output) to `on_event`, which knows
whether that parent is the running cell. When the socket closes,
every waiter is told at once (EngineDied), so a dead engine never leaves a caller waiting.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable

from taskkernel.engines import wire
from taskkernel.exceptions import EngineDied, EngineRefused
from taskkernel.workers import sandbox
from taskkernel.workers.sandbox import INFO_FD_ARG, SOCKET_FD_ARG, EngineLaunch

log = logging.getLogger("taskkernel.worker")

# the JSON part of one engine frame; a display or error beyond it is dropped (and reported)
MAX_FRAME_BYTES = 64 * 1024 * 1024
READY_TIMEOUT_S = 60.0

EventSink = Callable[[str, dict], None]
# (event frame: event, content, parent, metadata; its buffers)
ParentedSink = Callable[[dict, list[bytes]], None]


class EngineProcess:
    """One sandboxed engine process and the socket to it."""

    def __init__(self, launch: EngineLaunch):
        self.launch = launch
        self.process: subprocess.Popen | None = None
        self.pid = 0  # the engine's own pid (in the host's pid namespace)
        self.pipes: dict[str, int] = {}  # stdout/stderr read ends, for the worker's capture
        self.on_output_flush: Callable[[], None] = lambda: None  # drain the pipes before an event
        self.on_death: Callable[[str], None] = lambda reason: None
        self.on_event: ParentedSink | None = None
        self.death: str = ""  # why the engine is gone, once it is
        self._sock: socket.socket | None = None
        self._pidfd = -1
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._execute_rid = 0  # the execute request in flight: what an interrupt is for
        self._interrupt_next = False  # interrupted before its execute was sent
        self._waiting: dict[int, queue.SimpleQueue] = {}
        self._sinks: dict[int, EventSink] = {}
        self._lock = threading.Lock()
        self._dead = threading.Event()
        self._network: subprocess.Popen | None = None  # slirp4netns, for network = "outbound"
        self._network_exit = -1

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self, init: dict, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Launch the engine, send it its `init` frame and wait until it is ready."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        info_r, info_w = os.pipe() if self.launch.network == "outbound" else (-1, -1)
        numbers = {SOCKET_FD_ARG: str(theirs.fileno()), INFO_FD_ARG: str(info_w)}
        argv = [numbers.get(a, a) for a in self.launch.argv]
        passed = (theirs.fileno(), info_w) if info_w >= 0 else (theirs.fileno(),)
        try:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out_w, stderr=err_w, pass_fds=passed,
                env=self.launch.env, cwd=self.launch.cwd, start_new_session=True)
        finally:
            for fd in (out_w, err_w, info_w):
                if fd >= 0:
                    os.close(fd)
            theirs.close()
        self.pipes = {"stdout": out_r, "stderr": err_r}
        self._sock = ours
        if info_r >= 0:
            try:
                self._attach_network(info_r, timeout_s)
            finally:
                os.close(info_r)
        wire.send(ours, {"op": "init", "sys_path": self.launch.sys_path, **init})
        ours.settimeout(timeout_s)
        try:
            hello: dict = {}
            while not hello.get("ready"):  # start-up code may print before the engine is ready
                hello, _ = wire.receive(ours)
                if "event" in hello:
                    self._route(hello, [])
        except (EOFError, OSError, ValueError) as exc:
            status = self._wait_exit(5)
            said = _read_nonblocking(err_r)[-2000:].decode("utf-8", "replace").strip()
            raise EngineDied(f"the engine process did not start ({status}): {said or repr(exc)}") from None
        ours.settimeout(None)
        self.pid = self._engine_pid()
        self._pidfd = os.pidfd_open(self.pid)
        threading.Thread(target=self._read_loop, name="taskkernel-engine", daemon=True).start()
        log.debug("engine ready: pid %d (reported %s)", self.pid, hello.get("pid"))

    def _attach_network(self, info_fd: int, timeout_s: float) -> None:
        """Give an `outbound` sandbox its user-mode network before the engine runs anything."""
        report = b""
        while chunk := os.read(info_fd, 4096):  # bubblewrap writes {"child-pid": N} and closes it
            report += chunk
        if not report:
            said = _read_nonblocking(self.pipes["stderr"])[-2000:].decode("utf-8", "replace")
            raise EngineDied(f"the engine's sandbox did not start: {said}")
        child = json.loads(report)["child-pid"]
        ready_r, ready_w = os.pipe()
        exit_r, self._network_exit = os.pipe()  # closed when this worker dies: slirp4netns then exits
        try:
            self._network = subprocess.Popen(
                sandbox.outbound_network(child, exit_r, ready_w), pass_fds=(exit_r, ready_w),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        finally:
            os.close(exit_r)
            os.close(ready_w)
        ready, _, _ = select.select([ready_r], [], [], timeout_s)
        got = os.read(ready_r, 1) if ready else b""
        os.close(ready_r)
        if got != b"1":
            raise EngineDied("slirp4netns did not set up the engine's network")

    def _engine_pid(self) -> int:
        """The engine's pid: the launched process, or the grandchild under bwrap's init."""
        pid = self.process.pid
        for _ in range(2 if self.launch.nested else 0):
            children = _children(pid)
            if not children:
                raise EngineDied("the engine process vanished while starting")
            pid = children[0]
        return pid

    def interrupt(self) -> None:
        """KeyboardInterrupt in the cell last sent to the engine: at once if its code runs, as soon
        as it begins if the engine has not started it yet, nothing if it has finished. Sent as a
        frame naming the execute request (the engine's reader thread signals its main thread), so
        an interrupt that overtakes the cell's own start is kept, not dropped as a bare SIGINT
        arriving between cells would be. Called only while a cell is the worker's (see
        Runtime.interrupt), which clears what is left with `disarm_interrupt` when the cell ends."""
        with self._lock:
            rid = self._execute_rid
            if not rid:  # the cell's execute is not sent yet: it goes out interrupted
                self._interrupt_next = True
                return
        if self.death:
            return
        try:
            with self._send_lock:
                wire.send(self._sock, {"op": "interrupt", "request": rid})
        except OSError:
            pass  # the engine is dying: its death answers the cell

    def disarm_interrupt(self) -> None:
        """The cell is over: an interrupt meant for it must not reach the next one."""
        with self._lock:
            self._interrupt_next = False

    def kill(self) -> None:
        """Kill the engine and, with its pid namespace, every process its cells started."""
        if self._network is not None and self._network.poll() is None:
            self._network.kill()
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self._pidfd >= 0:
            try:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # --- requests ------------------------------------------------------------------------------

    def request(self, op: str, *, timeout_s: float | None = None, buffers=(), on_event: EventSink | None = None,
                **args) -> tuple[dict, list[bytes]]:
        """Send one request and wait for its reply; EngineRefused, EngineDied or TimeoutError."""
        rid = next(self._ids)
        answer: queue.SimpleQueue = queue.SimpleQueue()
        with self._lock:
            if self.death:
                raise EngineDied(self.death)
            self._waiting[rid] = answer
            if op == "execute":
                self._execute_rid = rid
                if self._interrupt_next:
                    args["interrupted"], self._interrupt_next = True, False
            if on_event is not None:
                self._sinks[rid] = on_event
        try:
            with self._send_lock:
                wire.send(self._sock, {"id": rid, "op": op, **args}, buffers)
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            while True:
                # short waits, so signal handlers of the main thread (SIGUSR2) run meanwhile
                wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
                try:
                    message, got = answer.get(timeout=wait)
                    break
                except queue.Empty:
                    if deadline is not None and time.monotonic() >= deadline:
                        raise TimeoutError(f"the engine did not answer {op} in {timeout_s:g} s") from None
        except OSError as exc:  # the engine died before (or while) the request was sent
            self._dead.wait(5)
            raise EngineDied(self.death or f"the engine's socket failed: {exc!r}") from None
        finally:
            with self._lock:
                self._waiting.pop(rid, None)
                self._sinks.pop(rid, None)
                if rid == self._execute_rid:
                    self._execute_rid = 0
        if message.get("dead"):
            raise EngineDied(message["dead"])
        if "error" in message:
            raise EngineRefused(message["error"], message.get("code", "operation_failed"))
        return message.get("reply", {}), got

    # --- the reader ------------------------------------------------------------------------------

    def _read_loop(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2, signal.SIGINT, signal.SIGTERM})
        try:
            while True:
                try:
                    message, buffers = wire.receive(self._sock, MAX_FRAME_BYTES)
                except wire.FrameTooLarge as exc:
                    message, buffers = {"id": exc.header.get("id"), "event": "oversized",
                                        "content": {"bytes": exc.size}}, []
                self._route(message, buffers)
        except (EOFError, OSError, ValueError) as exc:
            self._died(exc)

    def _route(self, message: dict, buffers: list[bytes]) -> None:
        if "event" in message and isinstance(message.get("parent"), dict) and self.on_event is not None:
            self.on_output_flush()
            self.on_event(message, buffers)
            return
        rid = message.get("id")
        with self._lock:
            sink = self._sinks.get(rid) if rid is not None else next(iter(self._sinks.values()), None)
            waiter = self._waiting.get(rid)
        events = message.get("events") or ([message] if "event" in message else [])
        if events and sink is not None:
            self.on_output_flush()  # what reached the pipes before these events comes before them
        for event in events if isinstance(events, list) else []:
            if not isinstance(event, dict):
                continue
            if sink is not None:
                sink(str(event.get("event")), event.get("content") or {})
            elif event.get("event") == "stream":
                log.info("engine output outside a cell: %s", str((event.get("content") or {}).get("text"))[:2000])
        if ("reply" in message or "error" in message or "dead" in message) and waiter is not None:
            waiter.put((message, buffers))

    def _died(self, exc: BaseException) -> None:
        status = self._wait_exit(2)
        reason = f"the engine process died ({status})"
        with self._lock:
            self.death = reason
            waiters = list(self._waiting.values())
        self._dead.set()
        log.warning("%s", reason)
        for waiter in waiters:
            waiter.put(({"dead": reason}, []))
        self.on_death(reason)

    def _wait_exit(self, timeout_s: float) -> str:
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return "its socket closed"
        if code < 0:
            return f"killed by signal {-code} ({signal.Signals(-code).name})"
        if code > 128 and self.launch.nested:  # bwrap reports a signal as 128 + its number
            try:
                return f"killed by signal {code - 128} ({signal.Signals(code - 128).name})"
            except ValueError:
                pass
        return f"exit code {code}"


def _read_nonblocking(fd: int) -> bytes:
    os.set_blocking(fd, False)
    chunks = []
    try:
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    except BlockingIOError:
        pass
    finally:
        os.set_blocking(fd, True)
    return b"".join(chunks)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(p) for p in handle.read().split()]
    except OSError:
        return []
