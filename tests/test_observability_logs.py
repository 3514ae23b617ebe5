"""Structured logs carry notebook and cell ids; Celery task events can be switched on for Flower."""

import json
import subprocess
import threading
import time

import pytest

from taskkernel.settings import load_settings
from taskkernel.celery_wire import make_celery

pytestmark = pytest.mark.timeout(120)


def test_json_logs_name_the_notebook_and_cell(private_service, tmp_path):
    log_path = tmp_path / "supervisor.log"
    with open(log_path, "w") as log_file:
        env = private_service._env(log_json=1, log_level="INFO")
        import sys

        process = subprocess.Popen([sys.executable, "-m", "taskkernel", "worker", "--pool", "1",
                                    "--host-name", "logs"], env=env, stderr=log_file, start_new_session=True)
        private_service.processes.append(process)
        private_service.wait_idle("logs", "python", 1, process=process)
        private_service.start_api()
        with private_service.client().start() as nb:
            cell = nb.evaluate("1/0")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            entries = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
            mine = [e for e in entries if e.get("cell_id") == cell["id"]]
            if mine:
                break
            time.sleep(0.2)
    assert mine, "a log line names the cell"
    assert mine[0]["notebook_id"] == nb.id and mine[0]["worker_id"].startswith("w")
    assert mine[0]["level"] == "INFO" and "error" in mine[0]["message"]


def test_task_events_reach_an_event_receiver_when_enabled(private_service):
    private_service.start_supervisor(pool=1, task_events=1)
    private_service.start_api(task_events=1)
    app = make_celery(load_settings(redis_url=private_service.redis_url, task_events=1))
    seen, ready = [], threading.Event()

    def listen():
        with app.connection() as connection:
            receiver = app.events.Receiver(connection, handlers={"*": seen.append})
            ready.set()
            try:
                receiver.capture(limit=None, timeout=20, wakeup=False)
            except Exception:
                pass

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    ready.wait(10)
    time.sleep(0.5)
    with private_service.client().start() as nb:
        nb.evaluate("1 + 1")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any(e.get("type") == "task-succeeded" for e in seen):
            time.sleep(0.2)
    types = {e.get("type") for e in seen}
    assert "task-succeeded" in types and "task-received" in types
