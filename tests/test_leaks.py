"""Nothing is left behind: deleted notebooks and lost hosts leave no key in Redis, whatever was in flight."""

from __future__ import annotations

import signal
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from taskkernel import keys
from taskkernel.exceptions import NotebookGone
from taskkernel.notebooks import NotebookStore, new_notebook_id
from taskkernel.workers.checkpoints import CheckpointStore
from taskkernel.workers.runtime import record_death
from tests.conftest import pid_alive, wait_for

pytestmark = pytest.mark.timeout(180)

TTL_S, INTERVAL_S = 2.0, 0.5

# what a service keeps of itself, whatever its notebooks: hosts, their live workers, metrics
SERVICE_PREFIXES = ("taskkernel:host", "taskkernel:idle:", "taskkernel:worker:", "taskkernel:metrics:",
                    "taskkernel.", "_kombu.binding")


def all_keys(svc) -> list[str]:
    return sorted(k.decode(errors="replace") for k in svc.redis.scan_iter(count=1000))


def keys_mentioning(svc, words) -> list[str]:
    """Keys whose name, or whose members/fields/values (for small sets, hashes, strings), name a word."""
    found = []
    for key in all_keys(svc):
        kind = svc.redis.type(key).decode()
        if kind == "set":
            content = b" ".join(svc.redis.smembers(key))
        elif kind == "hash":
            content = b" ".join(b"%s=%s" % item for item in svc.redis.hgetall(key).items())
        elif kind == "string":
            content = svc.redis.get(key) or b""
        elif kind == "list":
            content = b" ".join(svc.redis.lrange(key, 0, -1))
        elif kind == "zset":
            content = b" ".join(svc.redis.zrange(key, 0, -1))
        else:
            content = b""
        text = key + " " + content.decode(errors="replace")
        if any(word in text for word in words):
            found.append(key)
    return found


def test_deleting_notebooks_with_cells_in_flight_leaves_nothing_of_them(private_service):
    svc = private_service
    host = svc.start_supervisor(pool=3)
    svc.start_api()
    client = svc.client()
    store = NotebookStore(svc.redis)
    notebooks = [client.start() for _ in range(3)]
    store.redis.hset(keys.notebook(notebooks[2].id), "checkpoint_every_cell", "1")  # a checkpoint after each
    pinned = [nb.record["worker"]["pid"] for nb in notebooks]
    cells = []
    for nb in notebooks:
        nb.evaluate("import time\nvalue = 1")
        running = nb.evaluate("for i in range(400):\n    print(i, flush=True)\n    time.sleep(0.005)", wait=False)
        cells.append(running["id"])
        cells += [nb.evaluate(f"value += {i}", wait=False)["id"] for i in range(3)]
    wait_for(lambda: all(nb.cell(c)["state"] == "running" for nb, c in zip(notebooks, cells[::4])), 30,
             "the printing cells to run")
    with ThreadPoolExecutor(len(notebooks)) as pool:
        list(pool.map(lambda nb: nb.close(), notebooks))
    wait_for(lambda: not any(pid_alive(pid) for pid in pinned), 30, "the pinned workers to stop")
    time.sleep(1.0)  # a late write (a worker finishing its cell) would land by now
    ids = [nb.id for nb in notebooks] + cells
    assert keys_mentioning(svc, ids) == []
    left = [k for k in all_keys(svc) if not k.startswith(SERVICE_PREFIXES)]
    assert left == [] or set(left) <= {keys.ENGINE_COUNTS}, left
    assert not svc.redis.hgetall(keys.ENGINE_COUNTS), "no engine count stays above zero"
    svc.wait_idle(host, "python", 3, timeout_s=90)  # the pool refilled: then every record is of a live worker

    def records_beyond_the_idle_workers():
        records = {k.split(":")[2] for k in all_keys(svc) if k.startswith("taskkernel:worker:")}
        idle = set()
        for key in svc.redis.scan_iter(match=keys.idle_workers("*", host)):
            idle |= {w.decode() for w in svc.redis.smembers(key)}
        return records - idle

    wait_for(lambda: not records_beyond_the_idle_workers(), 30, "the stopped workers' records to go")


def test_a_lost_host_leaves_nothing_once_it_is_judged_dead(private_service):
    svc = private_service
    doomed = svc.start_supervisor("doomed", pool=2, host_ttl_s=TTL_S, heartbeat_interval_s=INTERVAL_S)
    svc.start_api()
    nb = svc.client().start()
    svc.start_supervisor("survivor", pool=1, host_ttl_s=TTL_S, heartbeat_interval_s=INTERVAL_S)
    nb.evaluate("import time", timeout=30)
    nb.evaluate("time.sleep(60)", wait=False)
    assert keys_mentioning(svc, ["doomed"]), "the host has records, queues and bindings while it lives"
    svc.redis.rpush(keys.host_commands(doomed), '{"op": "refill"}')  # a command it will never read
    os.killpg(svc.supervisors[doomed].pid, signal.SIGKILL)
    wait_for(lambda: (nb.refresh()["worker"] or {}).get("host") == "survivor", 30, "the notebook to move")
    wait_for(lambda: not svc.redis.exists(keys.host_recovery_lock(doomed)), 30, "the recovery to finish")
    # only the story still names it: the cell that was running there (its EngineDied error), and the
    # notebook's record saying its files stayed on that host (files_lost_host)
    story = {keys.notebook(nb.id)}
    assert [k for k in keys_mentioning(svc, ["doomed"]) if not k.startswith("taskkernel:cell:") and k not in story] == []
    assert [f for f, v in svc.redis.hgetall(keys.notebook(nb.id)).items() if b"doomed" in v] == [b"files_lost_host"]
    nb.close()


# --- late writes of a worker recreate nothing ---------------------------------------------------

def test_a_checkpoint_after_its_notebook_was_deleted_recreates_nothing(redis_server):
    """checkpoint_every_cell racing a delete: the write lands after the delete removed the key."""
    client = redis.Redis.from_url(redis_server.url)
    store = CheckpointStore(client)
    live, deleting, gone = (new_notebook_id() for _ in range(3))
    client.hset(keys.notebook(live), "state", "idle")
    client.hset(keys.notebook(deleting), "state", "deleting")
    try:
        assert store.write(live, {"x": b"one", "y": b"two"}, {"names": 2}) == "redis"
        assert store.read(live) == {"x": b"one", "y": b"two"}
        for notebook_id in (deleting, gone):
            with pytest.raises(NotebookGone):
                store.write(notebook_id, {"x": b"one"}, {})
            assert not client.exists(keys.checkpoint(notebook_id)), "no checkpoint key for a deleted notebook"
    finally:
        client.delete(*(keys.notebook(n) for n in (live, deleting)), keys.checkpoint(live))
        client.close()


def test_an_engine_death_after_its_host_was_given_up_recreates_no_worker_record(redis_server):
    """A worker of a host given up (its record removed) whose engine then dies writes nothing."""
    client = redis.Redis.from_url(redis_server.url)
    living, given_up = f"w{new_notebook_id()[:16]}", f"w{new_notebook_id()[:16]}"
    client.hset(keys.worker(living), "state", "busy")
    try:
        assert record_death(client, living, "the engine exited with -9")
        assert client.hget(keys.worker(living), "died") == b"the engine exited with -9"
        assert not record_death(client, given_up, "the engine exited with -9")
        assert not client.exists(keys.worker(given_up))
    finally:
        client.delete(keys.worker(living))
        client.close()
