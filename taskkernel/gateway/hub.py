"""The feed hub: one Redis pub/sub connection per gateway process, routing each notebook's feed to the
websockets open on its kernel.

A notebook's feed says everything a cell does, with the cell id as parent. The hub turns it into
Jupyter's iopub: a cell a websocket of this process sent gets that execute_request's own header as
parent (its outputs land under the front end's request), its execute_reply goes to that websocket
alone, on shell; everything else goes to every websocket watching the kernel. Cells from elsewhere
(the HTTP API, another gateway process) keep the cell id as parent.

A feed message can arrive before the thread that submitted its cell has returned the cell id (a
`1+1` takes about a millisecond), so each kernel's messages are handled in order by one task that
waits for this process's submits in flight before routing a message of a cell it does not know.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

import redis

from taskkernel import keys, messages
from taskkernel.gateway import framing
from taskkernel.gateway.app import REGISTRATION_TTL_S
from taskkernel.gateway.framing import jupyter_message

log = logging.getLogger("taskkernel.gateway")

SUBSCRIBE_TIMEOUT_S = 10.0
SUBMIT_WAIT_S = 30.0  # a submit waits at most assign_timeout_s for a worker; never hold a kernel's feed longer
IOPUB_TYPES = frozenset({"status", "execute_input", "stream", "display_data", "update_display_data",
                         "execute_result", "error", "clear_output", "comm_open", "comm_msg", "comm_close"})
MAX_COMM_PARENTS = 10_000  # comm message headers remembered per kernel (oldest forgotten first)
SILENT_HIDDEN = frozenset({"execute_input", "execute_result"})  # what a silent execute_request does not show


@dataclass
class Request:
    """An execute_request a websocket of this process sent: who asked, and under which header."""

    header: dict
    connection: object  # channels.ChannelsHandler
    silent: bool = False


class KernelFeed:
    """One notebook's feed in this process: its websockets, its gateway-submitted cells, its router task."""

    def __init__(self, notebook_id: str):
        self.notebook_id = notebook_id
        self.connections: set = set()
        self.requests: dict[str, Request] = {}
        self.comm_parents: dict[str, dict] = {}  # comm messages sent here: msg_id -> the front end's header
        self.in_flight: set[asyncio.Future] = set()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.task = asyncio.create_task(self._route_all(), name=f"feed-{notebook_id}")

    def remember_comm(self, header: dict) -> None:
        """A comm message this process delivers: what its handler publishes goes under `header`."""
        self.comm_parents[header["msg_id"]] = header
        while len(self.comm_parents) > MAX_COMM_PARENTS:
            self.comm_parents.pop(next(iter(self.comm_parents)))

    def broadcast(self, msg: dict) -> None:
        frame = framing.dump(msg)  # once, whatever the number of watchers
        for connection in list(self.connections):
            connection.send_frame(frame)

    def status(self, state: str, parent: dict) -> dict:
        return jupyter_message("status", {"execution_state": state}, parent, "iopub", session=self.notebook_id)

    async def _route_all(self) -> None:
        while True:
            message = await self.queue.get()
            try:
                await self._route(message)
            except Exception:
                log.exception("routing a feed message of notebook %s", self.notebook_id)

    async def _route(self, feed_msg: dict) -> None:
        msg_type = feed_msg["header"]["msg_type"]
        cell_id = feed_msg["parent_header"].get("msg_id")
        if cell_id and cell_id not in self.requests and self.in_flight:
            await asyncio.wait(list(self.in_flight), timeout=SUBMIT_WAIT_S)
        request = self.requests.get(cell_id) if cell_id else None
        parent = request.header if request else self.comm_parents.get(cell_id) or feed_msg["parent_header"]
        content = feed_msg["content"]
        if msg_type == "input_request":  # stdin: to the socket whose execute_request allowed it, alone
            if request is not None:
                request.connection.send(jupyter_message("input_request", content, parent, "stdin",
                                                        session=self.notebook_id, msg_id=feed_msg["header"]["msg_id"]))
            return
        if msg_type == "execute_reply":
            if request is None:
                return
            aborted = content.get("status") == "aborted"
            if aborted:  # an aborted cell never ran: give its request the busy/idle Jupyter promises
                self.broadcast(self.status("busy", parent))
            reply = {"user_expressions": {}, "payload": [], **content}
            request.connection.send(jupyter_message("execute_reply", reply, parent, "shell", session=self.notebook_id,
                                                    msg_id=feed_msg["header"]["msg_id"]))
            if aborted:
                self.requests.pop(cell_id, None)
                self.broadcast(self.status("idle", parent))
            return
        if msg_type not in IOPUB_TYPES or (request and request.silent and msg_type in SILENT_HIDDEN):
            return
        out = jupyter_message(msg_type, content, parent, "iopub", session=self.notebook_id,
                              msg_id=feed_msg["header"]["msg_id"], date=feed_msg["header"].get("date"),
                              metadata=feed_msg.get("metadata"),
                              buffers=messages.decode_buffers(feed_msg.get("buffers") or []))
        self.broadcast(out)
        state = content.get("execution_state") if msg_type == "status" else None
        if state == "idle" and request is not None:
            self.requests.pop(cell_id, None)
        if state == "dead":
            for connection in list(self.connections):
                connection.kernel_gone()

    def close(self) -> None:
        self.task.cancel()


