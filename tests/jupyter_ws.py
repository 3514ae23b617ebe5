"""A minimal Jupyter kernel-websocket client for the gateway tests: send a request, collect what
comes back under it (its reply and its iopub messages up to idle)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from taskkernel.gateway import framing


class KernelSocket:
    """One websocket on /api/kernels/<id>/channels; every message it received is kept in `seen`."""

    def __init__(self, connection):
        self.connection = connection
        self.session = uuid.uuid4().hex
        self.seen: list[dict] = []
        self._unread: list[dict] = []

    @classmethod
    async def open(cls, url: str, headers: dict | None = None) -> "KernelSocket":
        ws_url = url.replace("http://", "ws://", 1)
        return cls(await websocket_connect(HTTPRequest(ws_url, headers=headers or {}), max_message_size=64 << 20))

    def send(self, msg_type: str, content: dict, channel: str = "shell", buffers=()) -> dict:
        """Send a request; returns its header. With `buffers` it goes as a binary frame."""
        msg = framing.jupyter_message(msg_type, content, None, channel, session=self.session, buffers=buffers)
        frame = framing.dump(msg)
        self.connection.write_message(frame, binary=isinstance(frame, bytes))
        return msg["header"]

    async def next(self, timeout_s: float = 30.0) -> dict:
        if self._unread:
            return self._unread.pop(0)
        frame = await asyncio.wait_for(self.connection.read_message(), timeout_s)
        if frame is None:
            raise ConnectionError("the gateway closed the websocket")
        msg = framing.parse(frame)
        self.seen.append(msg)
        return msg

    async def collect(self, header: dict, timeout_s: float = 60.0, reply: bool = True) -> list[dict]:
        """The messages whose parent is `header`, until its idle status (and its reply, if `reply`).
        Messages of other requests read meanwhile are kept for later calls."""
        deadline = time.monotonic() + timeout_s
        mine, others = [], []
        got_reply, got_idle = not reply, False
        while not (got_reply and got_idle):
            msg = await self.next(max(0.1, deadline - time.monotonic()))
            if msg["parent_header"].get("msg_id") != header["msg_id"]:
                others.append(msg)
                continue
            mine.append(msg)
            got_reply = got_reply or msg["msg_type"].endswith("_reply")
            got_idle = got_idle or (msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle")
        self._unread = others + self._unread
        return mine

    async def request(self, msg_type: str, content: dict, channel: str = "shell", timeout_s: float = 60.0,
                      buffers=(), reply: bool = True) -> list[dict]:
        return await self.collect(self.send(msg_type, content, channel, buffers), timeout_s, reply=reply)

    async def execute(self, code: str, timeout_s: float = 60.0, **content) -> list[dict]:
        return await self.request("execute_request", {"code": code, "silent": False, "store_history": True,
                                                      "user_expressions": {}, "allow_stdin": False, **content},
                                  timeout_s=timeout_s)

    def close(self) -> None:
        self.connection.close()


def of_type(messages: list[dict], msg_type: str) -> list[dict]:
    return [m for m in messages if m["msg_type"] == msg_type]


def reply_of(messages: list[dict]) -> dict:
    (reply,) = [m for m in messages if m["msg_type"].endswith("_reply")]
    return reply
