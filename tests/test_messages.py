"""The wire format: every feed message shape is checked by one validator, which must catch bad ones."""

import json

from taskkernel import keys, messages


def test_a_well_formed_message_passes():
    msg = messages.make_message("stream", {"name": "stdout", "text": "hi"}, notebook_id="nb", cell_id="c1")
    assert messages.validate_message(msg) == []
    assert msg["parent_header"] == {"msg_id": "c1", "msg_type": "execute_request"}


def test_missing_content_keys_and_unknown_types_are_caught():
    msg = messages.make_message("execute_result", {"data": {}}, notebook_id="nb", cell_id="c1")
    assert "execute_result.content.execution_count missing" in messages.validate_message(msg)
    msg = messages.make_message("bogus", {}, notebook_id="nb")
    assert messages.validate_message(msg) == ["unknown msg_type 'bogus'"]
    msg = messages.status("sleepy", notebook_id="nb")
    assert messages.validate_message(msg) == ["bad execution_state 'sleepy'"]


def test_outputs_are_nbformat_outputs():
    msg = messages.make_message("error", {"ename": "E", "evalue": "v", "traceback": ["t"]}, notebook_id="n")
    assert messages.output_from_message(msg) == {"output_type": "error", "ename": "E", "evalue": "v",
                                                 "traceback": ["t"]}
    assert messages.output_from_message(messages.status("busy", notebook_id="n")) is None


def test_cells_round_trip_through_their_redis_hash():
    cell = {"id": "c", "notebook_id": "n", "code": "x", "state": "done", "status": "ok",
            "execution_count": 3, "stdout": "o", "stderr": "", "outputs": [{"output_type": "stream"}],
            "error": None, "stop_on_error": True}
    raw = {k.encode(): v.encode() for k, v in messages.cell_to_redis(cell).items()}
    back = messages.cell_from_redis(raw)
    for key in cell:
        assert back[key] == cell[key], key


def test_execute_replies_carry_a_known_status_and_an_error_reply_its_error():
    bad = messages.make_message("execute_reply", {"status": "maybe", "execution_count": 1}, notebook_id="n")
    assert messages.validate_message(bad) == ["bad execute_reply status 'maybe'"]
    bare = messages.make_message("execute_reply", {"status": "error", "execution_count": 1}, notebook_id="n")
    assert messages.validate_message(bare) == [f"execute_reply.content.{k} missing" for k in ("ename", "evalue",
                                                                                              "traceback")]


# --- the contract: every message the trusted side publishes, from the code that publishes it --------

def test_every_message_type_the_workers_and_the_store_publish_conforms(redis_db):
    """Each msg_type of MSG_TYPES, each execution state but Jupyter's `starting` (no taskkernel
    notebook is ever seen starting: a notebook is pinned to a warm worker) and each reply status,
    as published by the runtime (scripted engine, workers/runtime.py), the store's aborts, restarts
    and deletes (taskkernel/notebooks.py) and a dying engine: all of them pass the one validator."""
    from tests.test_runtime import Bench, WorkerExited

    error = {"ename": "ValueError", "evalue": "bad", "traceback": ["ValueError: bad"]}
    bench = Bench(redis_db)
    try:
        bench.run(("print", "stdout", "out\n"), ("print", "stderr", "err\n"),
                  ("event", "display_data", {"data": {"text/plain": "d"}, "metadata": {},
                                             "transient": {"display_id": "x"}}),
                  ("event", "update_display_data", {"data": {"text/plain": "e"}, "metadata": {},
                                                    "transient": {"display_id": "x"}}),
                  ("event", "clear_output", {"wait": False}),
                  ("event", "execute_result", {"data": {"text/plain": "1"}, "metadata": {}, "execution_count": 1}),
                  ("parented", "comm_open", {"comm_id": "c", "target_name": "t", "data": {}}),
                  ("parented", "comm_msg", {"comm_id": "c", "data": {"x": 1}}),
                  ("parented", "comm_close", {"comm_id": "c", "data": {}}),
                  ("parented", "input_request", {"prompt": "? ", "password": True}))
        failing = bench.submit("fail()", stop_on_error=True)
        bench.submit("aborted()")
        bench.engine.script = [("event", "error", error)]
        bench.engine.reply = {"status": "error", "execution_count": 2, **error}
        bench.runtime.run_cell(failing, bench.notebook_id)
        dying = bench.submit("die()")
        bench.engine.script = [("die", "the engine process died (signal 9)")]
        try:
            bench.runtime.run_cell(dying, bench.notebook_id)
        except WorkerExited:
            pass
        feed = bench.feed()
        live = redis_db.pubsub(ignore_subscribe_messages=True)  # a deleted notebook's stream goes with it
        live.subscribe(keys.feed_channel(bench.notebook_id))
        live.get_message(timeout=1)
        bench.store.delete(bench.notebook_id)
        item = live.get_message(timeout=10)
        live.close()
        assert item is not None, "the delete was announced on the feed"
        feed.append(json.loads(item["data"]))
    finally:
        bench.close()
    for msg in feed:
        assert messages.validate_message(msg) == [], msg
    assert {m["header"]["msg_type"] for m in feed} == set(messages.MSG_TYPES)
    states = {m["content"]["execution_state"] for m in feed if m["header"]["msg_type"] == "status"}
    assert states == {"busy", "idle", "restarting", "dead"}
    assert feed[-1]["content"] == {"execution_state": "dead"}
    replies = [m["content"] for m in feed if m["header"]["msg_type"] == "execute_reply"]
    assert {r["status"] for r in replies} == set(messages.CELL_STATUSES)
    assert [r["ename"] for r in replies if r["status"] == "error"] == ["ValueError", "EngineDied"]
