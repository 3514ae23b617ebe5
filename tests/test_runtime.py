"""The runtime (workers/runtime.py) on its own: what it does with what an engine emits.

A scripted engine stands in for the engine process and emits in memory, through the very
callbacks the real one calls (`on_event` of the execute request, `on_event` for parented events,
`on_output_flush` before each); its stdout goes through real pipes and the real OutputCapture.
Redis is real (a database of the session's redis-server); there is no Celery, no worker process
and no sandbox: the runtime's promises are checked where they are made.
"""

from __future__ import annotations

import json
import os

import pytest
import redis

from taskkernel import keys, messages
from taskkernel.exceptions import EngineDied
from taskkernel.notebooks import NotebookStore
from taskkernel.workers.capture import OutputCapture
from taskkernel.workers.runtime import TRUNCATED, CellRun, Runtime

pytestmark = pytest.mark.timeout(30)

WORKER = "w-runtime"
HOST = "runtime-host"


class ScriptedEngine:
    """Plays a script for each execute request, as the engine process would send it.

    A step is ("print", name, text): text written to the engine's stdout or stderr pipe;
    ("event", msg_type, content): an event of the execute request; ("parented", msg_type, content):
    an event that names the cell as its parent (comms, input requests); ("die", reason): the
    engine dies mid-cell. The reply is `reply` once the steps are played.
    """

    def __init__(self, stdout_fd: int, stderr_fd: int):
        self.fds = {"stdout": stdout_fd, "stderr": stderr_fd}
        self.on_output_flush = self.on_death = self.on_event = None
        self.script: list[tuple] = []
        self.reply: dict = {"status": "ok", "execution_count": 1}
        self.requests: list[tuple[str, dict]] = []
        self.interrupts = 0

    def request(self, op, *, timeout_s=None, buffers=(), on_event=None, **fields):
        self.requests.append((op, fields))
        if op != "execute":
            return {}, []
        for step in self.script:
            if step[0] == "print":
                os.write(self.fds[step[1]], step[2].encode())
            elif step[0] == "event":
                self.on_output_flush()  # what reached the pipes before an event comes before it
                on_event(step[1], step[2])
            elif step[0] == "parented":
                self.on_output_flush()
                self.on_event({"event": step[1], "content": step[2],
                               "parent": fields["parent"], "metadata": {}}, [])
            elif step[0] == "die":
                raise EngineDied(step[1])
        return self.reply, []

    def interrupt(self):
        self.interrupts += 1

    def disarm_interrupt(self):
        pass


class WorkerExited(Exception):
    """Stands for the os._exit with which a worker whose engine died ends itself."""


class Bench:
    """A runtime of one worker that exists only as records, with one notebook pinned to it."""

    def __init__(self, client: redis.Redis, output_limit: int = 1 << 20):
        self.redis = client
        client.hset(keys.worker(WORKER), mapping={"host": HOST, "queue": f"taskkernel.{HOST}.0", "pid": 1})
        client.sadd(keys.idle_workers("python", HOST), WORKER)
        client.sadd(keys.HOSTS, HOST)
        client.hset(keys.host(HOST), "pools", "{}")
        self.store = NotebookStore(client)
        self.notebook_id = self.store.create("python", timeout_s=1)["id"]
        self._fds = [*os.pipe(), *os.pipe()]
        out_r, out_w, err_r, err_w = self._fds
        self.engine = ScriptedEngine(out_w, err_w)
        self.capture = OutputCapture({"stdout": out_r, "stderr": err_r}, log_fd=-1)
        self.runtime = Runtime(client, self.engine, self.capture, worker_id=WORKER, output_limit=output_limit,
                               checkpoints=None)
        self.deaths: list[str] = []

        def engine_gone(reason: str):
            self.deaths.append(reason)
            raise WorkerExited(reason)

        self.runtime._engine_gone = engine_gone  # the seam: the worker process does not really exit

    def submit(self, code: str = "cell()", **options) -> str:
        return self.store.submit(self.notebook_id, code, lambda cell_id: ("", ""), **options).cell["id"]

    def run(self, *script, reply: dict | None = None, code: str = "cell()", **options) -> tuple[dict, list[dict]]:
        """Submit a cell, run it through the runtime with `script`; (its record, its feed messages)."""
        cell_id = self.submit(code, **options)
        self.engine.script = list(script)
        self.engine.reply = reply or {"status": "ok", "execution_count": 1}
        self.runtime.run_cell(cell_id, self.notebook_id)
        return self.store.get_cell(cell_id), self.feed(cell_id)

    def feed(self, cell_id: str | None = None) -> list[dict]:
        """The notebook's feed stream (the messages of `cell_id` only, when given)."""
        entries = self.redis.xrange(keys.feed_stream(self.notebook_id))
        feed = [json.loads(fields[b"m"]) for _, fields in entries]
        return [m for m in feed if cell_id is None or m["parent_header"].get("msg_id") == cell_id]

    def close(self):
        for fd in (self._fds[1], self._fds[3]):
            os.close(fd)
        self.capture.flush()  # end-of-file: the capture closes the read ends