class FeedHub:
    """The process's pub/sub subscriptions: a channel per notebook with at least one websocket here."""

    def __init__(self, gateway):
        self.gateway = gateway
        self.kernels: dict[str, KernelFeed] = {}
        self._pubsub = gateway.aredis.pubsub()
        self._confirmed: dict[str, asyncio.Event] = {}
        self._listener: asyncio.Task | None = None
        self._lock = asyncio.Lock()

    async def attach(self, notebook_id: str, connection) -> KernelFeed:
        """Route the notebook's feed to `connection` from now on; returns once subscribed."""
        async with self._lock:
            feed = self.kernels.get(notebook_id)
            if feed is None:
                feed = self.kernels[notebook_id] = KernelFeed(notebook_id)
                channel = keys.feed_channel(notebook_id)
                confirmed = self._confirmed[channel] = asyncio.Event()
                await self._pubsub.subscribe(channel)
                if self._listener is None or self._listener.done():
                    self._listener = asyncio.create_task(self._listen(), name="feed-hub")
                await asyncio.wait_for(confirmed.wait(), SUBSCRIBE_TIMEOUT_S)
            feed.connections.add(connection)
        await self._count(notebook_id, +1)
        return feed

    async def detach(self, notebook_id: str, connection) -> None:
        async with self._lock:
            feed = self.kernels.get(notebook_id)
            if feed is None or connection not in feed.connections:
                return
            feed.connections.discard(connection)
            if not feed.connections:
                del self.kernels[notebook_id]
                feed.close()
                await self._pubsub.unsubscribe(keys.feed_channel(notebook_id))
        await self._count(notebook_id, -1)

    async def _count(self, notebook_id: str, delta: int) -> None:
        """Keep this process's open-websocket count per notebook in Redis (the kernel model's `connections`)."""
        key = keys.gateway_connections(self.gateway.id)
        try:
            held = await self.gateway.aredis.hincrby(key, notebook_id, delta)
            if held <= 0:
                await self.gateway.aredis.hdel(key, notebook_id)
            await self.gateway.aredis.expire(key, int(REGISTRATION_TTL_S))
        except redis.RedisError as exc:
            log.warning("counting connections: %r", exc)

    async def _listen(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except redis.RedisError as exc:  # reconnects on the next call, resubscribing its channels
                log.warning("feed hub: %r", exc)
                await asyncio.sleep(0.5)
                continue
            if message is None:
                if not self.kernels:
                    return
                continue
            channel = message["channel"].decode() if isinstance(message["channel"], bytes) else message["channel"]
            if message["type"] == "subscribe":
                event = self._confirmed.pop(channel, None)
                if event is not None:
                    event.set()
                continue
            if message["type"] != "message":
                continue
            feed = self.kernels.get(channel.rsplit(":", 1)[-1])
            if feed is not None:
                feed.queue.put_nowait(json.loads(message["data"]))

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
        for feed in self.kernels.values():
            feed.close()
        try:
            await self._pubsub.aclose()
        except (redis.RedisError, AttributeError):
            pass
