"""Jupyter's kernel websocket framing (the "legacy" protocol Jupyter Server speaks to a gateway).

A message without buffers is one text frame: the message as JSON with a `channel` field. A message
with buffers (widgets send them) is one binary frame:

    n (uint32, big-endian), then n offsets (uint32): offsets[0] is where the JSON message starts,
    offsets[i] where buffer i starts; the JSON message, then the buffers, back to back.

so n = 1 + the number of buffers, and the JSON part runs from offsets[0] to offsets[1].
"""

from __future__ import annotations

import json
import struct

from taskkernel.exceptions import BadRequest
from taskkernel.messages import PROTOCOL_VERSION, new_id, now_iso

MAX_PARTS = 1024  # a frame claiming more parts than this is refused, not allocated


def parse(frame: str | bytes) -> dict:
    """The message in one websocket frame, with `buffers` (a list of bytes); BadRequest if malformed."""
    if isinstance(frame, str):
        msg = _loads(frame)
        msg["buffers"] = []
        return msg
    if len(frame) < 8:
        raise BadRequest("a binary frame needs a part count and at least one offset")
    (count,) = struct.unpack_from("!I", frame)
    if not 1 <= count <= MAX_PARTS or len(frame) < 4 * (count + 1):
        raise BadRequest(f"a binary frame with {count} parts does not fit in {len(frame)} bytes")
    offsets = list(struct.unpack_from(f"!{count}I", frame, 4)) + [len(frame)]
    if offsets[0] < 4 * (count + 1) or any(b < a for a, b in zip(offsets, offsets[1:])) or offsets[-2] > len(frame):
        raise BadRequest("the offsets of a binary frame are out of order")
    parts = [frame[start:end] for start, end in zip(offsets, offsets[1:])]
    msg = _loads(parts[0].decode("utf-8", errors="replace"))
    msg["buffers"] = parts[1:]
    return msg


def dump(msg: dict) -> str | bytes:
    """One websocket frame for `msg` (a text frame unless it has buffers)."""
    buffers = [bytes(b) for b in msg.get("buffers") or ()]
    body = {k: v for k, v in msg.items() if k != "buffers"}
    text = json.dumps({**body, "buffers": []} if not buffers else body, separators=(",", ":"), default=str)
    if not buffers:
        return text
    parts = [text.encode()] + buffers
    offsets = [4 * (len(parts) + 1)]
    for part in parts[:-1]:
        offsets.append(offsets[-1] + len(part))
    return struct.pack(f"!{len(parts) + 1}I", len(parts), *offsets) + b"".join(parts)


def _loads(text: str) -> dict:
    try:
        msg = json.loads(text)
    except ValueError as exc:
        raise BadRequest(f"a websocket frame is not JSON: {exc}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("header"), dict):
        raise BadRequest("a Jupyter message is a JSON object with a header")
    return msg


def jupyter_message(msg_type: str, content: dict, parent: dict | None, channel: str, *, session: str,
                    msg_id: str | None = None, date: str | None = None, metadata: dict | None = None,
                    buffers: list | tuple = ()) -> dict:
    """A Jupyter message as the websocket carries it (header, parent_header, metadata, content, channel)."""
    header = {"msg_id": msg_id or new_id(), "msg_type": msg_type, "username": "taskkernel", "session": session,
              "date": date or now_iso(), "version": PROTOCOL_VERSION}
    return {"header": header, "msg_id": header["msg_id"], "msg_type": msg_type, "parent_header": parent or {},
            "metadata": metadata or {}, "content": content, "channel": channel, "buffers": list(buffers)}