@pytest.fixture
def bench(redis_db):
    made = Bench(redis_db)
    try:
        yield made
    finally:
        made.close()


def types(feed: list[dict]) -> list[str]:
    return [m["header"]["msg_type"] for m in feed]


def test_a_cells_story_busy_input_outputs_reply_idle_and_its_record(bench):
    cell, feed = bench.run(("print", "stdout", "hello\n"),
                           ("event", "execute_result", {"data": {"text/plain": "42"}, "metadata": {},
                                                        "execution_count": 1}),
                           code="print('hello')\n6 * 7")
    assert types(feed) == ["status", "execute_input", "stream", "execute_result", "execute_reply", "status"]
    assert [m["seq"] for m in feed] == list(range(feed[0]["seq"], feed[0]["seq"] + 6)), "numbered without gaps"
    assert feed[0]["content"] == {"execution_state": "busy"} and feed[-1]["content"] == {"execution_state": "idle"}
    assert feed[1]["content"] == {"code": "print('hello')\n6 * 7", "execution_count": 1}
    assert feed[2]["content"] == {"name": "stdout", "text": "hello\n"}
    assert feed[4]["content"] == {"status": "ok", "execution_count": 1, "user_expressions": {}, "payload": []}
    assert (cell["state"], cell["status"], cell["execution_count"], cell["stdout"]) == ("done", "ok", 1, "hello\n")
    assert cell["outputs"] == [{"output_type": "stream", "name": "stdout", "text": "hello\n"},
                               {"output_type": "execute_result", "execution_count": 1,
                                "data": {"text/plain": "42"}, "metadata": {}}]
    assert bench.store.get(bench.notebook_id)["state"] == "idle", "the worker is free for the next cell"
    assert bench.engine.requests[-1][1]["parent"] == {"msg_id": cell["id"], "msg_type": "execute_request"}


def test_a_silent_cell_announces_no_input(bench):
    _, feed = bench.run(options={"silent": True})
    assert types(feed) == ["status", "execute_reply", "status"]


def test_an_error_is_the_cells_error_and_its_reply_carries_it(bench):
    error = {"ename": "ZeroDivisionError", "evalue": "division by zero", "traceback": ["Traceback", "ZeroDiv..."]}
    cell, feed = bench.run(("event", "error", error), reply={"status": "error", "execution_count": 1, **error})
    assert types(feed) == ["status", "execute_input", "error", "execute_reply", "status"]
    assert feed[3]["content"] == {"status": "error", "execution_count": 1, **error}
    assert cell["status"] == "error" and cell["error"] == error
    assert cell["outputs"] == [{"output_type": "error", **error}]


def test_stop_on_error_aborts_the_cells_queued_behind_it(bench):
    failing = bench.submit("1/0", stop_on_error=True)
    behind = [bench.submit(f"after({i})") for i in range(2)]
    bench.engine.reply = {"status": "error", "execution_count": 1, "ename": "E", "evalue": "", "traceback": []}
    assert bench.runtime.run_cell(failing, bench.notebook_id) == "error"
    for cell_id in behind:
        assert bench.store.get_cell(cell_id)["status"] == "aborted"
        (reply,) = bench.feed(cell_id)
        assert reply["content"] == {"status": "aborted", "execution_count": None,
                                    "reason": "a cell sent with stop_on_error failed"}
    assert bench.runtime.run_cell(behind[0], bench.notebook_id) == "skipped", "an aborted cell never runs"


def test_a_cell_that_is_not_queued_any_more_is_skipped_and_counted(bench):
    cell, _ = bench.run()
    before = len(bench.feed())
    assert bench.runtime.run_cell(cell["id"], bench.notebook_id) == "skipped", "a redelivery runs nothing"
    assert len(bench.feed()) == before, "and publishes nothing"
    assert bench.redis.hget(keys.notebook(bench.notebook_id), "dropped_deliveries") == b"1"


