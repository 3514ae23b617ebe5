"""Everything a cell produces is published, in Jupyter's message shape, on the notebook's feed."""

import json
import threading
import time

import pytest

from taskkernel import feed as feeds
from taskkernel import keys, messages

pytestmark = pytest.mark.timeout(60)


def collect(service, notebook_id, until_idle_of, into, ready, seconds=20.0):
    """Subscribe, then gather messages until the idle of a cell in `until_idle_of` (at most `seconds`,
    so the thread never outlives its test)."""
    pubsub = service.redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.feed_channel(notebook_id))
    ready.set()
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            item = pubsub.get_message(timeout=0.5)
            if item is None:
                continue
            msg = json.loads(item["data"])
            into.append(msg)
            if msg["header"]["msg_type"] == "status" and msg["content"]["execution_state"] == "idle" \
                    and msg["parent_header"].get("msg_id") in until_idle_of:
                return
    finally:
        pubsub.close()


def watch(service, notebook, code):
    """Evaluate `code` while a plain Redis subscriber watches; return (cell, messages)."""
    got, ready, wanted = [], threading.Event(), set()
    # subscribe first, then learn the cell id: the subscriber stops at that cell's idle
    thread = threading.Thread(target=collect, args=(service, notebook.id, wanted, got, ready), daemon=True)
    thread.start()
    ready.wait(5)
    cell = notebook.evaluate(code, wait=False)
    wanted.add(cell["id"])
    thread.join(25)
    assert not thread.is_alive(), "the subscriber did not see the cell's idle within 20 s"
    return notebook.wait(cell["id"]), [m for m in got if m["parent_header"].get("msg_id") == cell["id"]]


def test_a_cells_story_on_the_feed_busy_first_idle_last(service, notebook):
    cell, feed = watch(service, notebook, "print('hello')\n6 * 7")
    types = [m["header"]["msg_type"] for m in feed]
    assert types == ["status", "execute_input", "stream", "execute_result", "execute_reply", "status"]
    assert feed[0]["content"] == {"execution_state": "busy"}
    assert feed[-1]["content"] == {"execution_state": "idle"}
    assert feed[1]["content"] == {"code": "print('hello')\n6 * 7", "execution_count": 1}
    assert feed[2]["content"] == {"name": "stdout", "text": "hello\n"}
    assert feed[3]["content"]["data"] == {"text/plain": "42"}
    assert feed[4]["content"]["status"] == "ok" and feed[4]["content"]["execution_count"] == 1
    assert all(m["parent_header"]["msg_id"] == cell["id"] for m in feed)


def test_a_long_cell_is_seen_starting_while_it_runs(service, notebook):
    """A quick cell's messages may all go out with its reply; a long one's start is published at once."""
    pubsub = service.redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.feed_channel(notebook.id))
    try:
        pubsub.get_message(timeout=1)
        cell = notebook.evaluate("import time\ntime.sleep(3)\n'slept'", wait=False)
        seen = []
        while len(seen) < 2:
            item = pubsub.get_message(timeout=2)
            assert item is not None, f"the cell's start was not published within 2 s (saw {seen})"
            seen.append(json.loads(item["data"]))
        assert [m["header"]["msg_type"] for m in seen] == ["status", "execute_input"]
        assert seen[0]["content"] == {"execution_state": "busy"}
        assert seen[1]["content"]["code"] == "import time\ntime.sleep(3)\n'slept'"
        assert notebook.cell(cell["id"])["state"] == "running"
    finally:
        pubsub.close()
    assert notebook.wait(cell["id"])["status"] == "ok"


def test_every_message_conforms_to_the_wire_format(service, notebook):
    _, feed = watch(service, notebook, "import sys\nprint('a')\nprint('b', file=sys.stderr)\ndisplay(1)\n1/0")
    assert {m["header"]["msg_type"] for m in feed} >= {"status", "execute_input", "stream", "display_data",
                                                      "error", "execute_reply"}
    for msg in feed:
        assert messages.validate_message(msg) == [], msg


