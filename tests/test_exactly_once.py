"""Exactly once: a cell ends once and is announced once, a notebook is deleted once, a retried submit runs once."""

import json
import logging
import threading

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

    def disarm_interrupt(self):
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
    cell = store.submit(notebook_id, "1 + 1", lambda cell_id: ("", "")).cell
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


def test_an_evaluate_repeated_with_its_idempotency_key_returns_the_same_cell_and_runs_once(private_service):
    private_service.start_supervisor(pool=1)
    private_service.start_api()
    nb = private_service.client().start()
    nb.evaluate("runs = []")
    first = nb.evaluate("runs.append(1); len(runs)", idempotency_key="order-42")
    again = nb.evaluate("runs.append(1); len(runs)", idempotency_key="order-42")
    assert again["id"] == first["id"] and again["state"] == "done"
    queued = nb.evaluate("runs.append(1)", wait=False, idempotency_key="order-43")
    assert nb.evaluate("runs.append(1)", wait=False, idempotency_key="order-43")["id"] == queued["id"]
    nb.wait(queued["id"])
    assert nb.evaluate("len(runs)")["outputs"][0]["data"]["text/plain"] == "2", "each cell ran once"
    status, headers = raw_evaluate(private_service.api_url, nb.id, "runs.append(1); len(runs)", "order-42")
    assert status == 200 and headers["Idempotent-Replayed"] == "true"
    with pytest.raises(ApiError) as info:
        nb.evaluate("other code", idempotency_key="order-42")
    assert (info.value.status, info.value.code) == (422, "idempotency_key_reused")
    client = redis.Redis.from_url(private_service.redis_url)
    assert client.ttl(next(client.scan_iter(keys.idempotency(nb.id, "*")))) > 3600
    nb.close()
    assert not list(client.scan_iter(keys.notebook(nb.id) + "*")), "the delete removes the keys too"


