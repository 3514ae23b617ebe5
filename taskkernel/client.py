"""The Python client: Client(url) -> Notebook handles that evaluate, complete and follow the feed."""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator

from taskkernel.exceptions import ApiError
from taskkernel.messages import IDEMPOTENCY_HEADER


STREAM_BLOCK_BYTES = 1024 * 1024  # what a file transfer reads and sends at a time
# methods HTTP defines as idempotent: repeating one after a connection reset changes nothing more
SAFE_TO_REPEAT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
# what a connection reset looks like, over TCP and over TLS
RESET = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError, ssl.SSLEOFError)


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether an idle connection's socket was closed (or reset) by the other end."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if isinstance(sock, ssl.SSLSocket):  # no MSG_PEEK over TLS; an idle one is readable only at its end
            return bool(readable)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def _decode(status: int, reason: str, content_type: str, data: bytes):
    """The JSON of an answer; ApiError for a non-2xx or for a body that is not the API's JSON
    (a proxy's HTML 502, say), with the start of that body in the message."""
    decoded = None
    if data:
        try:
            decoded = json.loads(data) if "json" in content_type else None
        except ValueError:
            decoded = None
        if decoded is None:
            text = data[:200].decode(errors="replace").strip()
            raise ApiError(status, {"error": "http_error" if status >= 300 else "invalid_response",
                                    "message": f"HTTP {status} {reason} ({content_type or 'no content type'}): {text}"})
    if not 200 <= status < 300:
        body = decoded if isinstance(decoded, dict) else {"message": f"HTTP {status} {reason}"}
        raise ApiError(status, body)
    return decoded


