"""The Python client: Client(url) -> Notebook handles that evaluate, complete and follow the feed."""

from __future__ import annotations

import http.client
import json
import select
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator

from taskkernel.exceptions import TaskkernelError
from taskkernel.messages import IDEMPOTENCY_HEADER


class ApiError(TaskkernelError):
    """The API answered with an error."""

    def __init__(self, status: int, body: dict):
        super().__init__(body.get("message", f"HTTP {status}"), **{k: v for k, v in body.items() if k != "message"})
        self.status = status
        self.code = body.get("error", "http_error")


# methods HTTP defines as idempotent: repeating one after a connection reset changes nothing more
SAFE_TO_REPEAT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether an idle connection's socket was closed (or reset) by the other end."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


class Client:
    """Talks to one taskkernel API over HTTP (one keep-alive connection per thread)."""

    def __init__(self, url: str = "http://127.0.0.1:8000", token: str | None = None, timeout_s: float = 60.0):
        parsed = urllib.parse.urlsplit(url)
        self.url = url.rstrip("/")
        self._host, self._port = parsed.hostname, parsed.port or 80
        self._token = token
        self._timeout_s = timeout_s
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and conn.sock is not None and _closed_by_peer(conn.sock):
            conn.close()  # the server ended the idle keep-alive connection: nothing was sent on it
            conn = None
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout_s)
        return conn

    def request(self, method: str, path: str, body: dict | None = None, timeout_s: float | None = None,
                headers: dict[str, str] | None = None, retry: bool | None = None):
        """Send one request; return (status, decoded JSON or None). Raises ApiError on 4xx/5xx.

        A request whose connection is reset is sent once more only when repeating it is safe:
        GET, PUT and DELETE, a POST with an Idempotency-Key header, or when `retry` says so. An
        idle keep-alive connection the server has closed is replaced before sending.
        """
        headers = {"Accept": "application/json", **(headers or {})}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if retry is None:
            retry = method in SAFE_TO_REPEAT or IDEMPOTENCY_HEADER in headers
        for attempt in (1, 2):
            conn = self._connection()
            conn.timeout = timeout_s or self._timeout_s
            if conn.sock is not None:
                conn.sock.settimeout(conn.timeout)
            try:
                conn.request(method, "/api" + path, body=payload, headers=headers)
                response = conn.getresponse()
                data = response.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
                self._local.conn = None
                if attempt == 2 or not retry:
                    raise
        decoded = json.loads(data) if data else None
        if response.status >= 400:
            raise ApiError(response.status, decoded or {})
        return response.status, decoded

    def engines(self) -> list[dict]:
        return self.request("GET", "/engines")[1]["engines"]

    def notebooks(self) -> list[dict]:
        return self.request("GET", "/notebooks")[1]["notebooks"]

    def start(self, engine: str = "python", lease_s: float | None = None) -> "Notebook":
        """Open a notebook on a fresh worker of `engine`. With `lease_s`, the service deletes it
        unless `Notebook.renew_lease()` is called within every `lease_s` seconds."""
        body: dict = {"engine": engine}
        if lease_s is not None:
            body["lease_s"] = lease_s
        _, record = self.request("POST", "/notebooks", body)
        return Notebook(self, record)

    def notebook(self, notebook_id: str) -> "Notebook":
        return Notebook(self, self.request("GET", f"/notebooks/{notebook_id}")[1])

    def status(self) -> dict:
        """Hosts (heartbeat, pools, idle workers), notebooks (state, queue depth) and cell counts."""
        return self.request("GET", "/status")[1]

    def cluster(self, notebooks, engine: str = "python", max_workers: int | None = None):
        """A taskkernel.cluster.Cluster: fan-out over notebooks (handles or ids), or `n` new ones given an int."""
        from taskkernel.cluster import Cluster

        return Cluster(self, notebooks, engine=engine, max_workers=max_workers)


