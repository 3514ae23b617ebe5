"""The API process logs as every taskkernel process does: gunicorn's lines and the app's alike,
formatted (JSON with TASKKERNEL_LOG_JSON=1), INFO kept, passwords redacted."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from taskkernel import ApiError, Client
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(60)

TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")


def api_with_dead_redis(service, tmp_path, **settings):
    """An API whose Redis (with a password in its URL) does not answer; returns (client, log path)."""
    log = tmp_path / "api.log"
    dead = f"redis://taskkernel:hunter2secret@127.0.0.1:{free_port()}/0"
    service.start_api(output=log, redis_url=dead, log_level="INFO", **settings)
    with pytest.raises(ApiError) as info:
        service.client().notebooks()
    assert info.value.code == "redis_unavailable"
    return log


def wait_for_line(log, needle: str, timeout_s: float = 10) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        lines = [line for line in log.read_text().splitlines() if line.strip()]
        if any(needle in line for line in lines):
            return lines
        time.sleep(0.1)
    raise AssertionError(f"no log line with {needle!r}: {log.read_text()[-2000:]}")


def test_every_api_log_line_is_json_when_asked(private_service, tmp_path):
    log = api_with_dead_redis(private_service, tmp_path, log_json=1)
    lines = wait_for_line(log, "redis error")
    entries = [json.loads(line) for line in lines]  # every line, gunicorn's included, parses
    by_logger = {(e["logger"], e["level"]) for e in entries}
    assert ("gunicorn.error", "INFO") in by_logger, "gunicorn's own lines, INFO kept"
    assert ("taskkernel.api", "INFO") in by_logger, "the API's start-up line"
    [warning] = [e for e in entries if "redis error" in e["message"]]
    assert warning["level"] == "WARNING" and warning["logger"] == "taskkernel.api"
    assert "hunter2secret" not in log.read_text(), "no password in any line"
    assert any("taskkernel:***@" in e["message"] for e in entries)


def test_api_log_lines_are_formatted_text_by_default(private_service, tmp_path):
    log = api_with_dead_redis(private_service, tmp_path)
    lines = wait_for_line(log, "redis error")
    unformatted = [line for line in lines if not TEXT_LINE.match(line)]
    assert not unformatted, unformatted
    assert any(" WARNING taskkernel.api: redis error" in line for line in lines)
    assert "hunter2secret" not in log.read_text()


def test_a_gunicorn_run_by_hand_logs_the_same_way(redis_server, tmp_path):
    """`gunicorn --logger-class taskkernel.api.server.GunicornLogger taskkernel.api.server:app`."""
    port = free_port()
    env = {**os.environ, "TASKKERNEL_REDIS_URL": redis_server.url, "TASKKERNEL_LOG_JSON": "1",
           "TASKKERNEL_LOG_LEVEL": "INFO"}
    log = tmp_path / "gunicorn.log"
    with open(log, "wb") as output:
        process = subprocess.Popen([str(Path(sys.executable).parent / "gunicorn"), "--logger-class",
                                    "taskkernel.api.server.GunicornLogger", "-k", "gthread", "--threads", "4",
                                    "-b", f"127.0.0.1:{port}", "taskkernel.api.server:app"],
                                   env=env, stderr=output, stdout=output, start_new_session=True)
    try:
        client = Client(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 30
        while True:
            try:
                assert {e["name"] for e in client.engines()} >= {"python"}
                break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None, log.read_text()
                time.sleep(0.1)
        lines = wait_for_line(log, "Booting worker")
    finally:
        process.terminate()
        process.wait(20)
    entries = [json.loads(line) for line in lines]
    assert ("gunicorn.error", "INFO") in {(e["logger"], e["level"]) for e in entries}
    assert "Listening at" in " ".join(e["message"] for e in entries), "the master's lines too"