class Client:
    """Talks to one taskkernel API over HTTP or HTTPS (one keep-alive connection per thread).

    `url` may carry a path prefix (a service behind a proxy at https://host/taskkernel/). HTTPS
    checks the server's certificate against the system's CAs (SSL_CERT_FILE honoured) or
    `ca_bundle` (a PEM file). The proxies of the environment (`https_proxy`, `http_proxy`,
    `no_proxy`) are used as urllib uses them; loopback addresses never go through one.
    """

    def __init__(self, url: str = "http://127.0.0.1:8000", token: str | None = None, timeout_s: float = 60.0,
                 ca_bundle: str | None = None):
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https"):
            raise ValueError(f"taskkernel URLs are http:// or https://, not {url!r}")
        self.url = url.rstrip("/")
        self._scheme = parsed.scheme
        self._host, self._port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
        self._prefix = parsed.path.rstrip("/")
        self._token = token
        self._timeout_s = timeout_s
        self._tls = ssl.create_default_context(cafile=ca_bundle) if parsed.scheme == "https" else None
        self._proxy = _proxy_for(parsed.scheme, self._host)
        self._local = threading.local()

    def _new_connection(self, timeout_s: float, blocksize: int = 8192) -> http.client.HTTPConnection:
        """A connection to the API, or to the proxy that reaches it (`blocksize`: of a streamed body)."""
        host, port = self._proxy or (self._host, self._port)
        if self._tls is None:
            return http.client.HTTPConnection(host, port, timeout=timeout_s, blocksize=blocksize)
        conn = http.client.HTTPSConnection(host, port, timeout=timeout_s, context=self._tls, blocksize=blocksize)
        if self._proxy:  # CONNECT through the proxy; TLS (and the certificate check) is end to end
            conn.set_tunnel(self._host, self._port)
        return conn

    def _target(self, path: str) -> str:
        """The request target of an API path: absolute through a plain-HTTP proxy, else the path."""
        target = f"{self._prefix}/api{path}"
        if self._proxy and self._tls is None:
            return f"http://{self._host}:{self._port}{target}"
        return target

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and conn.sock is not None and _closed_by_peer(conn.sock):
            conn.close()  # the server ended the idle keep-alive connection: nothing was sent on it
            conn = None
        if conn is None:
            conn = self._local.conn = self._new_connection(self._timeout_s)
        return conn

    def request(self, method: str, path: str, body: dict | None = None, timeout_s: float | None = None,
                headers: dict[str, str] | None = None, retry: bool | None = None):
        """Send one request; return (status, decoded JSON or None). Raises ApiError on any non-2xx
        answer and on an answer that is not JSON (a proxy's error page).

        A request whose connection is reset is sent once more only when repeating it is safe:
        GET, PUT and DELETE, a POST with an Idempotency-Key header, or when `retry` says so (the
        read-only POSTs: complete, inspect, is_complete). An idle keep-alive connection the server
        has closed is replaced before sending.
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
                conn.request(method, self._target(path), body=payload, headers=headers)
                response = conn.getresponse()
                data = response.read()
                break
            except RESET:
                conn.close()
                self._local.conn = None
                if attempt == 2 or not retry:
                    raise
            except (OSError, http.client.HTTPException):  # refused, timed out: never reuse that connection
                conn.close()
                self._local.conn = None
                raise
        decoded = _decode(response.status, response.reason, response.getheader("Content-Type", ""), data)
        return response.status, decoded

    def stream(self, method: str, path: str, body=None, headers: dict[str, str] | None = None,
               timeout_s: float | None = None) -> http.client.HTTPResponse:
        """Send one request on a connection of its own (a file object `body` is streamed) and return
        the response unread, for the caller to stream; raises ApiError on 4xx/5xx."""
        headers = {**(headers or {})}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        conn = self._new_connection(timeout_s or self._timeout_s, blocksize=STREAM_BLOCK_BYTES)
        try:
            try:
                conn.request(method, self._target(path), body=body, headers=headers)
            except (BrokenPipeError, ConnectionResetError):
                # the server answered before reading the whole body (a 413 for a file over the cap):
                # its answer may be waiting to be read
                response = conn.getresponse()
                if response.status < 400:
                    raise
            else:
                response = conn.getresponse()
        except BaseException:
            conn.close()
            raise
        if not 200 <= response.status < 300:
            data = response.read()
            conn.close()
            _decode(response.status, response.reason, response.getheader("Content-Type", ""), data)
        return response

    def engines(self) -> list[dict]:
        return self.request("GET", "/engines")[1]["engines"]

    def notebooks(self) -> list[dict]:
        return self.request("GET", "/notebooks")[1]["notebooks"]

    def start(self, engine: str = "python", lease_s: float | None = None, *, cwd: str | None = None,
              env: dict[str, str] | None = None) -> "Notebook":
        """Open a notebook on a fresh worker of `engine`. With `lease_s`, the service deletes it
        unless `Notebook.renew_lease()` is called within every `lease_s` seconds. `cwd` (relative to
        the notebook's private directory) and `env` are where and with what its cells run."""
        body: dict = {"engine": engine}
        if lease_s is not None:
            body["lease_s"] = lease_s
        if cwd is not None:
            body["cwd"] = cwd
        if env is not None:
            body["env"] = env
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

    def feed(self, after: str = "0-0", timeout: float | None = None, redis_url: str | None = None,
             read_timeout_s: float | None = None) -> Iterator[dict]:
        """Feed messages from stream position `after` (default: the start), then live.

        Over Server-Sent Events from the API, or straight from Redis when `redis_url` is given
        (for processes inside the deployment). Each message gets its stream position as
        `position`. Stops after `timeout` s (over Redis: of silence), if given. Over SSE,
        `read_timeout_s` of silence from the API raises TimeoutError (it keeps the line alive every 15 s).
        """
        if redis_url:
            yield from self._feed_from_redis(redis_url, after, timeout)
            return
        query = {"after": after}
        if timeout is not None:
            query["timeout"] = str(timeout)
        conn = self.client._new_connection(read_timeout_s or (timeout or 3600) + 30)
        headers = {"Accept": "text/event-stream"}
        if self.client._token:
            headers["Authorization"] = f"Bearer {self.client._token}"
        try:
            conn.request("GET", self.client._target(f"/notebooks/{self.id}/feed?{urllib.parse.urlencode(query)}"),
                         headers=headers)
            response = conn.getresponse()
            if response.status != 200 or not response.getheader("Content-Type", "").startswith("text/event-stream"):
                _decode(response.status, response.reason, response.getheader("Content-Type", ""), response.read())
                raise ApiError(response.status, {"error": "invalid_response", "message": "not an event stream"})
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

    def send_comm(self, msg_type: str, content: dict, buffers: list[bytes] = (), msg_id: str | None = None,
                  metadata: dict | None = None) -> str:
        """Deliver a comm_open / comm_msg / comm_close to the engine (even while a cell runs); return
        its msg_id, the parent of what the comm's handler publishes on the feed."""
        from taskkernel.messages import encode_buffers

        body = {"msg_type": msg_type, "content": content}
        if buffers:
            body["buffers"] = encode_buffers(list(buffers))
        if msg_id:
            body["msg_id"] = msg_id
        if metadata:
            body["metadata"] = metadata
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

    def checkpoint(self, timeout: float = 60.0, include_files: bool = False) -> dict:
        """Save the namespace; with `include_files`, the notebook's directory too (see the README)."""
        return self.client.request("POST", f"/notebooks/{self.id}/checkpoint",
                                   {"timeout": timeout, "include_files": include_files}, timeout_s=timeout + 30)[1]

    def restore(self, timeout: float = 60.0, include_files: bool = False) -> dict:
        """Load the last checkpoint; with `include_files`, first replace the directory's contents
        with the checkpoint's files (without, the directory is left as it is)."""
        return self.client.request("POST", f"/notebooks/{self.id}/restore",
                                   {"timeout": timeout, "include_files": include_files}, timeout_s=timeout + 30)[1]

    # --- files in the notebook's directory ----------------------------------------------------------

    def upload(self, local, remote: str) -> dict:
        """Copy the local file `local` (a path) to `remote` in the notebook's directory (parents are
        made, an existing file is replaced); returns {"path", "size"}."""
        with open(local, "rb") as source:
            size = os.fstat(source.fileno()).st_size
            response = self.client.stream("PUT", self._file_url(remote), body=source, headers={
                "Content-Type": "application/octet-stream", "Content-Length": str(size)})
            with response:
                return json.loads(response.read())

    def download(self, remote: str, local) -> int:
        """Copy `remote` from the notebook's directory to the local path `local`; returns its size."""
        response = self.client.stream("GET", self._file_url(remote))
        written = 0
        with response, open(local, "wb") as target:
            while chunk := response.read(STREAM_BLOCK_BYTES):
                target.write(chunk)
                written += len(chunk)
        return written

    def read_file(self, remote: str) -> bytes:
        """The bytes of `remote` (for small files: they are held in memory)."""
        with self.client.stream("GET", self._file_url(remote)) as response:
            return response.read()

    def write_file(self, remote: str, data: bytes) -> dict:
        """Write `data` to `remote` (parents are made)."""
        with self.client.stream("PUT", self._file_url(remote), body=data,
                                headers={"Content-Type": "application/octet-stream"}) as response:
            return json.loads(response.read())

    def files(self, directory: str = "") -> list[dict]:
        """The entries (name, type, size, mtime) of a directory of the notebook ("": its own)."""
        path = self._file_url(directory.strip("/") + "/" if directory.strip("/") else "")
        return self.client.request("GET", path)[1]["entries"]

    def delete_file(self, remote: str) -> None:
        """Remove a file or a directory (with its contents) from the notebook's directory."""
        self.client.request("DELETE", self._file_url(remote))

    def _file_url(self, remote: str) -> str:
        return f"/notebooks/{self.id}/files/" + urllib.parse.quote(remote, safe="/")

    def _feed_from_redis(self, redis_url: str, after: str, timeout: float | None) -> Iterator[dict]:
        from taskkernel import connections, feed

        client = connections.connect(redis_url)
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


def _proxy_for(scheme: str, host: str) -> tuple[str, int] | None:
    """(host, port) of the proxy the environment names for `scheme`, or None (none, no_proxy, loopback)."""
    from taskkernel.settings import is_loopback

    if is_loopback(host):
        return None
    proxy = urllib.request.getproxies().get(scheme)
    if not proxy or urllib.request.proxy_bypass(host):
        return None
    parsed = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    return parsed.hostname, parsed.port or 80
