"""Redis Sentinel: TASKKERNEL_REDIS_URL may name sentinels and a service, and every part follows a failover.

One set for the module (a primary, a replica, three sentinels on loopback, down-after 1 s). Its
primary is SIGKILLed while cells run: every cell a caller was told was recorded ends, on the new
primary, in the same namespace; no call hangs; a feed follower misses nothing.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request

import pytest

from taskkernel import connections
from taskkernel.client import ApiError
from taskkernel.exceptions import ConfigurationError
from taskkernel.logs import redact
from taskkernel.redis_sentinel import ReplicatedRedis
from tests.conftest import Service, acl_refusals, start_gateway, wait_for
from tests.jupyter_ws import KernelSocket, of_type

pytestmark = pytest.mark.timeout(180)


# --- the URL (pure functions) ----------------------------------------------------------------

def test_a_sentinel_url_names_sentinels_service_database_and_logins():
    url = connections.sentinel_url([("127.0.0.1", 26379), ("::1", 26380)], "tk", username="taskkernel",
                                   password="p@ss:/w", db=3, sentinel_password="s&p")
    parsed = connections.parse_sentinel_url(url)
    assert parsed.sentinels == (("127.0.0.1", 26379), ("::1", 26380))
    assert (parsed.service, parsed.db, parsed.username, parsed.password) == ("tk", 3, "taskkernel", "p@ss:/w")
    assert parsed.sentinel_password == "s&p"
    assert connections.parse_sentinel_url("redis+sentinel://h1,h2:7000/svc").sentinels == (("h1", 26379), ("h2", 7000))
    broker, options = connections.celery_broker(url)
    assert broker.split(";")[1].startswith("sentinel://taskkernel:") and broker.endswith("@[::1]:26380/3")
    assert options["master_name"] == "tk" and options["sentinel_kwargs"]["password"] == "s&p"
    assert "p%40ss" not in redact(url) and "s%26p" not in redact(url) and "s&p" not in redact(url)


@pytest.mark.parametrize("url", ["redis+sentinel://u:secretpw@h:1", "redis+sentinel://u:secretpw@h:1/svc/x",
                                 "redis+sentinel://u:secretpw@h:x/svc", "redis+sentinel://u:secretpw@h:1/svc?pw=1"])
def test_a_malformed_sentinel_url_is_refused_without_its_password(url):
    with pytest.raises(ConfigurationError) as refused:
        connections.parse_sentinel_url(url)
    assert "secretpw" not in str(refused.value)


def test_durable_writes_wait_for_a_replica_only_under_sentinel():
    from taskkernel.settings import Settings

    assert connections.Durability.from_settings(Settings(redis_url="redis+sentinel://h:1/s")).replicas == 1
    assert connections.Durability.from_settings(Settings(redis_url="redis://h:1/0")).replicas == 0
    assert connections.Durability.from_settings(Settings(redis_url="redis://h:1/0", redis_wait_replicas=2)).replicas == 2


# --- a failover under load -------------------------------------------------------------------

@pytest.fixture(scope="module")
def replicated():
    with ReplicatedRedis(replicas=1, sentinels=3, down_after_ms=1000) as servers:
        yield servers


@pytest.fixture
def sentinel_service(replicated, config_dir):
    svc = Service(replicated.url, config_dir, {"TASKKERNEL_LOG_LEVEL": "WARNING"})
    try:
        yield svc
    finally:
        svc.close()
        admin = connections.connect(replicated.admin_url)
        admin.flushdb()
        admin.close()


CALL_TIMEOUT_S = 10.0
HUNG_S = CALL_TIMEOUT_S + 5.0  # no call may take longer than its own timeout and this margin


class Submitter(threading.Thread):
    """Runs `cells` cells on one notebook in order, each repeated under its Idempotency-Key after a
    503 or a lost connection (as a careful client does); notes every cell the API said it recorded."""

    def __init__(self, nb, cells: int, stop_at: float):
        super().__init__(daemon=True)
        self.nb, self.cells, self.stop_at = nb, cells, stop_at
        self.recorded: list[str] = []
        self.longest_s = 0.0
        self.refusals = 0

    def run(self) -> None:
        for number in range(self.cells):
            while time.monotonic() < self.stop_at:
                started = time.monotonic()
                try:
                    cell = self.nb.evaluate(f"ran.append({number}); time.sleep(0.05); {number}", timeout=CALL_TIMEOUT_S,
                                            idempotency_key=f"{self.nb.id}-{number}")
                except (ApiError, OSError, ValueError):
                    self.refusals += 1
                    time.sleep(0.1)
                    continue
                finally:
                    self.longest_s = max(self.longest_s, time.monotonic() - started)
                self.recorded.append(cell["id"])
                break


class Follower(threading.Thread):
    """Follows a notebook's feed over SSE, resuming from the last position after any failure."""

    def __init__(self, nb, stop: threading.Event):
        super().__init__(daemon=True)
        self.nb, self.stop = nb, stop
        self.replies: list[str] = []
        self.position = "0-0"

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                for message in self.nb.feed(after=self.position, timeout=2, read_timeout_s=10):
                    self.position = message["position"]
                    if message["header"]["msg_type"] == "execute_reply":
                        self.replies.append(message["parent_header"]["msg_id"])
            except (ApiError, OSError, ValueError):
                time.sleep(0.1)


