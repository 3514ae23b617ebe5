"""The processes a benchmark run starts (Redis, supervisor, API, echo floor, kernel gateway), and stops.

Every process is started in a session of its own with its output in a log file of the run's
temporary directory, remembered by PID, and stopped by PID (SIGTERM, then SIGKILL, and the same
for any descendant still alive) when the run ends, however it ends.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from taskkernel import hosts, keys
from taskkernel.client import Client
from taskkernel.redis_server import RedisServer, free_port
from taskkernel.settings import Settings, settings_environ

REPO = Path(__file__).resolve().parent.parent


class StartupError(RuntimeError):
    """A service did not come up; the message ends with the tail of its log."""


def descendants(pid: int) -> list[int]:
    """Every live process below `pid`, found through /proc's parent links."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found: list[int] = []
    frontier = {pid}
    while frontier:
        children = {p for p, parent in parents.items() if parent in frontier and p not in found}
        found.extend(children)
        frontier = children
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Processes:
    """The processes of one run; `stop_all` ends them by PID, newest first."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="taskkernel-bench-"))
        self.started: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "ab")
        try:
            process = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                       start_new_session=True, cwd=REPO)
        finally:
            log.close()
        self.started.append((name, process))
        return process

    def log_tail(self, name: str, lines: int = 30) -> str:
        try:
            return "\n".join((self.dir / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, process: subprocess.Popen, timeout_s: float = 10.0) -> None:
        below = descendants(process.pid)
        if process.poll() is None:
            try:
                os.kill(process.pid, signal.SIGTERM)
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(5)
            except ProcessLookupError:
                pass
        for pid in below:  # a child left behind (a kernel, a worker) goes too
            if _alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def stop_all(self) -> None:
        for _, process in reversed(self.started):
            self.stop(process)


def wait_until(predicate, timeout_s: float, what: str, process: subprocess.Popen | None = None,
               processes: Processes | None = None, name: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        if process is not None and process.poll() is not None:
            tail = processes.log_tail(name) if processes else ""
            raise StartupError(f"{what}: the process exited ({process.returncode})\n{tail}")
        time.sleep(0.05)
    tail = processes.log_tail(name) if processes else ""
    raise StartupError(f"timed out after {timeout_s:g} s waiting for {what}\n{tail}")


def http_ok(port: int, path: str) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", path)
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


class Stack:
    """taskkernel as `taskkernel up` runs it: a private Redis, one supervisor, the API."""

    def __init__(self, processes: Processes, *, pool: int = 2, max_workers: int = 256, api_threads: int = 32):
        self.processes = processes
        self.pool = pool
        self.redis_server = RedisServer()
        self.host_name = "bench"
        self.settings = Settings(max_workers=max_workers, api_threads=api_threads, pool_size=pool,
                                 host_name=self.host_name, log_level="WARNING")
        self.api_port = 0
        self.redis: redis.Redis | None = None
        self.supervisor: subprocess.Popen | None = None
        self.api: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self) -> "Stack":
        self.redis_server.start()
        self.redis = redis.Redis.from_url(self.redis_server.url)
        self.api_port = free_port()
        self.settings = self.settings.replace(redis_url=self.redis_server.url, api_port=self.api_port)
        env = {**os.environ, **settings_environ(self.settings)}
        self.supervisor = self.processes.start(
            "supervisor", [sys.executable, "-m", "taskkernel", "worker", "--pool", str(self.pool),
                           "--host-name", self.host_name], env)
        self.api = self.processes.start(
            "api", [sys.executable, "-m", "taskkernel", "api", "--port", str(self.api_port)], env)
        wait_until(lambda: http_ok(self.api_port, "/api/engines"), 60, "the taskkernel API", self.api,
                   self.processes, "api")
        self.wait_idle(self.pool)
        return self

    def idle_count(self) -> int:
        return self.redis.scard(keys.idle_workers("python", self.host_name))

    def wait_idle(self, count: int, timeout_s: float = 120) -> None:
        """Wait until `count` warm workers are idle (the pool is full)."""
        wait_until(lambda: self.idle_count() >= count and self.redis.exists(keys.host(self.host_name)),
                   timeout_s, f"{count} idle workers", self.supervisor, self.processes, "supervisor")

    def set_pool(self, size: int, wait: bool = True) -> None:
        """Resize the supervisor's warm pool (its `scale` command), optionally waiting until full."""
        hosts.send_command(self.redis, self.host_name, hosts.SCALE, engine="python", size=size)
        if wait:
            self.wait_idle(size)
            if size < self.pool:  # the surplus is retired in the supervisor's next ticks
                wait_until(lambda: self.idle_count() <= size, 30, f"pool shrunk to {size}")

    def client(self) -> Client:
        return Client(self.url, timeout_s=120)

    def supervisor_pid(self) -> int:
        return self.supervisor.pid

    def close(self) -> None:
        """Stop the API, the supervisor (its workers die with it) and Redis; safe after a failed start."""
        if self.redis is not None:
            self.redis.close()
        for process in (self.api, self.supervisor):
            if process is not None:
                self.processes.stop(process)
        self.redis_server.stop()


class EchoServer:
    """The Flask JSON echo floor (bench/echo.py) under the API's gunicorn settings."""

    def __init__(self, processes: Processes, threads: int = 32):
        self.processes = processes
        self.threads = threads
        self.port = 0
        self.process: subprocess.Popen | None = None

    def start(self) -> "EchoServer":
        self.port = free_port()
        self.process = self.processes.start(
            "echo", [sys.executable, "-m", "bench.echo", "--port", str(self.port), "--threads", str(self.threads)])
        wait_until(lambda: http_ok(self.port, "/ping"), 30, "the Flask echo server", self.process,
                   self.processes, "echo")
        return self

    def close(self) -> None:
        if self.process is not None:
            self.processes.stop(self.process)


class KernelGateway:
    """jupyter-kernel-gateway on a loopback port, as a web front end would reach it."""

    def __init__(self, processes: Processes):
        self.processes = processes
        self.port = 0
        self.process: subprocess.Popen | None = None

    def start(self) -> "KernelGateway":
        self.port = free_port()
        runtime = self.processes.dir / "jupyter-runtime"
        runtime.mkdir(exist_ok=True)
        env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(runtime)}
        self.process = self.processes.start(
            "kernel-gateway", [sys.executable, "-m", "kernel_gateway", "--KernelGatewayApp.ip=127.0.0.1",
                               f"--KernelGatewayApp.port={self.port}", "--KernelGatewayApp.log_level=WARN"], env)
        wait_until(lambda: http_ok(self.port, "/api"), 60, "jupyter kernel gateway", self.process,
                   self.processes, "kernel-gateway")
        return self

    def close(self) -> None:
        if self.process is not None:
            self.processes.stop(self.process, timeout_s=20)
