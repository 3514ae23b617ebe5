"""Faults: Redis restarts, API restarts and killed workers never leave a caller hanging or lose results."""

import json
import os
import signal
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from taskkernel import keys
from taskkernel.celery_wire import TaskMessages, make_celery
from taskkernel.cells import SUBMIT_LUA
from taskkernel.client import ApiError
from taskkernel.notebooks import NotebookStore
from taskkernel.settings import load_settings
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(180)


def test_a_redis_restart_loses_no_cell_and_everything_reconnects(persistent_service):
    svc, server = persistent_service
    svc.start_supervisor(pool=2)
    svc.start_api()
    nb = svc.client().start()
    nb.evaluate("x = 1")
    in_flight = nb.evaluate("import time\ntime.sleep(3)\nx += 1\nprint('survived')\nx", wait=False)
    wait_for(lambda: nb.cell(in_flight["id"])["state"] == "running", 10, "the cell to start")
    server.stop(keep_data=True)
    with pytest.raises(ApiError) as info:
        nb.refresh()
    assert info.value.status == 503 and info.value.code == "redis_unavailable"
    time.sleep(1.5)
    server.start()
    cell = nb.wait(in_flight["id"], timeout=60)
    assert cell["state"] == "done", "the cell in flight was neither finished nor failed"
    assert cell["status"] == "ok" and cell["stdout"] == "survived\n"
    after = nb.evaluate("x", timeout=30)
    assert after["outputs"][0]["data"]["text/plain"] == "2", "the namespace is untouched"
    with svc.client().start() as other:  # the warm pool still serves new notebooks
        assert other.evaluate("1 + 1")["status"] == "ok"
    nb.close()


def test_a_task_message_redis_took_off_the_queue_as_it_shut_down_is_queued_again(persistent_service, tmp_path):
    """A Redis shutting down persists its last event-loop iteration but sends none of its replies:
    a cell submitted then is recorded, and the BRPOP of its idle worker takes its task message off
    the queue without ever delivering it. The worker, reconnected, queues it again; it runs once."""
    svc, server = persistent_service
    log = tmp_path / "supervisor.log"
    host = svc.start_supervisor(pool=1, output=log)
    svc.start_api()
    nb = svc.client().start()
    nb.evaluate("runs = 0")
    admin = redis.Redis.from_url(server.admin_url, retry=Retry(NoBackoff(), 0))
    kombu_brpops = lambda: sum(1 for c in admin.client_list() if c["cmd"] == "brpop")  # noqa: E731
    # every worker of the host (the pinned one, its replacement, the ipython one) is blocked in BRPOP
    wait_for(lambda: kombu_brpops() == admin.scard(keys.host_workers(host)) > 0, 60, "the workers' BRPOPs")
    store = NotebookStore(svc.redis)
    messages = TaskMessages(make_celery(load_settings({"TASKKERNEL_REDIS_URL": server.url})))
    call = store.submit_call(nb.id, "runs += 1\nruns", lambda cell_id: messages.evaluate(cell_id, nb.id))
    pipe = admin.pipeline(transaction=False)  # one write: the submit and the shutdown in one iteration
    pipe.eval(SUBMIT_LUA, len(call.keys), *call.keys, *call.args)
    pipe.execute_command("SHUTDOWN")
    with pytest.raises(redis.ConnectionError):
        pipe.execute()  # neither is answered
    admin.close()
    server.process.wait(10)
    server.start()

    def done() -> dict | None:
        try:
            cell = nb.cell(call.cell["id"])
        except ApiError:  # 503 while the API reconnects
            return None
        return cell if cell["state"] == "done" else None

    wait_for(done, 60, "the cell whose task message was lost")
    cell = done()
    assert cell["status"] == "ok", cell
    assert cell["outputs"][0]["data"]["text/plain"] == "1"
    assert "its task message was lost with the broker connection: queued again" in log.read_text(), \
        "the message was not lost (no BRPOP was waiting?) or not put back by the worker"
    assert nb.evaluate("runs", timeout=30)["outputs"][0]["data"]["text/plain"] == "1", "it ran once"
    nb.close()


def test_only_the_oldest_queued_cell_whose_message_is_gone_is_queued_again(redis_db):
    """requeue_lost on Redis alone: a notebook pinned to worker w1 (epoch 1) with queue q."""
    store = NotebookStore(redis_db)
    messages = TaskMessages(make_celery(load_settings({"TASKKERNEL_REDIS_URL": "redis://127.0.0.1:1/0"})))
    redis_db.hset(keys.notebook("nb"), mapping={"state": "idle", "worker": "w1", "epoch": 1, "queue": "q"})
    redis_db.hset(keys.worker("w1"), mapping={"notebook": "nb", "epoch": 1})
    first, second = (store.submit("nb", code, lambda c: messages.evaluate(c, "nb")).cell["id"] for code in "12")

    def requeue(worker="w1"):
        return store.requeue_lost(worker, messages.evaluate)

    def queued_cells():  # in the order BRPOP takes them (from the tail)
        return [json.loads(m)["headers"]["argsrepr"][2:34] for m in reversed(redis_db.lrange("q", 0, -1))]

    assert requeue() is None and queued_cells() == [first, second], "nothing is lost"
    redis_db.rpop("q")  # what a BRPOP whose reply never arrived did
    assert requeue("w2") is None, "another worker's notebook is not its business"
    assert requeue() == first and queued_cells() == [first, second], "put back where it was taken"
    assert requeue() is None and queued_cells() == [first, second], "once"
    redis_db.rpop("q")
    redis_db.hset(keys.cell(first), "state", "running")  # the worker has it: the next one is the oldest
    assert requeue() is None, "the second cell's message is still on the queue"
    redis_db.delete("q")
    assert requeue() == second and queued_cells() == [second]
    redis_db.hset(keys.worker("w1"), "epoch", 2)
    redis_db.delete("q")
    assert requeue() is None, "a worker of an older epoch queues nothing"


def test_an_api_restart_leaves_notebooks_and_namespaces_untouched(private_service):
    private_service.start_supervisor(pool=1)
    private_service.start_api()
    nb = private_service.client().start()
    nb.evaluate("kept = [1, 2, 3]")
    private_service.stop_process(private_service.api_process)
    private_service.start_api()
    again = private_service.client().notebook(nb.id)
    assert again.evaluate("kept")["outputs"][0]["data"]["text/plain"] == "[1, 2, 3]"
    again.close()


def test_a_worker_killed_from_outside_is_reported_to_the_waiting_caller(private_service):
    private_service.start_supervisor(pool=2)
    private_service.start_api()
    api = private_service.client()
    nb = api.start()
    pid = nb.record["worker"]["pid"]
    cell = nb.evaluate("import time; time.sleep(60)", wait=False)
    wait_for(lambda: nb.cell(cell["id"])["state"] == "running", 10, "the cell to start")
    os.kill(pid, signal.SIGKILL)
    done = nb.wait(cell["id"], timeout=10)
    assert done["error"]["ename"] == "EngineDied" and "SIGKILL" in done["error"]["evalue"]
    record = nb.refresh()
    assert record["restarts"] == 1 and record["worker"]["pid"] != pid
    assert nb.evaluate("1 + 1")["status"] == "ok"
    nb.close()