def test_output_past_the_limit_is_cut_once_with_a_notice_and_rich_output_dropped(redis_db):
    small = Bench(redis_db, output_limit=100)
    try:
        cell, feed = small.run(("print", "stdout", "x" * 60), ("print", "stdout", "y" * 60),
                               ("event", "display_data", {"data": {"text/plain": "z" * 50}, "metadata": {},
                                                          "transient": {}}),
                               ("print", "stdout", "more\n"))
    finally:
        small.close()
    notice = TRUNCATED.format(limit=100)
    assert cell["stdout"] == "x" * 60 + "y" * 40 + notice
    assert cell["stderr"] == "", "the notice comes once, with the text it cut"
    assert "display_data" not in types(feed) and not any(o["output_type"] == "display_data" for o in cell["outputs"])
    streamed = "".join(m["content"]["text"] for m in feed if m["header"]["msg_type"] == "stream")
    assert streamed == cell["stdout"], "the feed shows what the record keeps"


def test_a_display_updated_by_its_id_and_outputs_cleared_as_front_ends_do(bench):
    shown = {"data": {"text/plain": "0%"}, "metadata": {}, "transient": {"display_id": "bar"}}
    updated = {"data": {"text/plain": "100%"}, "metadata": {}, "transient": {"display_id": "bar"}}
    cell, feed = bench.run(("event", "display_data", shown), ("event", "update_display_data", updated))
    assert types(feed)[2:4] == ["display_data", "update_display_data"]
    assert cell["outputs"] == [{"output_type": "display_data", "data": {"text/plain": "100%"}, "metadata": {}}]

    cell, feed = bench.run(("print", "stdout", "old\n"), ("event", "clear_output", {"wait": True}),
                           ("print", "stdout", "new\n"))
    assert "clear_output" in types(feed)
    assert cell["outputs"] == [{"output_type": "stream", "name": "stdout", "text": "new\n"}]
    assert cell["stdout"] == "old\nnew\n", "stdout stays as printed"


def test_comms_and_input_requests_of_the_cell_go_out_live_under_the_cell(bench):
    cell, feed = bench.run(("parented", "comm_open", {"comm_id": "c1", "target_name": "jupyter.widget", "data": {}}),
                           ("parented", "comm_msg", {"comm_id": "c1", "data": {"method": "update"}}),
                           ("parented", "input_request", {"prompt": "name? ", "password": False}),
                           ("parented", "comm_close", {"comm_id": "c1", "data": {}}))
    assert types(feed) == ["status", "execute_input", "comm_open", "comm_msg", "input_request", "comm_close",
                           "execute_reply", "status"]
    assert all(m["parent_header"] == {"msg_id": cell["id"], "msg_type": "execute_request"} for m in feed)
    assert cell["outputs"] == [], "a comm or an input request is no output of the cell"


def test_an_engine_dying_in_a_cell_answers_it_at_once_and_restarts_the_notebook(bench):
    queued_behind = None

    def queue_one_behind():
        nonlocal queued_behind
        queued_behind = bench.submit("after()")

    cell_id = bench.submit("crash()")
    bench.engine.script = [("print", "stdout", "before\n"), ("die", "the engine process died (signal 9)")]
    original = bench.engine.request

    def request(op, **fields):
        if op == "execute":
            queue_one_behind()
        return original(op, **fields)

    bench.engine.request = request
    with pytest.raises(WorkerExited):
        bench.runtime.run_cell(cell_id, bench.notebook_id)
    assert bench.deaths == ["the engine process died (signal 9)"], "the worker ends itself"
    cell = bench.store.get_cell(cell_id)
    assert (cell["state"], cell["status"], cell["stdout"]) == ("done", "error", "before\n")
    assert cell["error"]["ename"] == "EngineDied" and "namespace was lost" in cell["error"]["evalue"]
    feed = bench.feed()
    assert [m["header"]["msg_type"] for m in feed if m["parent_header"].get("msg_id") == cell_id][-3:] == \
        ["error", "execute_reply", "status"]
    assert bench.store.get_cell(queued_behind)["status"] == "aborted", "what was queued behind it is aborted"
    restarting = [m for m in feed if m["header"]["msg_type"] == "status"
                  and m["content"]["execution_state"] == "restarting"]
    assert len(restarting) == 1 and restarting[0]["parent_header"] == {}
    record = bench.store.get(bench.notebook_id)
    assert record["worker"] is None and bench.notebook_id in bench.store.orphans(), \
        "the notebook waits for a fresh worker"


