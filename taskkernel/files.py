"""Files in a notebook's directory: the transfer protocol between the API and the notebook's worker.

The API may run on another host than the worker, so bytes go through Redis, as everything else
does. A request `{"id", "op", "notebook", "path", ...}` is pushed on the worker's file list
(keys.worker_files); the transfer then has two lists of frames, `up` (API -> worker) and
`down` (worker -> API). A frame is one byte of kind and a body:

    j  a JSON reply: {"ok": true, ...} or {"ok": false, "code", "error"}
    d  a chunk of the file (at most CHUNK_BYTES)
    e  the end of the file
    c  credits: the receiver has taken that many chunks (the body, ASCII), the sender may push as many more
    x  the receiver gave up (a client that disconnected): the sender stops

The sender of chunks holds at most WINDOW of them in Redis, so a 100 MB file never costs the
API, Redis or the worker more than WINDOW * CHUNK_BYTES, whatever the speed of either end.
The worker serves these requests from a thread (taskkernel.workers.files), so they are answered
while a cell runs, and opens every path through its file helper, as the engine's user.
"""

from __future__ import annotations

import collections
import json
import os
import socket
import time
from collections.abc import Iterable, Iterator
from typing import BinaryIO

import redis

from taskkernel import keys
from taskkernel.exceptions import (
    BadRequest,
    EngineUnavailable,
    FileNotFound,
    FileTooLarge,
    InvalidPath,
    IsADirectory,
    NotADirectory,
    NotebookGone,
    NotebookStorageFull,
    RangeNotSatisfiable,
    TaskkernelError,
    UnsafePath,
)
from taskkernel.messages import new_id

CHUNK_BYTES = 256 * 1024  # measured: Redis moves 256 KiB values faster than 1 MiB ones
WINDOW = 16  # chunks in flight per transfer
CREDIT_BATCH = WINDOW // 2  # the receiver grants credits this many at a time
EXPIRE_EVERY = 64  # frames between refreshes of a transfer list's expiry
TRANSFER_TTL_S = 60  # a transfer's lists expire when both ends vanish
IDLE_TIMEOUT_S = 30.0  # a transfer whose other end sends nothing for this long is abandoned
MAX_BLOCK_S = 4.0  # one blocking pop, below redis-py's socket timeouts
MAX_PATH_CHARS = 4096

REPLY, DATA, END, CREDIT, CANCEL = b"j", b"d", b"e", b"c", b"x"

# error codes of the worker and its helper -> the exception the API raises
ERRORS: dict[str, type[TaskkernelError]] = {
    cls.code: cls for cls in (InvalidPath, UnsafePath, IsADirectory, NotADirectory, FileNotFound, FileTooLarge,
                              NotebookStorageFull, RangeNotSatisfiable, NotebookGone, BadRequest)
}


def check_path(path: str, *, directory: bool = False) -> str:
    """`path` as the helper takes it: relative, '/'-separated, no '..', '.', empty parts or NUL.

    With `directory`, "" (the notebook's directory itself) is allowed. Raises InvalidPath.
    """
    if path == "" and directory:
        return path
    parts = path.split("/")
    if (not path or path.startswith("/") or "\0" in path or len(path) > MAX_PATH_CHARS
            or any(part in ("", ".", "..") for part in parts)):
        raise InvalidPath(f"{path!r} is not a path inside the notebook: it must be relative, "
                          "without '..', '.' or empty parts", path=path)
    return path


def resolve_range(spec, size: int) -> tuple[int, int] | None:
    """[start, stop) of a byte range ([start, stop or None], or [-n, None] for the last n bytes) over
    a file of `size` bytes; None when none of it lies inside the file."""
    if not spec:
        return 0, size
    start, stop = int(spec[0]), spec[1]
    if start < 0:
        return (max(0, size + start), size) if size else None
    stop = size if stop is None else min(int(stop), size)
    if start >= size or stop <= start:
        return None
    return start, stop


def credit_count(body: bytes) -> int:
    return int(body) if body else 1


def error_from(reply: dict) -> TaskkernelError:
    """The exception for a worker's error reply."""
    cls = ERRORS.get(reply.get("code", ""), EngineUnavailable)
    error = cls(reply.get("error", "the file operation failed"))
    if reply.get("size") is not None:
        error.details["size"] = reply["size"]
    return error


