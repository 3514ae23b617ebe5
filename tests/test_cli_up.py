"""`taskkernel up` runs Redis, the supervisor and the API, and stops all of it on SIGINT or SIGTERM."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from taskkernel.client import Client
from tests.conftest import free_port
from tests.conftest import descendants
from tests.conftest import _http_ok, pid_alive, wait_for

pytestmark = pytest.mark.timeout(120)


def start_up(port: int, gateway_port: int | None = None, **env) -> subprocess.Popen:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TASKKERNEL_")}
    environ.update({"TASKKERNEL_LOG_LEVEL": "WARNING", **env})
    return subprocess.Popen([sys.executable, "-m", "taskkernel", "up", "--port", str(port), "--pool", "1",
                             "--gateway-port", str(gateway_port or free_port())],
                            env=environ, stdout=subprocess.PIPE, text=True, start_new_session=True)


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_up_runs_everything_and_stops_it_all(stop_signal):
    port, gateway_port = free_port(), free_port()
    process = start_up(port, gateway_port)
    tree: set[int] = set()
    try:
        banner = process.stdout.readline()
        assert f"taskkernel API on http://127.0.0.1:{port}" in banner
        match = re.search(r"redis redis://taskkernel:\*\*\*@127\.0\.0\.1:(\d+)/0", banner)
        assert match, banner
        isolation = process.stdout.readline()
        assert isolation.startswith("taskkernel sandbox: bubblewrap, "), isolation
        gateway = process.stdout.readline()
        assert gateway.startswith(f"taskkernel gateway on http://127.0.0.1:{gateway_port}"), gateway
        wait_for(lambda: _http_ok(f"http://127.0.0.1:{gateway_port}/api/kernelspecs"), 30, "the gateway")
        with Client(f"http://127.0.0.1:{port}").start() as nb:
            assert nb.evaluate("6 * 7")["outputs"][0]["data"]["text/plain"] == "42"
        tree = descendants(process.pid)
        assert len(tree) >= 4, "redis-server, supervisor, API and at least one worker"
        os.kill(process.pid, stop_signal)
        assert process.wait(30) == 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(pid_alive(p) for p in tree):
            time.sleep(0.1)
        assert not [p for p in tree if pid_alive(p)], "no process is left behind"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        for pid in tree:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_up_uses_the_configured_redis(redis_server):
    port = free_port()
    url = redis_server.db_url(2)
    process = start_up(port, TASKKERNEL_REDIS_URL=url, TASKKERNEL_HOST_NAME="up-test")
    try:
        banner = process.stdout.readline()
        assert f":{redis_server.port}/2" in banner
        import redis

        client = redis.Redis.from_url(url)
        assert client.sismember("taskkernel:hosts", "up-test")
    finally:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(30)
        redis.Redis.from_url(redis_server.db_url(2, admin=True)).flushdb()


def test_binding_the_api_publicly_without_a_token_is_refused():
    result = subprocess.run([sys.executable, "-m", "taskkernel", "api", "--host", "0.0.0.0"],
                            env={**os.environ, "TASKKERNEL_REDIS_URL": "redis://127.0.0.1:1/0"},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "without a token" in result.stderr