def test_an_interrupt_reaches_the_engine_only_while_a_cell_is_the_workers(bench):
    assert bench.runtime.interrupt() == {"interrupted": None}
    assert bench.engine.interrupts == 0
    seen = []
    bench.engine.script = [("print", "stdout", "x")]
    original = bench.engine.request

    def request(op, **fields):
        if op == "execute":
            seen.append(bench.runtime.interrupt())
        return original(op, **fields)

    bench.engine.request = request
    cell_id = bench.submit()
    bench.runtime.run_cell(cell_id, bench.notebook_id)
    assert seen == [{"interrupted": cell_id}] and bench.engine.interrupts == 1


def test_an_interrupt_that_comes_once_the_cell_is_claimed_but_not_yet_sent_is_kept(bench):
    """The claim makes the cell's record say running; an interrupt from then on is the cell's, even
    before the runtime has sent it to the engine (the engine keeps it, see EngineProcess.interrupt)."""
    cell_id = bench.submit()
    claim, seen = bench.runtime._claim, []

    def claim_then_interrupt(*args, **kwargs):
        claimed = claim(*args, **kwargs)
        seen.append((bench.store.get_cell(cell_id)["state"], bench.runtime.interrupt()))
        return claimed

    bench.runtime._claim = claim_then_interrupt
    bench.runtime.run_cell(cell_id, bench.notebook_id)
    assert seen == [("running", {"interrupted": cell_id})] and bench.engine.interrupts == 1


def test_an_interrupt_while_a_cell_that_is_not_ours_is_claimed_reaches_no_cell(bench):
    cell, _ = bench.run()
    claim, disarmed = bench.runtime._claim, []

    def claim_then_interrupt(*args, **kwargs):
        claimed = claim(*args, **kwargs)
        bench.runtime.interrupt()
        return claimed

    bench.runtime._claim = claim_then_interrupt
    bench.engine.disarm_interrupt = lambda: disarmed.append(True)
    assert bench.runtime.run_cell(cell["id"], bench.notebook_id) == "skipped"
    assert disarmed, "the interrupt kept for it is cleared, not left for the next cell"
    assert bench.runtime.interrupt() == {"interrupted": None}


# --- CellRun.add_output: the outputs a cell keeps, as nbclient keeps them (no Redis) ----------------

def message(msg_type: str, **content) -> dict:
    return messages.make_message(msg_type, content, notebook_id="n", cell_id="c")


def test_consecutive_text_of_one_stream_is_one_output():
    run = CellRun("n", "c", 1 << 20, 0.0)
    for name, text in [("stdout", "a"), ("stdout", "b"), ("stderr", "!"), ("stdout", "c")]:
        run.add_output(message("stream", name=name, text=text))
    assert run.outputs == [{"output_type": "stream", "name": "stdout", "text": "ab"},
                           {"output_type": "stream", "name": "stderr", "text": "!"},
                           {"output_type": "stream", "name": "stdout", "text": "c"}]


def test_an_update_changes_every_output_showing_its_display_and_adds_none():
    run = CellRun("n", "c", 1 << 20, 0.0)
    run.add_output(message("display_data", data={"text/plain": "a"}, metadata={}, transient={"display_id": "d"}))
    run.add_output(message("display_data", data={"text/plain": "other"}, metadata={}, transient={}))
    run.add_output(message("display_data", data={"text/plain": "b"}, metadata={}, transient={"display_id": "d"}))
    run.add_output(message("update_display_data", data={"text/plain": "c"}, metadata={"m": 1},
                           transient={"display_id": "d"}))
    assert [o["data"]["text/plain"] for o in run.outputs] == ["c", "other", "c"]
    assert run.outputs[0]["metadata"] == {"m": 1}
    run.add_output(message("update_display_data", data={"text/plain": "x"}, metadata={},
                           transient={"display_id": "never-shown"}))
    assert len(run.outputs) == 3


def test_clear_output_clears_at_once_or_with_wait_when_the_next_output_comes():
    run = CellRun("n", "c", 1 << 20, 0.0)
    run.add_output(message("stream", name="stdout", text="a"))
    run.add_output(message("clear_output", wait=False))
    assert run.outputs == []
    run.add_output(message("stream", name="stdout", text="b"))
    run.add_output(message("clear_output", wait=True))
    assert run.outputs == [{"output_type": "stream", "name": "stdout", "text": "b"}], "kept until the next output"
    run.add_output(message("execute_result", execution_count=1, data={"text/plain": "1"}, metadata={}))
    assert [o["output_type"] for o in run.outputs] == ["execute_result"]