class Transfer:
    """One file request to a notebook's worker and its frames, seen from either end."""

    def __init__(self, client: redis.Redis, transfer_id: str, *, sending: str, receiving: str):
        self.redis = client
        self.id = transfer_id
        self.out_key = keys.transfer(transfer_id, sending)
        self.in_key = keys.transfer(transfer_id, receiving)
        self._inbox: collections.deque[bytes] = collections.deque()
        self._sent = 0
        self._taken = 0  # chunks taken since the last credit sent

    @classmethod
    def for_api(cls, client: redis.Redis, transfer_id: str | None = None) -> "Transfer":
        return cls(client, transfer_id or new_id(), sending="up", receiving="down")

    @classmethod
    def for_worker(cls, client: redis.Redis, transfer_id: str) -> "Transfer":
        return cls(client, transfer_id, sending="down", receiving="up")

    def send(self, kind: bytes, body: bytes = b"") -> None:
        if self._sent % EXPIRE_EVERY == 0:  # the list's expiry is pushed back now and then, not per frame
            pipe = self.redis.pipeline(transaction=False)
            pipe.rpush(self.out_key, kind + body)
            pipe.expire(self.out_key, TRANSFER_TTL_S)
            pipe.execute()
        else:
            self.redis.rpush(self.out_key, kind + body)
        self._sent += 1

    def send_json(self, reply: dict) -> None:
        self.send(REPLY, json.dumps(reply).encode())

    def receive(self, timeout_s: float = IDLE_TIMEOUT_S) -> tuple[bytes, bytes]:
        """The next frame (kind, body); EngineUnavailable when none comes within `timeout_s`.

        Takes every frame waiting (up to a window) in one BLMPOP, so a burst costs one round trip.
        """
        deadline = time.monotonic() + timeout_s
        while not self._inbox:
            got = self.redis.blmpop(max(0.01, min(MAX_BLOCK_S, deadline - time.monotonic())), 1, self.in_key,
                                    direction="LEFT", count=WINDOW)
            if got:
                self._inbox.extend(got[1])
            elif time.monotonic() >= deadline:
                raise EngineUnavailable(f"the notebook's worker did not answer the file transfer within "
                                        f"{timeout_s:g} s", op="files")
        frame = self._inbox.popleft()
        return frame[:1], frame[1:]

    def took_chunk(self) -> None:
        """Count a chunk taken; every CREDIT_BATCH of them, give the sender as many credits at once."""
        self._taken += 1
        if self._taken >= CREDIT_BATCH:
            self.send(CREDIT, str(self._taken).encode())
            self._taken = 0

    def close(self) -> None:
        self.redis.delete(self.out_key, self.in_key)

    def cancel(self) -> None:
        """Tell the other end to stop: what was queued for it is dropped, a CANCEL is left instead."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.out_key, self.in_key)
        pipe.rpush(self.out_key, CANCEL)
        pipe.expire(self.out_key, TRANSFER_TTL_S)
        pipe.execute()


# --- the fast path: an API on the worker's own host gets open fds ---------------------------------------

LOCAL_OPS = frozenset({"open", "create", "reserve", "commit", "abort", "stat"})
MAX_LOCAL_REQUEST_BYTES = 64 * 1024
LOCAL_REPLY_BYTES = 64 * 1024


def boot_id() -> str:
    """This kernel's boot id: an API whose boot id differs from a worker's is not on its host."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as source:
            return source.read().strip()
    except OSError:
        return ""


class LocalChannel:
    """The worker's local socket (a 0600 Unix socket of the service's user): the worker's file helper
    opens the path as the engine's user and the fd comes here, so the bytes move between the HTTP
    connection and the file without another hop (downloads by sendfile)."""

    def __init__(self, sock: socket.socket, notebook_id: str):
        self.sock = sock
        self.notebook_id = notebook_id

    @classmethod
    def connect(cls, client: redis.Redis, worker_id: str, notebook_id: str) -> "LocalChannel | None":
        """A channel when the worker runs on this host and answers on its socket, else None."""
        path, boot = client.hmget(keys.worker(worker_id), "files_socket", "files_boot")
        if not path or not boot or boot.decode() != boot_id():
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.settimeout(IDLE_TIMEOUT_S)
        try:
            sock.connect(path.decode())
        except OSError:
            sock.close()
            return None
        return cls(sock, notebook_id)

    def call(self, op: str, path: str, **args) -> tuple[dict, int | None]:
        """One operation; its reply and fd. Raises the worker's error (no fd is left open then)."""
        try:
            self.sock.sendmsg([json.dumps({"op": op, "notebook": self.notebook_id, "path": path, **args}).encode()])
            data, fds, _, _ = socket.recv_fds(self.sock, LOCAL_REPLY_BYTES, 1)
        except OSError as exc:
            raise EngineUnavailable(f"the notebook's worker did not answer on its local socket: {exc}",
                                    op="files") from exc
        if not data:
            raise EngineUnavailable("the notebook's worker closed its local socket", op="files")
        reply = json.loads(data)
        if not reply.get("ok"):
            for fd in fds:
                os.close(fd)
            raise error_from(reply)
        return reply, (fds[0] if fds else None)

    def close(self) -> None:
        self.sock.close()


