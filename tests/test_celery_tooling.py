"""Celery's own tools work on taskkernel's workers: `celery -A taskkernel.workers.app inspect ...`
answers when TASKKERNEL_TASK_EVENTS=1 (remote control is off otherwise, and says so)."""

import json
import subprocess
import sys

import pytest

from taskkernel import keys

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def celery(service, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "celery", "-A", "taskkernel.workers.app", *args],
                          env=service._env(), capture_output=True, text=True, timeout=60)


def idle_workers(service, host: str) -> set[str]:
    """Every warm worker of the host, as Celery names it (<worker id>@<host>)."""
    return {f"{w.decode()}@{host}" for engine in ("python", "ipython")
            for w in service.redis.smembers(keys.idle_workers(engine, host))}


def test_inspect_ping_reaches_every_worker_with_task_events_on(private_service):
    host = private_service.start_supervisor(pool=2, task_events=1)
    private_service.wait_idle(host, "ipython", 2)
    pinged = celery(private_service, "inspect", "ping", "--timeout", "10", "--json")
    assert pinged.returncode == 0, pinged.stderr + pinged.stdout
    replies = json.loads(pinged.stdout)
    assert set(replies) == idle_workers(private_service, host) and len(replies) == 4, "2 python, 2 ipython"
    assert all(reply == {"ok": "pong"} for reply in replies.values()), replies
    queues = json.loads(celery(private_service, "inspect", "active_queues", "--timeout", "10", "--json").stdout)
    consumed = {q["name"] for qs in queues.values() for q in qs}
    assert len(consumed) == 4 and all(q.startswith(f"taskkernel.{host}.") for q in consumed), consumed


def test_remote_control_is_off_without_task_events(private_service):
    private_service.start_supervisor(pool=1)
    pinged = celery(private_service, "inspect", "ping", "--timeout", "2")
    assert pinged.returncode != 0
    assert "No nodes replied" in pinged.stdout + pinged.stderr
