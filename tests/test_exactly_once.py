"""Exactly once: a cell ends once and is announced once, a notebook is deleted once, a retried submit runs once."""

import json
import logging
import threading
import types

import pytest
import redis

from taskkernel import keys
from taskkernel.client import ApiError
from taskkernel.notebooks import NotebookStore
from taskkernel.workers.runtime import Runtime
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(120)


def replies_of(client: redis.Redis, notebook_id: str, cell_id: str) -> list[dict]:
    """Every execute_reply of the cell on the notebook's feed stream."""
    return [json.loads(fields[b"m"]) for _, fields in client.xrange(keys.feed_stream(notebook_id))
            if fields[b"t"] == b"execute_reply" and fields[b"c"].decode() == cell_id]


def cell_counts(client: redis.Redis) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client.hgetall(keys.METRICS_CELLS).items()}


class EngineStub:
    """Stands in for the engine process: every cell returns ok at once (the trusted side is under test)."""

    on_output_flush = on_death = None

    def request(self, op, **fields):
        assert op == "execute"
        return {"status": "ok", "execution_count": 1}, []

    def interrupt(self):
        pass


class CaptureStub:
    def begin(self, on_output):
        pass

    def end(self):
        pass

    def flush(self):
        pass


def a_pinned_notebook(client: redis.Redis, worker_id: str) -> str:
    """A notebook pinned to `worker_id`, a worker that exists only as records (no process consumes its queue)."""
    host = "fakehost"
    client.hset(keys.worker(worker_id), mapping={"host": host, "queue": "taskkernel.fakehost.0", "pid": 1})
    client.sadd(keys.idle_workers("python", host), worker_id)
    client.sadd(keys.HOSTS, host)
    client.hset(keys.host(host), "pools", "{}")
    return NotebookStore(client).create("python", timeout_s=1)["id"]


def test_a_completion_retried_after_its_answer_was_lost_ends_the_cell_once(private_service, caplog):
    """The completion script runs, then the worker's call times out (the answer lost on the way
    back, as with a Redis that stalls after the script): the retry must write and publish nothing."""
    client = redis.Redis.from_url(private_service.redis_url)
    worker_id = "w-lost-answer"
    notebook_id = a_pinned_notebook(client, worker_id)
    store = NotebookStore(client)
    cell, _queue, _position = store.submit(notebook_id, "1 + 1", lambda cell_id: ("", ""))
    runtime = Runtime(client, EngineStub(), CaptureStub(), worker_id=worker_id, output_limit=1 << 20,
                      checkpoints=None)
    script = runtime._complete_script
    calls = []

    def answer_lost(*args, **kwargs):
        calls.append(script(*args, **kwargs))  # it ran on the real Redis
        if len(calls) == 1:
            raise redis.TimeoutError("Timeout reading from socket")
        return calls[-1]

    runtime._complete_script = answer_lost
    with caplog.at_level(logging.INFO, logger="taskkernel.worker"):
        assert runtime.run_cell(cell["id"], notebook_id) == "ok"
    assert len(calls) == 2, "the timed-out completion was retried"
    assert calls[1][0] == b"ended", "the retry found the cell ended and did nothing"
    assert "completed by an earlier try" in caplog.text
    assert len(replies_of(client, notebook_id, cell["id"])) == 1
    assert cell_counts(client) == {"ok": 1}
    histogram = client.hgetall(keys.METRICS_CELL_SECONDS)
    assert sum(int(v) for k, v in histogram.items() if k != b"sum") == 1
    assert store.get_cell(cell["id"])["status"] == "ok"
    assert store.get(notebook_id)["state"] == "idle"


def test_a_cell_failed_by_the_supervisor_stays_failed_when_its_worker_finishes(private_service):
    private_service.start_supervisor(pool=1)
    private_service.start_api()
    nb = private_service.client().start()
    client = redis.Redis.from_url(private_service.redis_url)
    store = NotebookStore(client)
    cell = nb.evaluate("import time\ntime.sleep(1.5)\nprint('finished')", wait=False)
    wait_for(lambda: nb.cell(cell["id"])["state"] == "running", 10, "the cell to start")
    error = {"ename": "EngineDied", "evalue": "judged dead", "traceback": ["EngineDied: judged dead"]}
    assert store.fail_cell(nb.id, cell["id"], error), "a running cell is failed"
    assert not store.fail_cell(nb.id, cell["id"], error), "a cell is failed once"
    worker = keys.worker(nb.record["worker"]["id"])
    wait_for(lambda: client.hget(worker, "cell") == b"", 10, "the worker to finish the cell")
    ended = nb.cell(cell["id"])
    assert (ended["state"], ended["status"], ended["error"]) == ("done", "error", error)
    assert ended["stdout"] == "", "the worker's late ending was not written"
    replies = replies_of(client, nb.id, cell["id"])
    assert [r["content"]["status"] for r in replies] == ["error"]
    assert cell_counts(client) == {"error": 1}
    assert nb.refresh()["state"] == "idle", "the worker is free for the next cell"
    assert nb.evaluate("1 + 1")["status"] == "ok"
    nb.close()


def test_of_nine_concurrent_deletes_one_wins_and_the_engine_quota_holds(private_service):
    (private_service.config_dir / "engines" / "pair.toml").write_text(
        'name = "pair"\nclass = "taskkernel.engines.python:PythonEngine"\nmax_notebooks = 2\npool_size = 3\n')
    host = private_service.start_supervisor(pool=1)
    private_service.start_api()
    private_service.wait_idle(host, "pair", 3)
    client = private_service.client()
    counts = redis.Redis.from_url(private_service.redis_url)
    doomed, kept = client.start("pair"), client.start("pair")
    barrier = threading.Barrier(9)
    answers: list = []

    def delete() -> None:
        barrier.wait()
        try:
            answers.append(client.request("DELETE", f"/notebooks/{doomed.id}")[0])
        except ApiError as exc:
            answers.append((exc.status, exc.code))

    threads = [threading.Thread(target=delete) for _ in range(9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert answers.count(204) == 1 and answers.count((404, "notebook_not_found")) == 8, answers
    assert int(counts.hget(keys.ENGINE_COUNTS, "pair")) == 1
    again = client.start("pair")  # the freed slot, and only that one
    with pytest.raises(ApiError) as info:
        client.start("pair")
    assert info.value.status == 429
    again.close()
    kept.close()
    assert int(counts.hget(keys.ENGINE_COUNTS, "pair") or 0) == 0
