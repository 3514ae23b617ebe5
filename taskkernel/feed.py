"""Publishing a notebook's feed (pub/sub for live watchers, a capped stream for replay) and reading it.

Every message is numbered, appended to the stream and published in one Lua call, so the stream
order, the pub/sub order and the sequence numbers always agree, whoever publishes (a worker, the
supervisor reporting a death, the API aborting cells).
"""

from __future__ import annotations

import json
import time

import redis

from taskkernel import keys
from taskkernel.messages import as_text

# Blocking reads are cut into slices shorter than redis-py's socket timeout (5 s by default),
# so a dead connection is still noticed while no blocking call is ever mistaken for one.
MAX_BLOCK_MS = 4000

# KEYS: seq counter, stream.  ARGV: channel, stream maxlen, messages (JSON objects) ...
# Each message gets "seq" prepended, is XADDed with its type and parent cell id, and PUBLISHed.
_PUBLISH_LUA = """
local seq = 0
for i = 3, #ARGV, 3 do
  seq = redis.call('INCR', KEYS[1])
  local msg = '{"seq":' .. seq .. ',' .. string.sub(ARGV[i], 2)
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'm', msg, 't', ARGV[i+1], 'c', ARGV[i+2])
  redis.call('PUBLISH', ARGV[1], msg)
end
return seq
"""


class FeedPublisher:
    """Publishes Jupyter-shaped messages on notebooks' feeds."""

    def __init__(self, client: redis.Redis, stream_maxlen: int = 10_000):
        self._redis = client
        self._maxlen = stream_maxlen
        self._script = client.register_script(_PUBLISH_LUA)

    def publish(self, notebook_id: str, *messages: dict, pipe=None) -> None:
        """Publish messages in order; with `pipe`, queue the call on that pipeline instead."""
        if not messages:
            return
        argv: list = [keys.feed_channel(notebook_id), self._maxlen]
        for msg in messages:
            argv += [
                json.dumps(msg, separators=(",", ":")),
                msg["header"]["msg_type"],
                msg["parent_header"].get("msg_id") or "",
            ]
        self._script(keys=[keys.feed_seq(notebook_id), keys.feed_stream(notebook_id)], args=argv, client=pipe)


def last_position(client: redis.Redis, notebook_id: str) -> str:
    """The stream id of the newest feed message, or "0-0" when there is none."""
    newest = client.xrevrange(keys.feed_stream(notebook_id), count=1)
    return as_text(newest[0][0]) if newest else "0-0"


def wait_for_reply(client: redis.Redis, notebook_id: str, cell_id: str, after: str, timeout_s: float) -> bool:
    """Block until the cell's execute_reply appears in the stream after `after`; False on timeout."""
    deadline = time.monotonic() + timeout_s
    stream = keys.feed_stream(notebook_id)
    while True:
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        if remaining_ms <= 0:
            return False
        answer = client.xread({stream: after}, count=500, block=min(remaining_ms, MAX_BLOCK_MS))
        if not answer:
            continue
        for entry_id, fields in answer[0][1]:
            after = as_text(entry_id)
            if as_text(fields.get(b"t", b"")) == "execute_reply" and as_text(fields.get(b"c", b"")) == cell_id:
                return True


def read_stream(client: redis.Redis, notebook_id: str, after: str = "0-0", block_ms: int | None = None,
                count: int = 1000) -> list[tuple[str, dict]]:
    """Feed messages after stream position `after`, as (position, message) pairs."""
    answer = client.xread({keys.feed_stream(notebook_id): after}, count=count, block=block_ms)
    if not answer:
        return []
    return [(as_text(entry_id), json.loads(fields[b"m"])) for entry_id, fields in answer[0][1]]
