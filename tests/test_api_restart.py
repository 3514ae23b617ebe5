"""An API restart under load: feed streams close at once, followers resume by Last-Event-ID without a
gap, waiting callers are answered, and the replacement binds the same port at once."""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time

import pytest

from taskkernel.cli import API_GRACEFUL_S
from tests.conftest import free_port
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(180)


def listening(pid: int, port: int) -> bool:
    """Whether process `pid` (or one of its children: gunicorn's worker) has a socket listening on `port`."""
    import psutil

    root = psutil.Process(pid)
    return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port
               for process in [root, *root.children(recursive=True)] for c in process.net_connections())


class Follower(threading.Thread):
    """Follows a notebook's feed over SSE as a browser's EventSource does: on a closed stream or a
    refused connection it reconnects with Last-Event-ID, until `stop` is set."""

    def __init__(self, port: int, notebook_id: str, stop: threading.Event):
        super().__init__(daemon=True)
        self.port, self.notebook_id, self.stop = port, notebook_id, stop
        self.seqs: list[int] = []
        self.last_id = "0-0"
        self.streams = 0
        self.closed_at: float | None = None
        self.longest_gap_s = 0.0  # from a stream closing to the next one opening

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self._follow_once()
            except (OSError, http.client.HTTPException):
                time.sleep(0.05)

    def _follow_once(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", f"/api/notebooks/{self.notebook_id}/feed?timeout=60",
                         headers={"Accept": "text/event-stream", "Last-Event-ID": self.last_id})
            response = conn.getresponse()
            if response.status != 200:
                time.sleep(0.05)
                return
            self.streams += 1
            if self.closed_at is not None:
                self.longest_gap_s = max(self.longest_gap_s, time.monotonic() - self.closed_at)
            event: dict[str, str] = {}
            for raw in response:
                if self.stop.is_set():
                    return
                line = raw.decode().rstrip("\r\n")
                if line == "":
                    if "data" in event and event.get("event", "message") == "message":
                        self.seqs.append(json.loads(event["data"])["seq"])
                        self.last_id = event["id"]
                    event = {}
                elif not line.startswith(":"):
                    name, _, value = line.partition(":")
                    event[name] = value[1:] if value.startswith(" ") else value
            self.closed_at = time.monotonic()
        finally:
            conn.close()


def test_an_api_restart_under_load_closes_streams_answers_waiters_and_rebinds_at_once(private_service):
    svc = private_service
    svc.start_supervisor(pool=1)
    port = free_port()
    svc.start_api(port=port)
    client = svc.client()
    nb = client.start()
    stop = threading.Event()
    followers = [Follower(port, nb.id, stop) for _ in range(4)]
    for follower in followers:
        follower.start()
    waiter: list = []
    try:
        nb.evaluate("import time", timeout=30)
        printing = nb.evaluate("for i in range(80):\n    print(i, flush=True)\n    time.sleep(0.05)", wait=False)
        # queued behind the printing cell, then 6 s of its own: unfinished when the old API is
        # stopped even on a loaded machine, so its waiter can only be answered by the stop
        waiting = threading.Thread(target=lambda: waiter.append(
            (nb.evaluate("time.sleep(6)\n'late'", wait=True, timeout=60), time.monotonic())), daemon=True)
        waiting.start()
        wait_for(lambda: all(len(f.seqs) > 5 for f in followers), 30, "the followers to receive output")
        old = svc.api_process
        svc.start_api(port=port)  # binds the port the old one still serves (SO_REUSEPORT)
        new = svc.api_process
        wait_for(lambda: listening(new.pid, port), 30, "the replacement to listen on the same port")
        assert old.poll() is None
        signal_at = time.monotonic()
        old.send_signal(signal.SIGTERM)
        old.wait(10)
        exited_s = time.monotonic() - signal_at
        waiting.join(15)
        final = nb.evaluate("'done'", timeout=30)
        assert nb.wait(printing["id"], timeout=30)["status"] == "ok"
        wait_for(lambda: all(f.seqs and f.seqs[-1] >= max(g.seqs[-1] for g in followers) for f in followers)
                 and len({f.seqs[-1] for f in followers}) == 1, 20, "the followers to catch up")
        time.sleep(0.5)
    finally:
        stop.set()
    gap_s = max(f.longest_gap_s for f in followers)
    print(f"API restart: old API gone {exited_s:.2f} s after SIGTERM; the longest a follower was without a "
          f"stream {gap_s:.2f} s" + (f"; the waiting caller answered after {waiter[0][1] - signal_at:.2f} s"
                                      if waiter else ""))
    assert new.poll() is None, "the replacement serves on"
    # the old one drains its kept-alive connections (gunicorn: 2 s) and stops: no 30 s for its streams
    assert exited_s <= API_GRACEFUL_S + 1.5, f"the old API took {exited_s:.2f} s to stop"
    assert waiter, "the waiting caller was answered"
    cell, answered_at = waiter[0]
    assert cell["state"] in ("queued", "running") and answered_at - signal_at <= 1.5, \
        "the waiting caller was answered (202, the cell as it was) at once, not when the cell ended"
    assert final["status"] == "ok"
    for follower in followers:
        assert follower.streams >= 2, "the follower's stream was closed by the restart and resumed"
        assert follower.seqs == list(range(1, len(follower.seqs) + 1)), "no gap and no duplicate"
    nb.close()