def upload_local(channel: LocalChannel, path: str, chunks: Iterable[bytes], *, max_file_bytes: int) -> dict:
    """Write `chunks` to `path` through an fd from the worker (see upload).

    The worker reserves room under the notebook's cap before any byte is written: the body's
    length when it is known, else a stretch at a time (a "reserve" as the writing reaches the end
    of it), so concurrent uploads cannot overshoot the cap together. NotebookStorageFull when it
    has none left.
    """
    length = chunks.length if hasattr(chunks, "splice_into") else None
    if length is not None and length > max_file_bytes:
        raise FileTooLarge(f"the file is larger than the cap of {max_file_bytes} bytes", max_file_bytes=max_file_bytes)
    reply, fd = channel.call("create", path, length=length)
    temp, written, committed = reply["temp"], 0, False
    cap = min(max_file_bytes, int(reply.get("max_file_bytes", max_file_bytes)))
    reserved = int(reply["reserved"])
    try:
        if length is not None:  # a body of known length, all reserved: socket -> file within the kernel
            try:
                written = chunks.splice_into(fd)
            finally:
                os.close(fd)
            channel.call("commit", path, temp=temp)
            committed = True
            return {"size": written}
        with os.fdopen(fd, "wb", buffering=0) as out:
            for chunk in chunks:
                written += len(chunk)
                if written > cap:
                    raise FileTooLarge(f"the file is larger than the cap of {cap} bytes", max_file_bytes=cap)
                if written > reserved:
                    reserved = int(channel.call("reserve", path, temp=temp, bytes=written)[0]["reserved"])
                view = memoryview(chunk)
                while view:
                    view = view[out.write(view):]
        channel.call("commit", path, temp=temp)
        committed = True
        return {"size": written}
    finally:
        if not committed:
            try:
                channel.call("abort", path, temp=temp)
            except TaskkernelError:
                pass


def open_local(channel: LocalChannel, path: str, byte_range=None) -> tuple[dict, BinaryIO]:
    """The file's header (see download) and the file itself, positioned at the range's start."""
    reply, fd = channel.call("open", path)
    source = os.fdopen(fd, "rb", buffering=0)
    bounds = resolve_range(byte_range, reply["size"])
    if bounds is None:
        source.close()
        raise RangeNotSatisfiable(f"the range lies outside the file's {reply['size']} bytes", size=reply["size"])
    source.seek(bounds[0])
    return {"size": reply["size"], "mtime": reply["mtime"], "start": bounds[0], "end": bounds[1]}, source


# --- a restart's hand-over of the directory (taskkernel.workers.directories) ---------------------------

HANDOVER_FIELD = "files_from"  # in the notebook's hash: the worker whose directory is being handed over
HANDOVER_WAIT_S = 10.0


def mark_handover(client: redis.Redis, notebook_id: str, old_worker: str) -> None:
    """Say that `old_worker`'s directory is on its way to the notebook's next worker."""
    client.hset(keys.notebook(notebook_id), HANDOVER_FIELD, old_worker)


def handover_done(client: redis.Redis, notebook_id: str) -> None:
    client.hdel(keys.notebook(notebook_id), HANDOVER_FIELD)


def wait_for_handover(client: redis.Redis, notebook_id: str, timeout_s: float = HANDOVER_WAIT_S) -> bool:
    """Wait (up to `timeout_s`) until a restart's files have reached the new worker; False on timeout."""
    deadline = time.monotonic() + timeout_s
    while client.hget(keys.notebook(notebook_id), HANDOVER_FIELD):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


# --- the API's side ----------------------------------------------------------------------------------