def test_sequence_numbers_have_no_gaps(service, notebook):
    watch(service, notebook, "x = 1")
    _, feed = watch(service, notebook, "print(x)")
    seqs = [m["seq"] for m in feed]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert seqs[0] > 1, "numbering continues across cells"


def test_the_feed_is_replayable_from_the_stream(service, notebook):
    notebook.evaluate("print('kept')")
    replay = list(notebook.feed(timeout=1))
    types = [m["header"]["msg_type"] for m in replay]
    assert "stream" in types and types[-1] == "status"
    assert [m["seq"] for m in replay] == sorted(m["seq"] for m in replay)


# --- the publisher and the readers on their own (taskkernel/feed.py; a real Redis, no service) ------

def test_published_messages_are_numbered_streamed_and_sent_live_in_one_order(redis_db):
    publisher = feeds.FeedPublisher(redis_db)
    live = redis_db.pubsub(ignore_subscribe_messages=True)
    live.subscribe(keys.feed_channel("nb"))
    live.get_message(timeout=1)
    try:
        first = [messages.status("busy", notebook_id="nb", cell_id="c1"),
                 messages.make_message("stream", {"name": "stdout", "text": "a"}, notebook_id="nb", cell_id="c1")]
        publisher.publish("nb", *first)
        publisher.publish("nb")  # nothing to publish: no number is used up
        publisher.publish("nb", messages.status("idle", notebook_id="nb"))
        heard = []
        while len(heard) < 3:
            item = live.get_message(timeout=5)
            assert item is not None, f"only {len(heard)} of 3 messages were heard"
            heard.append(json.loads(item["data"]))
    finally:
        live.close()
    stored = [m for _, m in feeds.read_stream(redis_db, "nb")]
    assert stored == heard, "the stream and the channel carry the same messages in the same order"
    assert [m["seq"] for m in stored] == [1, 2, 3]
    assert [{k: v for k, v in m.items() if k != "seq"} for m in stored[:2]] == first
    raw = redis_db.xrange(keys.feed_stream("nb"))
    assert [(f[b"t"], f[b"c"]) for _, f in raw] == [(b"status", b"c1"), (b"stream", b"c1"), (b"status", b"")]


def test_the_stream_is_capped_and_replays_from_a_position(redis_db):
    publisher = feeds.FeedPublisher(redis_db, stream_maxlen=10)
    for i in range(300):
        publisher.publish("nb", messages.make_message("stream", {"name": "stdout", "text": str(i)}, notebook_id="nb"))
    kept = redis_db.xlen(keys.feed_stream("nb"))
    assert 10 <= kept <= 10 + 100, kept  # MAXLEN ~ trims whole nodes (stream-node-max-entries: 100)
    position, newest = feeds.read_stream(redis_db, "nb")[-1]
    assert newest["seq"] == 300 and feeds.last_position(redis_db, "nb") == position
    assert feeds.read_stream(redis_db, "nb", after=position) == []


def test_a_waiter_gets_the_reply_of_its_cell_with_the_record_it_carries(redis_db):
    publisher = feeds.FeedPublisher(redis_db)
    after = feeds.last_position(redis_db, "nb")
    assert after == "0-0"
    publisher.publish("nb", messages.make_message("execute_reply", {"status": "ok", "execution_count": 1},
                                                  notebook_id="nb", cell_id="other"))
    assert feeds.wait_for_reply(redis_db, "nb", "mine", after, timeout_s=0.3) is None, "another cell's reply"
    publisher.publish("nb", messages.make_message("execute_reply", {"status": "ok", "execution_count": 2},
                                                  notebook_id="nb", cell_id="mine"))
    entry = feeds.wait_for_reply(redis_db, "nb", "mine", after, timeout_s=5)
    assert entry["t"] == "execute_reply" and entry["c"] == "mine"
    assert json.loads(entry["m"])["content"]["execution_count"] == 2
    assert feeds.cell_record_from_reply(entry) is None, "the publisher attaches no record; the runtime's script does"
    stop = threading.Event()
    stop.set()
    assert feeds.wait_for_reply(redis_db, "nb", "never", after, timeout_s=30, stop=stop) is None
