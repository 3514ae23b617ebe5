"""Host death is judged on the observers' clocks, and a host given up is fenced when it comes back.

A host is dead only when its heartbeat counter stood still while Redis answered its observer;
Redis itself frozen for longer than the TTL kills nobody. A host frozen (a partition, as SIGSTOP of
its supervisor and workers) for longer than the TTL is given up: its notebooks move, and when it
thaws its workers can neither claim, nor complete, nor publish for them, and its supervisor stops
them and starts afresh.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from taskkernel import keys
from tests.conftest import Service, descendants, pid_alive, wait_for

pytestmark = pytest.mark.timeout(180)

TTL_S, INTERVAL_S = 2.0, 0.5
HOST = {"host_ttl_s": TTL_S, "heartbeat_interval_s": INTERVAL_S}


def feed_of(svc: Service, notebook_id: str, cell_id: str) -> list[dict]:
    """The cell's messages on the notebook's feed stream, in order."""
    return [json.loads(fields[b"m"]) for _, fields in svc.redis.xrange(keys.feed_stream(notebook_id))
            if fields[b"c"].decode() == cell_id]


def test_a_host_frozen_past_the_ttl_is_given_up_and_fenced_when_it_thaws(frozen_redis_service):
    svc, _ = frozen_redis_service
    frozen = svc.start_supervisor("frozen", pool=1, **HOST)
    svc.start_api()
    nb = svc.client().start()
    assert nb.record["worker"]["host"] == frozen
    old_worker = nb.record["worker"]["pid"]
    # a thread that prints between cells (late output of its cell): what the old worker would publish
    # for a notebook that is no longer its own, once it thaws
    nb.evaluate("x = 1\nimport threading, time\ndef tick():\n    while True:\n        print('tick', flush=True)\n"
                "        time.sleep(0.2)\nthreading.Thread(target=tick, daemon=True).start()")
    svc.start_supervisor("watcher", pool=1, **HOST)
    cell = nb.evaluate("import time\nprint('before', flush=True)\ntime.sleep(4)\nprint('after')\n'finished'",
                       wait=False)
    wait_for(lambda: any(m["content"].get("text") == "before\n" for m in feed_of(svc, nb.id, cell["id"])),
             20, "the cell to print")
    supervisor = svc.supervisors[frozen]
    host = [supervisor.pid, *descendants(supervisor.pid)]  # workers have process groups of their own
    assert old_worker in host
    for pid in host:  # the supervisor, its workers and their engines
        os.kill(pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    wait_for(lambda: (nb.refresh()["worker"] or {}).get("host") == "watcher", 20, "the notebook to move")
    moved_at = svc.redis.xrevrange(keys.feed_stream(nb.id), count=1)[0][0]
    # silence began at the host's last heartbeat, which can precede the stop by up to one interval
    assert time.monotonic() - stopped_at >= TTL_S - INTERVAL_S, "given up only after a whole TTL of silence"
    failed = nb.cell(cell["id"])
    assert failed["status"] == "error" and failed["error"]["ename"] == "EngineDied"

    # the old worker (and its engine) thaw first, their supervisor still stopped: the cell ends in
    # the engine, and its worker tries to publish 'after' and to complete it
    for pid in [old_worker, *descendants(old_worker)]:
        os.kill(pid, signal.SIGCONT)
    time.sleep(max(0.0, 4.5 - (time.monotonic() - stopped_at)) + 1.5)
    assert nb.cell(cell["id"]) == failed, "the fenced worker wrote nothing to the cell"
    story = [m["header"]["msg_type"] for m in feed_of(svc, nb.id, cell["id"])]
    assert story.count("execute_reply") == 1, story
    assert not any(m["content"].get("text") == "after\n" for m in feed_of(svc, nb.id, cell["id"])), \
        "the fenced worker published nothing"
    late = [json.loads(f[b"m"]) for _, f in svc.redis.xrange(keys.feed_stream(nb.id), min=b"(" + moved_at)]
    assert not [m for m in late if m["content"].get("text") == "tick\n"], \
        "nor between cells (its engine's thread prints on)"

    for pid in host:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    wait_for(lambda: not pid_alive(old_worker), 20, "the thawed supervisor to stop its given-up worker")
    svc.wait_idle(frozen, "python", 1, timeout_s=60, process=supervisor)  # and to refill its pool
    again = nb.evaluate("'x' in globals()", timeout=30)
    assert again["status"] == "ok" and again["outputs"][0]["data"]["text/plain"] == "False"
    assert nb.refresh()["worker"]["host"] == "watcher"
    nb.close()


def test_redis_frozen_past_the_ttl_takes_no_living_host_for_dead(frozen_redis_service):
    svc, server = frozen_redis_service
    first = svc.start_supervisor("first", pool=1, **HOST)
    svc.start_api()
    client = svc.client()
    nb1 = client.start()
    second = svc.start_supervisor("second", pool=2, **HOST)
    nb2 = client.start()
    assert {nb1.record["worker"]["host"], nb2.record["worker"]["host"]} == {first, second}
    for nb in (nb1, nb2):
        nb.evaluate("kept = 42")
    os.kill(server.process.pid, signal.SIGSTOP)
    time.sleep(3 * TTL_S)  # every host key's TTL runs out on Redis's clock meanwhile
    os.kill(server.process.pid, signal.SIGCONT)
    time.sleep(3 * TTL_S)  # long enough for any supervisor to act on what it saw
    for nb, pinned in ((nb1, nb1.record), (nb2, nb2.record)):
        record = nb.refresh()
        assert record["restarts"] == 0 and record["worker"]["pid"] == pinned["worker"]["pid"], \
            "a living notebook was re-homed"
        assert nb.evaluate("kept", timeout=30)["outputs"][0]["data"]["text/plain"] == "42"
    assert {h.decode() for h in svc.redis.smembers(keys.HOSTS)} == {first, second}
    nb1.close()
    nb2.close()


def test_a_killed_host_is_given_up_within_the_ttl_and_a_second(frozen_redis_service):
    svc, _ = frozen_redis_service
    doomed = svc.start_supervisor("doomed", pool=1, **HOST)
    svc.start_api()
    nb = svc.client().start()
    svc.start_supervisor("survivor", pool=1, **HOST)
    running = nb.evaluate("import time; time.sleep(60)", wait=False)
    wait_for(lambda: nb.cell(running["id"])["state"] == "running", 20, "the cell to start")
    killed_at = time.monotonic()
    os.killpg(svc.supervisors[doomed].pid, signal.SIGKILL)
    cell = nb.wait(running["id"], timeout=30)
    answered_s = time.monotonic() - killed_at
    print(f"killed host: caller answered after {answered_s:.2f} s (TTL {TTL_S:g} s)")
    assert cell["error"]["ename"] == "EngineDied"
    assert answered_s <= TTL_S + 1.5, f"answered after {answered_s:.2f} s"
    assert nb.evaluate("1 + 1", timeout=10)["status"] == "ok"
    nb.close()