class Notebook:
    """A handle on one running notebook; a context manager that deletes it on exit."""

    def __init__(self, client: Client, record: dict):
        self.client = client
        self.id = record["id"]
        self.record = record
        self._stop_renewing: threading.Event | None = None

    def __enter__(self) -> "Notebook":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def refresh(self) -> dict:
        self.record = self.client.request("GET", f"/notebooks/{self.id}")[1]
        return self.record

    def renew_lease(self) -> dict:
        """Keep a notebook opened with a lease for another lease_s seconds."""
        self.record = self.client.request("POST", f"/notebooks/{self.id}/lease", {})[1]
        return self.record

    def keep_alive(self) -> None:
        """Renew the notebook's lease from a daemon thread, every third of it, until close() or the
        process dies (then the service deletes the notebook when the lease runs out)."""
        lease_s = self.record.get("lease_s")
        if not lease_s or self._stop_renewing is not None:
            return
        stop = self._stop_renewing = threading.Event()

        def renew() -> None:
            while not stop.wait(lease_s / 3):
                try:
                    self.client.request("POST", f"/notebooks/{self.id}/lease", {})
                except ApiError as exc:
                    if exc.status in (404, 409):  # deleted, or no lease to renew
                        return
                except (OSError, http.client.HTTPException):
                    pass  # the service may be back before the lease runs out

        threading.Thread(target=renew, name="taskkernel-lease", daemon=True).start()

    def evaluate(self, code: str, wait: bool = True, timeout: float = 60.0, stop_on_error: bool = False,
                 idempotency_key: str | None = None, **options) -> dict:
        """Run a cell; with `wait`, return the finished cell (or the running one after `timeout` s).

        Each call sends an Idempotency-Key (a fresh one unless `idempotency_key` is given), so the
        request is repeated after a connection reset without the code running twice. `options` are
        Jupyter's execute_request flags: silent, store_history, allow_stdin, user_expressions.
        """
        body = {"code": code, "wait": wait, "timeout": timeout, **options}
        if stop_on_error:
            body["stop_on_error"] = True
        headers = {IDEMPOTENCY_HEADER: idempotency_key or uuid.uuid4().hex}
        return self.client.request("POST", f"/notebooks/{self.id}/evaluate", body, timeout_s=timeout + 30,
                                   headers=headers)[1]

    def cell(self, cell_id: str) -> dict:
        return self.client.request("GET", f"/notebooks/{self.id}/cells/{cell_id}")[1]

    def wait(self, cell_id: str, timeout: float = 60.0, poll_s: float = 0.05) -> dict:
        """Poll a cell until it is done (or `timeout` s pass); return it."""
        deadline = time.monotonic() + timeout
        while True:
            cell = self.cell(cell_id)
            if cell["state"] == "done" or time.monotonic() > deadline:
                return cell
            time.sleep(poll_s)

    def complete(self, code: str, cursor_pos: int | None = None) -> dict:
        body = {"code": code, "cursor_pos": len(code) if cursor_pos is None else cursor_pos}
        return self.client.request("POST", f"/notebooks/{self.id}/complete", body, retry=True)[1]

    def inspect(self, code: str, cursor_pos: int | None = None) -> dict:
        body = {"code": code, "cursor_pos": len(code) if cursor_pos is None else cursor_pos}
        return self.client.request("POST", f"/notebooks/{self.id}/inspect", body, retry=True)[1]

    def is_complete(self, code: str) -> dict:
        return self.client.request("POST", f"/notebooks/{self.id}/is_complete", {"code": code}, retry=True)[1]

    def interrupt(self) -> dict:
        return self.client.request("POST", f"/notebooks/{self.id}/interrupt", {})[1]

    def restart(self) -> dict:
        self.record = self.client.request("POST", f"/notebooks/{self.id}/restart", {})[1]
        return self.record

    def feed(self, after: str = "0-0", timeout: float | None = None, redis_url: str | None = None) -> Iterator[dict]:
        """Feed messages from stream position `after` (default: the start), then live.

        Over Server-Sent Events from the API, or straight from Redis when `redis_url` is given
        (for processes inside the deployment). Each message gets its stream position as
        `position`. Stops after `timeout` s (over Redis: of silence), if given.
        """
        if redis_url:
            yield from self._feed_from_redis(redis_url, after, timeout)
            return
        query = {"after": after}
        if timeout is not None:
            query["timeout"] = str(timeout)
        conn = http.client.HTTPConnection(self.client._host, self.client._port, timeout=(timeout or 3600) + 30)
        headers = {"Accept": "text/event-stream"}
        if self.client._token:
            headers["Authorization"] = f"Bearer {self.client._token}"
        try:
            conn.request("GET", f"/api/notebooks/{self.id}/feed?{urllib.parse.urlencode(query)}", headers=headers)
            response = conn.getresponse()
            if response.status >= 400:
                raise ApiError(response.status, json.loads(response.read() or b"{}"))
            event: dict[str, str] = {}
            for raw in response:
                line = raw.decode().rstrip("\r\n")
                if line == "":
                    if event.get("event", "message") == "message" and "data" in event:
                        message = json.loads(event["data"])
                        message["position"] = event.get("id")
                        yield message
                    elif event.get("event") == "end":
                        return
                    event = {}
                elif not line.startswith(":"):
                    name, _, value = line.partition(":")
                    event[name] = value[1:] if value.startswith(" ") else value
        finally:
            conn.close()

    def cells(self) -> list[dict]:
        """Every cell of the notebook, in submission order."""
        return self.client.request("GET", f"/notebooks/{self.id}/cells")[1]["cells"]

    def follow(self, cell_id: str, after: str = "0-0", timeout: float | None = None) -> Iterator[dict]:
        """The feed messages of one cell from stream position `after`, as they are published.

        Ends after the cell's execute_reply, when `timeout` s pass, or when the notebook is
        deleted. Each message carries its `position`: pass the last one seen as `after` to
        resume (after a Ctrl-C, say) without missing or repeating a message.
        """
        for message in self.feed(after=after, timeout=timeout):
            if message["parent_header"].get("msg_id") != cell_id:
                continue
            yield message
            if message["header"]["msg_type"] == "execute_reply":
                return

    def send_comm(self, msg_type: str, content: dict, buffers: list[bytes] = (), msg_id: str | None = None) -> str:
        """Deliver a comm_open / comm_msg / comm_close to the engine (even while a cell runs); return
        its msg_id, the parent of what the comm's handler publishes on the feed."""
        from taskkernel.messages import encode_buffers

        body = {"msg_type": msg_type, "content": content}
        if buffers:
            body["buffers"] = encode_buffers(list(buffers))
        if msg_id:
            body["msg_id"] = msg_id
        return self.client.request("POST", f"/notebooks/{self.id}/comms", body)[1]["msg_id"]

    def comm_msg(self, comm_id: str, data: dict, buffers: list[bytes] = ()) -> str:
        """A comm_msg to comm `comm_id` (say, a widget's `{"method": "update", "state": {...}}`)."""
        return self.send_comm("comm_msg", {"comm_id": comm_id, "data": data}, buffers)

    def comm_info(self, target_name: str | None = None) -> dict:
        """Jupyter's comm_info_reply content: {"comms": {comm_id: {"target_name"}}, "status"}."""
        query = "?" + urllib.parse.urlencode({"target_name": target_name}) if target_name else ""
        return self.client.request("GET", f"/notebooks/{self.id}/comms{query}")[1]

    def comms(self, after: str = "0-0", timeout: float | None = None) -> Iterator[dict]:
        """The comm_open / comm_msg / comm_close messages of the feed (with base64 `buffers`)."""
        for message in self.feed(after=after, timeout=timeout):
            if message["header"]["msg_type"] in ("comm_open", "comm_msg", "comm_close"):
                yield message

    def input_reply(self, value: str) -> dict:
        """Answer the running cell's input_request (it was evaluated with allow_stdin=True)."""
        return self.client.request("POST", f"/notebooks/{self.id}/input", {"value": value})[1]

    def stream(self, code: str, after: str = "0-0", timeout: float | None = None) -> Iterator[dict]:
        """Queue a cell and yield its feed messages (output as it is printed), ending with its reply.

        `after` is a feed position from before the cell was queued ("0-0" replays the notebook's
        history first, which is filtered out); the cell's id is each message's parent msg_id.
        """
        cell = self.evaluate(code, wait=False)
        yield from self.follow(cell["id"], after=after, timeout=timeout)

    def push(self, **values) -> None:
        """Set variables in the notebook to arbitrary Python objects (sent with dill)."""
        import base64

        import dill

        for name, value in values.items():
            payload = base64.b64encode(dill.dumps(value, recurse=True)).decode()
            self.client.request("PUT", f"/notebooks/{self.id}/variables/{name}", {"dill": payload})

    def pull(self, name: str):
        """A variable of the notebook as a Python object (sent with dill)."""
        import base64

        import dill

        reply = self.client.request("GET", f"/notebooks/{self.id}/variables/{name}?format=dill")[1]
        return dill.loads(base64.b64decode(reply["dill"]))

    def checkpoint(self, timeout: float = 60.0) -> dict:
        return self.client.request("POST", f"/notebooks/{self.id}/checkpoint", {"timeout": timeout},
                                   timeout_s=timeout + 30)[1]

    def restore(self, timeout: float = 60.0) -> dict:
        return self.client.request("POST", f"/notebooks/{self.id}/restore", {"timeout": timeout},
                                   timeout_s=timeout + 30)[1]

    def _feed_from_redis(self, redis_url: str, after: str, timeout: float | None) -> Iterator[dict]:
        import redis

        from taskkernel import feed

        client = redis.Redis.from_url(redis_url)
        quiet_since = time.monotonic()
        try:
            while timeout is None or time.monotonic() - quiet_since < timeout:
                for position, message in feed.read_stream(client, self.id, after, block_ms=1000):
                    after, quiet_since = position, time.monotonic()
                    yield {**message, "position": position}
        finally:
            client.close()

    def close(self) -> None:
        """Delete the notebook; its worker stops."""
        if self._stop_renewing is not None:
            self._stop_renewing.set()
        try:
            self.client.request("DELETE", f"/notebooks/{self.id}")
        except ApiError as exc:
            if exc.status != 404:
                raise