def raw_evaluate(api_url: str, notebook_id: str, code: str, key: str) -> tuple[int, dict]:
    import http.client
    import urllib.parse

    url = urllib.parse.urlsplit(api_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.request("POST", f"/api/notebooks/{notebook_id}/evaluate", json.dumps({"code": code}),
                     {"Content-Type": "application/json", "Idempotency-Key": key})
        response = conn.getresponse()
        response.read()
        return response.status, dict(response.getheaders())
    finally:
        conn.close()


class ResetAfterRequest:
    """A loopback TCP proxy to the API that resets the client's first connection once the API has
    answered its first request (the answer is lost, as when a load balancer or the network fails)."""

    def __init__(self, api_url: str):
        import socket
        import urllib.parse

        url = urllib.parse.urlsplit(api_url)
        self.upstream = (url.hostname, url.port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.resets = 0
        self.requests: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import socket
        import struct

        first = True
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            if first:
                first = False
                request = _read_request(downstream)
                self.requests.append(request)
                upstream.sendall(request)
                upstream.recv(65536)  # the API answered: the request was handled
                self.resets += 1
                downstream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                downstream.close()  # RST instead of the answer
                upstream.close()
                continue
            for a, b in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    def close(self) -> None:
        self.listener.close()


def _read_request(sock) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(rest) < length:
        rest += sock.recv(65536)
    return head + b"\r\n\r\n" + rest


def _pipe(source, target) -> None:
    try:
        while chunk := source.recv(65536):
            target.sendall(chunk)
    except OSError:
        pass
    finally:
        for sock in (source, target):
            try:
                sock.close()
            except OSError:
                pass


def test_the_client_repeats_an_evaluate_after_a_connection_reset_and_the_code_runs_once(private_service):
    from taskkernel.client import Client, Notebook

    private_service.start_supervisor(pool=1)
    private_service.start_api()
    nb = private_service.client().start()
    nb.evaluate("runs = []")
    proxy = ResetAfterRequest(private_service.api_url)
    try:
        through_proxy = Notebook(Client(proxy.url), nb.record)
        cell = through_proxy.evaluate("runs.append(1); len(runs)")
        assert proxy.resets == 1 and b"Idempotency-Key: " in proxy.requests[0]
        assert cell["status"] == "ok" and cell["outputs"][0]["data"]["text/plain"] == "1"
        assert nb.evaluate("len(runs)")["outputs"][0]["data"]["text/plain"] == "1", "the code ran once"
        assert len(nb.cells()) == 3
    finally:
        proxy.close()
    nb.close()


def test_a_post_without_an_idempotency_key_is_not_repeated_after_a_connection_reset(private_service):
    from taskkernel.client import Client

    private_service.start_supervisor(pool=1)
    private_service.start_api()
    proxy = ResetAfterRequest(private_service.api_url)
    try:
        with pytest.raises((ConnectionError, OSError)):
            Client(proxy.url).request("POST", "/notebooks", {"engine": "python"})
        assert proxy.resets == 1
    finally:
        proxy.close()
    client = private_service.client()
    assert len(client.notebooks()) == 1, "the notebook was created once, and not again"
    for record in client.notebooks():
        client.notebook(record["id"]).close()


def test_a_recorded_cell_is_answered_with_its_id_when_redis_fails_during_the_call(persistent_service):
    svc, server = persistent_service
    svc.start_supervisor(pool=1)
    svc.start_api()
    nb = svc.client().start()
    answers: list = []
    waiting = threading.Thread(target=lambda: answers.append(raw_evaluate_wait(svc.api_url, nb.id)))
    waiting.start()
    wait_for(lambda: any(c["state"] == "running" for c in nb.cells()), 10, "the cell to start")
    server.stop(keep_data=True)  # while the API waits for the reply
    waiting.join(60)
    status, body, headers = answers[0]
    assert status == 202 and body["state"] in ("queued", "running"), "the caller learns the cell it has"
    assert headers["Location"].endswith(body["id"])
    with pytest.raises(ApiError) as info:  # Redis fails under the submit itself: maybe recorded, with the id
        nb.evaluate("print('maybe')", wait=False)
    assert (info.value.status, info.value.code) == (503, "redis_unavailable")
    assert info.value.details["recorded"] == "unknown"
    maybe = info.value.details["cell_id"]
    server.start()
    assert nb.wait(body["id"], timeout=60)["status"] == "ok", "the cell ran and finished once Redis was back"
    with pytest.raises(ApiError) as info:
        nb.cell(maybe)
    assert info.value.code == "cell_not_found", "that cell, as it turns out, was not recorded"
    nb.close()


def raw_evaluate_wait(api_url: str, notebook_id: str) -> tuple[int, dict, dict]:
    import http.client
    import urllib.parse

    url = urllib.parse.urlsplit(api_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        conn.request("POST", f"/api/notebooks/{notebook_id}/evaluate",
                     json.dumps({"code": "import time; time.sleep(3)", "wait": True, "timeout": 30}),
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read()), dict(response.getheaders())
    finally:
        conn.close()


@pytest.mark.parametrize("reached_redis", [True, False], ids=["answer-lost", "never-sent"])
def test_a_claim_that_meets_redis_failing_is_retried_and_the_cell_runs_once(private_service, reached_redis):
    """The worker has the cell's message off the queue: a failed claim must not lose the cell
    (it stayed queued forever), and a repeated claim that had reached Redis is the same claim."""
    client = redis.Redis.from_url(private_service.redis_url)
    worker_id = f"w-claim-{reached_redis}"
    notebook_id = a_pinned_notebook(client, worker_id)
    cell = NotebookStore(client).submit(notebook_id, "1 + 1", lambda cell_id: ("", "")).cell
    runtime = Runtime(client, EngineStub(), CaptureStub(), worker_id=worker_id, output_limit=1 << 20,
                      checkpoints=None)
    script = runtime._claim
    calls = []

    def failing_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            if reached_redis:
                script(*args, **kwargs)
                raise redis.TimeoutError("Timeout reading from socket")
            raise redis.ConnectionError("Connection refused")
        return script(*args, **kwargs)

    runtime._claim = failing_once
    assert runtime.run_cell(cell["id"], notebook_id) == "ok"
    assert len(calls) == 2
    done = NotebookStore(client).get_cell(cell["id"])
    assert (done["state"], done["status"]) == ("done", "ok")
    assert len(replies_of(client, notebook_id, cell["id"])) == 1


class NamespaceEngineStub(EngineStub):
    """The engine's side of a push: the variable is set (the trusted side is under test)."""

    def __init__(self):
        self.pushed = []

    def request(self, op, **fields):
        assert op == "push"
        self.pushed.append(fields["name"])
        return {"pushed": [fields["name"]]}, []


class FailingOnce:
    """The Redis client, except that the first call of `method` fails as a lost connection does."""

    def __init__(self, client: redis.Redis, method: str):
        self._client, self._method, self.failed = client, method, 0

    def __getattr__(self, name):
        attribute = getattr(self._client, name)
        if name != self._method or self.failed:
            return attribute

        def fail(*args, **kwargs):
            self.failed += 1
            raise redis.ConnectionError("Connection refused")
        return fail


@pytest.mark.parametrize("method", ["hget", "pipeline"], ids=["ownership-check", "answer"])
def test_a_namespace_operation_that_meets_redis_failing_is_still_done_and_answered(private_service, method):
    """A push's message is off the worker's queue when Redis fails (its ownership check, or its
    answer): the call is retried, as a claim is, so the caller hears and the push happens once."""
    import time

    from taskkernel.messages import new_id

    client = redis.Redis.from_url(private_service.redis_url)
    worker_id = f"w-call-{method}"
    notebook_id = a_pinned_notebook(client, worker_id)
    engine = NamespaceEngineStub()
    runtime = Runtime(client, engine, CaptureStub(), worker_id=worker_id, output_limit=1 << 20, checkpoints=None)
    runtime.redis = flaky = FailingOnce(client, method)
    reply_key = keys.reply(new_id())
    runtime.run_call(notebook_id, "push", {"name": "x", "value": 1, "not_after": time.time() + 10}, reply_key)
    assert flaky.failed == 1, "Redis did fail once"
    answer = client.blpop([reply_key], timeout=5)
    assert answer is not None and json.loads(answer[1]) == {"ok": True, "result": {"pushed": ["x"]}}
    assert engine.pushed == ["x"], "pushed once"