def request(client: redis.Redis, worker_id: str, notebook_id: str, op: str, path: str, **args) -> Transfer:
    """Start a transfer: push the request on the worker's file list."""
    transfer = Transfer.for_api(client)
    body = {"id": transfer.id, "op": op, "notebook": notebook_id, "path": path, **args}
    pipe = client.pipeline(transaction=False)
    pipe.rpush(keys.worker_files(worker_id), json.dumps(body))
    pipe.expire(keys.worker_files(worker_id), TRANSFER_TTL_S)
    pipe.execute()
    return transfer


def wait_reply(transfer: Transfer, timeout_s: float = IDLE_TIMEOUT_S) -> dict:
    """The next JSON reply of the worker (skipping credits); raises its error."""
    while True:
        kind, body = transfer.receive(timeout_s)
        if kind == REPLY:
            reply = json.loads(body)
            if not reply.get("ok"):
                raise error_from(reply)
            return reply
        if kind != CREDIT:
            raise EngineUnavailable(f"unexpected frame {kind!r} from the worker", op="files")


def call(client: redis.Redis, worker_id: str, notebook_id: str, op: str, path: str, *,
         timeout_s: float = IDLE_TIMEOUT_S, **args) -> dict:
    """A request answered with one reply (list, stat, delete)."""
    transfer = request(client, worker_id, notebook_id, op, path, **args)
    try:
        return wait_reply(transfer, timeout_s)
    finally:
        transfer.close()


def upload(client: redis.Redis, worker_id: str, notebook_id: str, path: str, chunks: Iterable[bytes], *,
           max_file_bytes: int, timeout_s: float = IDLE_TIMEOUT_S) -> dict:
    """Stream `chunks` into `path`; the worker's final reply ({"size"}). Raises FileTooLarge past
    `max_file_bytes` (nothing is written then), and the worker's errors."""
    transfer = request(client, worker_id, notebook_id, "put", path)
    done = False
    try:
        credits, sent = WINDOW, 0
        for chunk in _rechunk(chunks):
            sent += len(chunk)
            if sent > max_file_bytes:
                raise FileTooLarge(f"the file is larger than the cap of {max_file_bytes} bytes",
                                   max_file_bytes=max_file_bytes)
            while credits == 0:
                kind, body = transfer.receive(timeout_s)
                if kind == CREDIT:
                    credits += credit_count(body)
                elif kind == REPLY:  # the worker refused (a bad path, the notebook's cap)
                    raise error_from(json.loads(body))
            transfer.send(DATA, chunk)
            credits -= 1
        transfer.send(END)
        reply = wait_reply(transfer, timeout_s)
        done = True
        return reply
    finally:
        if done:
            transfer.close()
        else:
            transfer.cancel()  # the worker drops its temporary file


def download(client: redis.Redis, worker_id: str, notebook_id: str, path: str, *,
             byte_range: tuple[int, int | None] | None = None,
             timeout_s: float = IDLE_TIMEOUT_S) -> tuple[dict, Iterator[bytes]]:
    """The file's header ({"size", "mtime", "start", "end"}) and an iterator of its bytes.

    `byte_range`: (start, stop) with stop exclusive or None (to the end), or (-n, None) for the
    last n bytes. The iterator must be exhausted or closed (closing tells the worker to stop).
    """
    transfer = request(client, worker_id, notebook_id, "get", path,
                       range=list(byte_range) if byte_range else None)
    try:
        header = wait_reply(transfer, timeout_s)
    except BaseException:
        transfer.close()
        raise

    def chunks() -> Iterator[bytes]:
        finished = False
        try:
            while True:
                kind, body = transfer.receive(timeout_s)
                if kind == DATA:
                    transfer.took_chunk()
                    yield body
                elif kind == END:
                    finished = True
                    return
                elif kind == REPLY:
                    raise error_from(json.loads(body))
        finally:
            if finished:
                transfer.close()
            else:
                transfer.cancel()

    return header, chunks()


def _rechunk(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """`chunks` regrouped into frames of CHUNK_BYTES (the last may be shorter); empty ones dropped."""
    pending = bytearray()
    for chunk in chunks:
        if not chunk:
            continue
        if not pending and len(chunk) == CHUNK_BYTES:
            yield bytes(chunk)
            continue
        pending += chunk
        while len(pending) >= CHUNK_BYTES:
            yield bytes(pending[:CHUNK_BYTES])
            del pending[:CHUNK_BYTES]
    if pending:
        yield bytes(pending)
