"""The protocol between a worker and its engine process: framed JSON with binary buffers.

A frame is a 4-byte big-endian length, that many bytes of UTF-8 JSON (an object), then, when
the object has `"buffers": n`, n buffers each as an 8-byte length and its bytes (pickled values
of push/pull/checkpoint, widget buffers). Both sides use these two functions and nothing else,
so the engine boundary is written down in one place.

Requests (worker -> engine) carry `id` and `op`; the engine answers each with one frame holding
the same `id` and either `reply` or `error`, and may send `event` frames with that `id` before it
(a cell's outputs). Ops:

    execute        {code}                   events: msg_type + content;  reply: execute_reply content
    complete       {code, cursor_pos}       reply: complete_reply content
    inspect        {code, cursor_pos, detail_level}
    is_complete    {code}
    push           {name, value | buffers[0] = dill}       reply: {name, type}
    pull           {name, dill: bool}       reply: {name, json, value | repr}, dill in buffers[0]
    checkpoint     {}                       reply: {saved, skipped, names}, one buffer per name
    restore        {names}, one buffer per name             reply: {restored, failed}
    comm           {msg_type, content, parent}, buffers     reply: {}  (comm_open / comm_msg / comm_close
                                                        from a front end, handled in order on the comm thread)
    comm_info      {target_name?}           reply: comm_info_reply content
    input_reply    {value}                  reply: {delivered: bool}
    workspace      {cwd, env}               reply: {cwd}  (before a notebook's first cell: chdir under HOME,
                                                        created on demand, and os.environ.update(env))

`execute` also carries `parent` (the cell's request header) and `options` (silent,
store_history, allow_stdin, user_expressions), and `interrupted: true` when the cell was
interrupted before it was sent. `{"op": "interrupt", "request": id}` has no `id` and no reply:
KeyboardInterrupt in that execute, at once if its code runs, when its code begins if it has not
yet, never in a later one. Besides the frames of a request, the engine sends
event frames that name their own `parent` (stream text, comm messages with their buffers,
input_request, the displays of a comm handler or of a thread whose cell has ended): the worker
joins the ones of the running cell to it and publishes the others under their parent.

The first frame the engine sends, unasked, is `{"ready": true, "pid": ...}`; the first frame
it reads is the `init` frame with its engine spec.
"""

from __future__ import annotations

import json
import socket
import struct

HEADER = struct.Struct(">I")
BUFFER_HEADER = struct.Struct(">Q")
MAX_HEADER_BYTES = 256 * 1024 * 1024


class FrameTooLarge(Exception):
    """A frame was larger than the reader allows; its bytes were read and thrown away."""

    def __init__(self, header: dict | None, size: int):
        super().__init__(f"frame of {size} bytes exceeds the limit")
        self.header = header or {}
        self.size = size


def send(sock: socket.socket, message: dict, buffers: list[bytes] | tuple = ()) -> None:
    """Write one frame (callers serialise concurrent senders with a lock)."""
    if buffers:
        message = {**message, "buffers": len(buffers)}
    body = json.dumps(message, separators=(",", ":"), default=_fallback).encode("utf-8")
    parts = [HEADER.pack(len(body)), body]
    for buffer in buffers:
        parts += [BUFFER_HEADER.pack(len(buffer)), bytes(buffer)]
    if sum(map(len, parts)) < 1 << 20:
        sock.sendall(b"".join(parts))
    else:  # large buffers (a checkpoint) are not copied once more into one string
        for part in parts:
            sock.sendall(part)


def receive(sock: socket.socket, max_bytes: int = MAX_HEADER_BYTES) -> tuple[dict, list[bytes]]:
    """Read one frame; EOFError when the peer has gone, FrameTooLarge (frame consumed) past max_bytes."""
    (size,) = HEADER.unpack(_read_exactly(sock, HEADER.size))
    if size > max_bytes:
        _discard(sock, size)
        raise FrameTooLarge(None, size)
    message = json.loads(_read_exactly(sock, size))
    count = int(message.pop("buffers", 0) or 0)
    buffers, total = [], size
    for index in range(count):
        (length,) = BUFFER_HEADER.unpack(_read_exactly(sock, BUFFER_HEADER.size))
        total += length
        if total > max_bytes:
            _discard(sock, length)
            for _ in range(index + 1, count):
                (rest,) = BUFFER_HEADER.unpack(_read_exactly(sock, BUFFER_HEADER.size))
                _discard(sock, rest)
            raise FrameTooLarge(message, total)
        buffers.append(_read_exactly(sock, length))
    return message, buffers


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    view = bytearray(size)
    got = 0
    while got < size:
        n = sock.recv_into(memoryview(view)[got:], size - got)
        if n == 0:
            raise EOFError("the other end of the engine socket closed")
        got += n
    return bytes(view)


def _discard(sock: socket.socket, size: int) -> None:
    scratch = bytearray(1 << 16)
    while size > 0:
        n = sock.recv_into(scratch, min(size, len(scratch)))
        if n == 0:
            raise EOFError("the other end of the engine socket closed")
        size -= n


def _fallback(value):
    """Engines may hand over values JSON does not know (numpy scalars in metadata, say)."""
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return repr(value)
