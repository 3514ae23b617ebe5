"""Fixtures: a real redis-server, real supervisors forking real Celery workers, a real API server.

Every process a fixture starts is stopped by PID in a finalizer, even when the test fails.

The suite runs in parallel (pytest-xdist, `-n` in pyproject's addopts): each xdist worker is a
process of its own with its own session fixtures (its own Redis, service, gateway and temporary
directory), and the ports it draws are its own (`free_port`), so no two workers ever share one.
Each module runs on one worker (--dist loadfile), so its module-scoped fixtures are made once.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis

from bench.services import descendants
from taskkernel import connections, keys
from taskkernel.client import Client
from taskkernel.redis_server import RedisServer
from taskkernel.redis_server import free_port as any_free_port
from taskkernel.settings import SOURCE_CONFIG_DIR

REPO = Path(__file__).resolve().parent.parent


def xdist_worker() -> tuple[int, int]:
    """(this process's index among the suite's pytest-xdist workers, how many there are); (0, 1) without xdist."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    return (int(name[2:]) if name.startswith("gw") and name[2:].isdigit() else 0), max(1, count)


def free_port() -> int:
    """A free loopback port that only this xdist worker draws ((port // 2) % workers == its index:
    Linux hands bind() odd ports first, so the residue is taken of port // 2).

    A port is free when drawn and bound by its server a moment later: two workers drawing the same
    one in between would collide, and silently so for the API, which binds with SO_REUSEPORT (the
    kernel would split one service's requests between two). Disjoint residues rule that out.
    """
    index, count = xdist_worker()
    for _ in range(100 * count):
        port = any_free_port()
        if (port // 2) % count == index:
            return port
    raise RuntimeError(f"no free port of xdist worker {index} of {count} in {100 * count} draws")


def pytest_collection_modifyitems(config, items):
    """The modules marked slow (a wheel build, a browser, nbclient's suite, JupyterLab) come first:
    with pytest-xdist (--dist loadfile: a module's tests run on one worker, so its module- and
    class-scoped fixtures are made once) each starts at once on a worker of its own and overlaps
    the many short modules, instead of being what the last worker is still running at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: otherwise as collected


class Service:
    """A running API plus supervisors on one Redis; helpers to start more and to wait for them."""

    def __init__(self, redis_url: str, config_dir: Path, env: dict[str, str]):
        self.redis_url = redis_url
        self.config_dir = config_dir
        self.env = env
        self.redis = connections.connect(redis_url)  # redis:// or redis+sentinel://
        self.processes: list[subprocess.Popen] = []
        self.api_url = ""
        self.api_process: subprocess.Popen | None = None
        self.supervisors: dict[str, subprocess.Popen] = {}

    def _env(self, **extra) -> dict[str, str]:
        env = {**os.environ, **self.env, "TASKKERNEL_REDIS_URL": self.redis_url,
               "TASKKERNEL_CONFIG_DIR": str(self.config_dir)}
        env.update({f"TASKKERNEL_{k.upper()}": str(v) for k, v in extra.items()})
        return env

    def _start(self, args: list[str], output: Path | None, settings: dict) -> subprocess.Popen:
        """Start `python -m taskkernel <args>`; its stdout and stderr go to `output` if given."""
        log = open(output, "ab") if output is not None else None
        try:
            process = subprocess.Popen([sys.executable, "-m", "taskkernel", *args], env=self._env(**settings),
                                       stdout=log, stderr=log, start_new_session=True)
        finally:
            if log is not None:
                log.close()
        self.processes.append(process)
        return process

    def start_api(self, output: Path | None = None, port: int | None = None, **settings) -> str:
        port = port or free_port()
        process = self._start(["api", "--port", str(port)], output, settings)
        url = f"http://127.0.0.1:{port}"
        _wait_for(lambda: _http_ok(url + "/api/engines"), 30, f"API on {url}", process)
        self.api_process, self.api_url = process, url
        return url

    def start_supervisor(self, host_name: str | None = None, pool: int = 2, wait: bool = True,
                         output: Path | None = None, **settings) -> str:
        host_name = host_name or f"h{uuid.uuid4().hex[:6]}"
        process = self._start(["worker", "--pool", str(pool), "--host-name", host_name], output, settings)
        self.supervisors[host_name] = process
        if wait and pool:
            self.wait_idle(host_name, "python", pool, process=process)
        return host_name

    def wait_idle(self, host_name: str, engine: str, count: int, timeout_s: float = 60,
                  process: subprocess.Popen | None = None) -> None:
        key = keys.idle_workers(engine, host_name)
        _wait_for(lambda: self.redis.scard(key) >= count and self.redis.exists(keys.host(host_name)),
                  timeout_s, f"{count} idle {engine} workers on {host_name}", process)

    def stop_process(self, process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
        _stop(process, sig)

    def client(self) -> Client:
        return Client(self.api_url)

    def close(self) -> None:
        for process in reversed(self.processes):
            _stop(process)


def _stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        try:
            os.kill(process.pid, sig)
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)
        except ProcessLookupError:
            pass


def _http_ok(url: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except urllib.error.HTTPError:  # it answered (401/403 when secured): it is up
        return True
    except OSError:
        return False


def _wait_for(predicate, timeout_s: float, what: str, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process {process.args} exited ({process.returncode}) before {what}")
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")


wait_for = _wait_for


def acl_refusals(server: RedisServer) -> list[str]:
    """The commands, keys and channels `server` refused (its ACL LOG), one line each."""
    admin = redis.Redis.from_url(server.admin_url)
    try:
        return [f"{e['username']}: {e['reason']} {e['object']} x{e['count']}"
                for e in admin.acl_log() if e["reason"] != "auth"]
    finally:
        admin.close()


@pytest.fixture(scope="session")
def redis_server():
    """The session's Redis; at the end, the session fails if the service user was refused anything.

    Every service process of the suite runs as the restricted service user, so an empty ACL LOG
    is the proof that its ACL (taskkernel.redis_server.SERVICE_COMMANDS) allows what the service does.
    """
    server = RedisServer(port=free_port())
    server.start()
    try:
        yield server
        refused = acl_refusals(server)
        assert not refused, f"the service user was refused (ACL LOG): {refused}"
    finally:
        server.stop()


@pytest.fixture
def redis_db(redis_server):
    """A flushed database (3) of the session's Redis, as the service user: for tests of the trusted
    side's code and scripts on their own (no supervisor, no worker, no API)."""
    admin = redis.Redis.from_url(redis_server.db_url(3, admin=True))  # FLUSHDB is the admin's
    admin.flushdb()
    client = redis.Redis.from_url(redis_server.db_url(3))
    try:
        yield client
    finally:
        client.close()
        admin.flushdb()
        admin.close()


@pytest.fixture(scope="session")
def config_dir(tmp_path_factory) -> Path:
    """A copy of config/ that tests may add engine files to."""
    target = tmp_path_factory.mktemp("config")
    shutil.copytree(SOURCE_CONFIG_DIR, target, dirs_exist_ok=True)
    return target


@pytest.fixture(scope="session")
def service(redis_server, config_dir):
    """The shared service: one API and one supervisor keeping 3 python workers warm."""
    svc = Service(redis_server.url, config_dir, {"TASKKERNEL_LOG_LEVEL": "WARNING"})
    try:
        svc.start_supervisor("main", pool=3)
        svc.start_api()
        yield svc
    finally:
        svc.close()


@pytest.fixture
def client(service) -> Client:
    return service.client()


@pytest.fixture
def notebook(client):
    """A fresh python notebook, deleted after the test."""
    nb = client.start("python")
    try:
        yield nb
    finally:
        nb.close()


@pytest.fixture
def private_service(redis_server, tmp_path):
    """A service of its own (own Redis database, own config dir) for tests that kill or reconfigure it."""
    admin = redis.Redis.from_url(redis_server.db_url(1, admin=True))  # FLUSHDB is the admin's
    admin.flushdb()
    config = tmp_path / "config"
    shutil.copytree(SOURCE_CONFIG_DIR, config)
    svc = Service(redis_server.db_url(1), config, {"TASKKERNEL_LOG_LEVEL": "WARNING"})
    try:
        yield svc
    finally:
        svc.close()
        admin.flushdb()
        admin.close()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.fixture
def persistent_service(config_dir):
    """A service on a Redis with an append-only file, so its state survives a Redis restart."""
    server = RedisServer(port=free_port(), persistent=True).start()
    svc = Service(server.url, config_dir, {"TASKKERNEL_LOG_LEVEL": "WARNING"})
    try:
        yield svc, server
        assert not acl_refusals(server), "reconnecting needs nothing the service user may not do"
    finally:
        svc.close()
        server.stop()


ENGINES = ("python", "ipython")  # the engines a fidelity test runs on, one after the other


@pytest.fixture(params=ENGINES)
def any_notebook(request, service, client):
    """A fresh notebook of each engine in turn on the shared service (the test runs once per engine)."""
    service.wait_idle("main", request.param, 1, timeout_s=60)
    nb = client.start(request.param)
    try:
        yield nb
    finally:
        nb.close()


def run_followed(nb, code: str, timeout_s: float = 90, **options) -> tuple[dict, list[dict]]:
    """Run a cell; (its record, its feed messages up to its execute_reply)."""
    cell = nb.evaluate(code, wait=False, **options)
    feed = list(nb.follow(cell["id"], timeout=timeout_s))
    assert feed and feed[-1]["header"]["msg_type"] == "execute_reply", feed
    return nb.cell(cell["id"]), feed


@pytest.fixture
def ipython_notebook(service, client):
    """A fresh ipython notebook on the shared service, deleted after the test."""
    service.wait_idle("main", "ipython", 1, timeout_s=60)
    nb = client.start("ipython")
    try:
        yield nb
    finally:
        nb.close()


def start_gateway(service: Service, output: Path | None = None, **settings) -> tuple[str, subprocess.Popen]:
    """A `taskkernel gateway` process on the service's Redis; returns its URL and process."""
    port = free_port()
    process = service._start(["gateway", "--port", str(port)], output, settings)
    url = f"http://127.0.0.1:{port}"
    _wait_for(lambda: _http_ok(url + "/api/kernelspecs"), 30, f"gateway on {url}", process)
    return url, process


@pytest.fixture(scope="session")
def gateway_url(service, tmp_path_factory) -> str:
    """The shared service's Jupyter gateway (taskkernel/gateway), stopped with the service; its log
    is gateway.log in the session's temporary directory."""
    return start_gateway(service, output=tmp_path_factory.mktemp("gateway") / "gateway.log")[0]


@pytest.fixture
def frozen_redis_service(config_dir):
    """A service on a Redis of its own, which the test may SIGSTOP (and its processes); (service, server).

    Everything is sent SIGCONT before it is stopped, so a test failing mid-freeze leaves nothing stopped.
    """
    server = RedisServer(port=free_port()).start()
    svc = Service(server.url, config_dir, {"TASKKERNEL_LOG_LEVEL": "WARNING"})
    try:
        yield svc, server
    finally:
        if server.process is not None and server.process.poll() is None:
            os.kill(server.process.pid, signal.SIGCONT)
        for process in svc.processes:  # and what they forked (workers have process groups of their own)
            if process.poll() is None:
                for pid in [process.pid, *descendants(process.pid)]:
                    try:
                        os.kill(pid, signal.SIGCONT)
                    except ProcessLookupError:
                        pass
        svc.close()
        server.stop()
