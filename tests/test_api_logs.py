"""The API process logs as every taskkernel process does: gunicorn's lines and the app's alike,
formatted (JSON with TASKKERNEL_LOG_JSON=1), INFO kept, passwords redacted."""

import json
import re
import time

import pytest

from taskkernel import ApiError
from taskkernel.redis_server import free_port

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
