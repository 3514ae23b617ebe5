"""Publishing a notebook's feed (pub/sub for live watchers, a capped stream for replay) and reading it.

Every message is numbered, appended to the stream and published in one Lua call, so the stream
order, the pub/sub order and the sequence numbers always agree, whoever publishes (a worker, the
supervisor reporting a death, the API aborting cells).
"""

from __future__ import annotations

import json
import threading
import time

import redis

from taskkernel import keys
from taskkernel.messages import as_text

# Blocking reads are cut into slices shorter than redis-py's socket timeout (5 s by default),
# so a dead connection is still noticed while no blocking call is ever mistaken for one.
MAX_BLOCK_MS = 4000
STOP_CHECK_MS = 250  # how often a wait that may be stopped looks at its stop event

# A Lua function shared by every script that publishes (this module's, and the runtime's script
# that finishes a cell): each message gets "seq" prepended, is XADDed with its type and parent cell
# id, and PUBLISHed. Messages are ARGV triples (JSON object, type, parent cell id) from `first`.
# `cell` (optional) is the finished cell record as JSON: it rides on the execute_reply entry (field
# "r"), so a caller waiting for the reply has the cell without reading it again.
PUBLISH_LUA_FUNCTION = """
local function publish_messages(seq_key, stream_key, channel, maxlen, argv, first, cell)
  local seq = 0
  for i = first, #argv, 3 do
    seq = redis.call('INCR', seq_key)
    local msg = '{"seq":' .. seq .. ',' .. string.sub(argv[i], 2)
    if cell and argv[i+1] == 'execute_reply' then
      redis.call('XADD', stream_key, 'MAXLEN', '~', maxlen, '*', 'm', msg, 't', argv[i+1], 'c', argv[i+2], 'r', cell)
    else
      redis.call('XADD', stream_key, 'MAXLEN', '~', maxlen, '*', 'm', msg, 't', argv[i+1], 'c', argv[i+2])
    end
    redis.call('PUBLISH', channel, msg)
  end
  return seq
end
"""

# KEYS: seq counter, stream.  ARGV: channel, stream maxlen, messages (JSON object, type, parent) ...
_PUBLISH_LUA = PUBLISH_LUA_FUNCTION + """
return publish_messages(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV, 3, nil)
"""


def message_argv(messages: tuple[dict, ...] | list[dict]) -> list[str]:
    """The ARGV triples `publish_messages` takes for these messages."""
    argv: list[str] = []
    for msg in messages:
        argv += [
            json.dumps(msg, separators=(",", ":")),
            msg["header"]["msg_type"],
            msg["parent_header"].get("msg_id") or "",
        ]
    return argv


class FeedPublisher:
    """Publishes Jupyter-shaped messages on notebooks' feeds."""

    def __init__(self, client: redis.Redis, stream_maxlen: int = 10_000):
        self._redis = client
        self.maxlen = stream_maxlen
        self._script = client.register_script(_PUBLISH_LUA)

    def publish(self, notebook_id: str, *messages: dict) -> None:
        """Publish messages in order, in one script call."""
        if not messages:
            return
        argv = [keys.feed_channel(notebook_id), self.maxlen, *message_argv(messages)]
        self._script(keys=[keys.feed_seq(notebook_id), keys.feed_stream(notebook_id)], args=argv)


def last_position(client: redis.Redis, notebook_id: str) -> str:
    """The stream id of the newest feed message, or "0-0" when there is none."""
    newest = client.xrevrange(keys.feed_stream(notebook_id), count=1)
    return as_text(newest[0][0]) if newest else "0-0"


def wait_for_reply(client: redis.Redis, notebook_id: str, cell_id: str, after: str,
                   timeout_s: float, stop: threading.Event | None = None) -> dict | None:
    """Block until the cell's execute_reply appears in the stream after `after`.

    Returns the reply's stream entry fields as text (with "r", the finished cell record as a JSON
    list of field/value pairs, when the worker could attach it), or None on timeout or, within
    STOP_CHECK_MS, once `stop` is set.
    """
    deadline = time.monotonic() + timeout_s
    stream = keys.feed_stream(notebook_id)
    block_ms = MAX_BLOCK_MS if stop is None else STOP_CHECK_MS
    while True:
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        if remaining_ms <= 0 or (stop is not None and stop.is_set()):
            return None
        answer = client.xread({stream: after}, count=500, block=min(remaining_ms, block_ms))
        if not answer:
            continue
        for entry_id, fields in answer[0][1]:
            after = as_text(entry_id)
            if fields.get(b"t") == b"execute_reply" and as_text(fields.get(b"c", b"")) == cell_id:
                return {as_text(k): as_text(v) for k, v in fields.items()}


def cell_record_from_reply(entry: dict) -> dict | None:
    """The finished cell's raw record carried by an execute_reply entry, or None when it has none."""
    pairs = entry.get("r")
    if not pairs:
        return None
    flat = json.loads(pairs)
    return dict(zip(flat[0::2], flat[1::2]))


def read_stream(client: redis.Redis, notebook_id: str, after: str = "0-0", block_ms: int | None = None,
                count: int = 1000) -> list[tuple[str, dict]]:
    """Feed messages after stream position `after`, as (position, message) pairs."""
    answer = client.xread({keys.feed_stream(notebook_id): after}, count=count, block=block_ms)
    if not answer:
        return []
    return [(as_text(entry_id), json.loads(fields[b"m"])) for entry_id, fields in answer[0][1]]