def test_a_primary_killed_mid_run_loses_no_accepted_cell_and_every_part_follows_the_failover(
        replicated, sentinel_service):
    svc = sentinel_service
    svc.start_supervisor("sentinel-host", pool=2)
    svc.start_api()
    gateway_url, _ = start_gateway(svc)
    client = svc.client()
    notebooks = [client.start() for _ in range(2)]
    loop = asyncio.new_event_loop()
    kernel = json.loads(urllib.request.urlopen(urllib.request.Request(
        gateway_url + "/api/kernels", data=b'{"name": "python"}', method="POST",
        headers={"Content-Type": "application/json"}), timeout=60).read())
    ws = loop.run_until_complete(KernelSocket.open(f"{gateway_url}/api/kernels/{kernel['id']}/channels"))
    loop.run_until_complete(ws.execute("y = 1", timeout_s=30))
    for nb in notebooks:
        nb.evaluate("import time\nran = []", timeout=30)
    pids = [nb.record["worker"]["pid"] for nb in notebooks]
    cells = 12
    stop = threading.Event()
    follower = Follower(notebooks[0], stop)
    follower.start()
    submitters = [Submitter(nb, cells, time.monotonic() + 90) for nb in notebooks]
    for submitter in submitters:
        submitter.start()
    wait_for(lambda: all(len(s.recorded) >= 3 for s in submitters), 30, "the workload to be under way")

    old = replicated.kill_primary()
    killed_at = time.monotonic()
    new = replicated.wait_for_failover(old)
    print(f"\nfailover to port {new.port} in {time.monotonic() - killed_at:.2f} s")
    for submitter in submitters:
        submitter.join(100)
    print(f"done {time.monotonic() - killed_at:.2f} s after the kill; refusals "
          f"{[s.refusals for s in submitters]}, longest call {max(s.longest_s for s in submitters):.2f} s")
    try:
        for submitter, nb, pid in zip(submitters, notebooks, pids):
            assert len(submitter.recorded) == cells, "every cell was accepted in the end"
            ends = [nb.wait(cell_id, timeout=30) for cell_id in submitter.recorded]
            assert [c["status"] for c in ends] == ["ok"] * cells, "no accepted cell is lost or failed"
            ran = nb.evaluate("ran", timeout=30)["outputs"][0]["data"]["text/plain"]
            assert ran == repr(list(range(cells))), "each ran once, in order, in the same namespace"
            assert nb.refresh()["worker"]["pid"] == pid, "on the same worker: nothing was re-homed"
            assert submitter.longest_s < HUNG_S, "no caller hung"
        wait_for(lambda: set(submitters[0].recorded) <= set(follower.replies), 30, "the follower to see every reply")
        assert len(follower.replies) == len(set(follower.replies)), "no reply twice on the feed"
        # the gateway's websocket, open across the failover, runs a cell in the same kernel
        after = loop.run_until_complete(ws.execute("y + 1", timeout_s=30))
        assert [m["content"]["data"]["text/plain"] for m in of_type(after, "execute_result")] == ["2"]
    finally:
        async def close_socket():  # tornado's close makes a Future: it needs the loop running
            ws.close()

        loop.run_until_complete(close_socket())
        loop.close()
        stop.set()
        follower.join(15)
        old.start()  # it comes back as a replica of the new primary, for the module's next test
        replicated.wait_until_watched(30)
    assert not acl_refusals(new), "the service user needed nothing more under Sentinel"
