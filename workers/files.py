"""The worker's file service: serves its notebook's directory to the API while cells run.

A thread waits on the worker's file list (keys.worker_files) and gives each request a thread of
its own, so an upload, a download and a listing proceed side by side and none waits for the
running cell. Paths are never opened here: the file helper (taskkernel.workers.files_helper),
running as the engine's user, resolves them and hands back open fds; this process only moves
bytes between those fds and Redis (the protocol is taskkernel.files).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis

from taskkernel import files as protocol
from taskkernel import keys
from taskkernel.files import CANCEL, CHUNK_BYTES, CREDIT, DATA, END, WINDOW, Transfer

log = logging.getLogger("taskkernel.files")

MAX_TRANSFERS = 8  # requests served at once; more wait on the list
# an upload of unknown length reserves room for its bytes this far ahead of what it has written
RESERVE_AHEAD_BYTES = 16 * 1024 * 1024
HELPER_REPLY_BYTES = 1024 * 1024


class HelperFailed(Exception):
    """The file helper died or answered nonsense."""


class FileService:
    """One worker's file service; `start()` runs it in daemon threads."""

    def __init__(self, client: redis.Redis, worker_id: str, directory: Path, uid: int | None, *,
                 max_file_bytes: int, max_notebook_bytes: int):
        self.redis = client
        self.worker_id = worker_id
        self.directory = directory
        self.uid = uid
        self.max_file_bytes = max_file_bytes
        self.max_notebook_bytes = max_notebook_bytes
        self._slots = threading.BoundedSemaphore(MAX_TRANSFERS)
        self._helper_lock = threading.Lock()
        self._helper: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        # the per-notebook cap under concurrent uploads: each upload reserves its bytes (by its
        # temporary file's name) before writing them, checked against the directory's usage and
        # every other reservation under one lock, and releases them when it ends either way
        self._reserved: dict[str, int] = {}
        self._reserve_lock = threading.Lock()

    def start(self, local_socket: Path | None = None) -> threading.Thread:
        """Serve the worker's file list; with `local_socket`, also hand fds to APIs on this host."""
        if local_socket is not None:
            try:
                self._serve_local(local_socket)
            except OSError as exc:  # the Redis path still works
                log.warning("file service: no local socket at %s: %r", local_socket, exc)
        thread = threading.Thread(target=self._loop, name="taskkernel-files", daemon=True)
        thread.start()
        return thread

    # --- the local socket: open fds for an API on this host -------------------------------------------

    def _serve_local(self, path: Path) -> None:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        if path.exists() or path.is_symlink():
            path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        listener.bind(str(path))
        os.chmod(path, 0o600)
        listener.listen(64)
        threading.Thread(target=self._accept, args=(listener,), name="taskkernel-files-local", daemon=True).start()
        self.redis.hset(keys.worker(self.worker_id),
                        mapping={"files_socket": str(path), "files_boot": protocol.boot_id()})

    def _accept(self, listener: socket.socket) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2, signal.SIGINT, signal.SIGTERM})
        while True:
            try:
                conn, _ = listener.accept()
            except OSError as exc:  # out of fds, say: the API falls back to Redis meanwhile
                log.warning("file service: accept: %r", exc)
                time.sleep(0.5)
                continue
            uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
            if uid not in (os.geteuid(), 0):  # the socket is 0600 already; this says so twice
                conn.close()
                continue
            threading.Thread(target=self._local_client, args=(conn,), name="taskkernel-file-local",
                             daemon=True).start()

    def _local_client(self, conn: socket.socket) -> None:
        """One API connection: helper operations answered with fds; the API moves the bytes."""
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2, signal.SIGINT, signal.SIGTERM})
        uploads: dict[str, str] = {}  # temporary name -> path, of this connection's unfinished uploads
        try:
            with conn:
                self._serve_connection(conn, uploads)
        finally:
            for temp, path in uploads.items():  # the API went away mid-upload: drop it, free its room
                try:
                    self._helper_call({"op": "abort", "path": path, "temp": temp})
                except HelperFailed:
                    pass
                self._release(temp)

    def _serve_connection(self, conn: socket.socket, uploads: dict[str, str]) -> None:
        while True:
            try:
                data = conn.recv(protocol.MAX_LOCAL_REQUEST_BYTES)
            except OSError:
                return
            if not data:
                return
            fd = None
            try:
                request = json.loads(data)
                reply, fd = self._local_op(request, uploads)
            except (ValueError, KeyError, TypeError) as exc:
                reply = {"ok": False, "code": "bad_request", "error": f"malformed request: {exc!r}"}
            except (redis.RedisError, HelperFailed) as exc:
                reply = {"ok": False, "code": "file_error", "error": f"the file operation failed: {exc}"}
            try:
                payload = json.dumps(reply).encode()
                if fd is None:
                    conn.sendmsg([payload])
                else:
                    socket.send_fds(conn, [payload], [fd])
            except OSError:
                return
            finally:
                if fd is not None:
                    os.close(fd)

    def _local_op(self, request: dict, uploads: dict[str, str]) -> tuple[dict, int | None]:
        notebook = self.redis.hget(keys.worker(self.worker_id), "notebook")
        if not notebook or notebook.decode() != request.get("notebook"):
            return {"ok": False, "code": "notebook_gone", "error": "this worker no longer serves the notebook"}, None
        op = request["op"]
        if op not in protocol.LOCAL_OPS:
            return {"ok": False, "code": "bad_request", "error": f"unknown file op {op!r}"}, None
        if op == "create":
            return self._create(request, uploads)
        if op == "reserve":  # an upload of unknown length has written up to its reservation
            temp = str(request["temp"])
            if temp not in uploads:
                return {"ok": False, "code": "bad_request", "error": "no such upload on this connection"}, None
            if not self._reserve(temp, int(request["bytes"]), RESERVE_AHEAD_BYTES):
                return self._storage_full(), None
            return {"ok": True, "reserved": self._reserved[temp]}, None
        reply, fd = self._helper_call({k: request[k] for k in ("op", "path", "temp") if k in request})
        if op in ("commit", "abort") and uploads.pop(str(request.get("temp")), None) is not None:
            self._release(str(request["temp"]))  # committed: the file itself is counted from now on
        return reply, fd

    def _create(self, request: dict, uploads: dict[str, str]) -> tuple[dict, int | None]:
        """An upload's temporary file, with room reserved for its `length` (or a first stretch of
        RESERVE_AHEAD_BYTES when the length is not known); notebook_storage_full when there is none."""
        reply, fd = self._helper_call({"op": "create", "path": request["path"]})
        if fd is None:
            return reply, None
        length = request.get("length")
        temp = reply["temp"]
        uploads[temp] = request["path"]
        if not self._reserve(temp, int(length or 0), 0 if length is not None else RESERVE_AHEAD_BYTES):
            os.close(fd)
            del uploads[temp]
            self._helper_call({"op": "abort", "path": request["path"], "temp": temp})
            self._release(temp)
            return self._storage_full(), None
        reply.update(max_file_bytes=self.max_file_bytes, reserved=self._reserved[temp])
        return reply, fd

    def _storage_full(self) -> dict:
        return {"ok": False, "code": "notebook_storage_full",
                "error": f"the notebook's files would exceed their cap of {self.max_notebook_bytes} bytes"}

    def _reserve(self, temp: str, needed: int, ahead: int) -> bool:
        """Reserve at least `needed` bytes for upload `temp` (up to `ahead` more while there is
        room); False, reserving nothing more, when the files, the other uploads' reservations
        and `needed` would pass the notebook's cap."""
        with self._reserve_lock:
            held = self._reserved.get(temp)
            if held is not None and needed <= held:
                return True
            usage, _ = self._helper_call({"op": "usage", "path": "", "exclude": list(self._reserved)})
            if not usage.get("ok"):
                raise HelperFailed(f"the directory's usage: {usage.get('error')}")
            others = sum(n for name, n in self._reserved.items() if name != temp)
            room = self.max_notebook_bytes - usage["bytes"] - others
            if needed > room:
                self._reserved.setdefault(temp, 0)
                return False
            # ahead grows with the upload (doubling, up to `ahead`): a small upload of unknown
            # length holds little room that concurrent ones might need
            self._reserved[temp] = min(room, needed + min(ahead, needed))
            return True

    def _release(self, temp: str) -> None:
        with self._reserve_lock:
            self._reserved.pop(temp, None)

    def _loop(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2, signal.SIGINT, signal.SIGTERM})
        while True:
            self._slots.acquire()
            try:
                item = self.redis.blpop([keys.worker_files(self.worker_id)], timeout=protocol.MAX_BLOCK_S)
            except redis.RedisError as exc:
                self._slots.release()
                log.warning("file service: %r", exc)
                time.sleep(0.5)
                continue
            if item is None:
                self._slots.release()
                continue
            threading.Thread(target=self._serve, args=(json.loads(item[1]),), name="taskkernel-file",
                             daemon=True).start()

    def _serve(self, request: dict) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2, signal.SIGINT, signal.SIGTERM})
        transfer = Transfer.for_worker(self.redis, request["id"])
        try:
            notebook = self.redis.hget(keys.worker(self.worker_id), "notebook")
            if not notebook or notebook.decode() != request.get("notebook"):
                transfer.send_json({"ok": False, "code": "notebook_gone",
                                    "error": "this worker no longer serves the notebook"})
                return
            op = request.get("op")
            if op == "put":
                self._put(transfer, request)
            elif op == "get":
                self._get(transfer, request)
            elif op in ("list", "delete", "stat"):
                reply, _ = self._helper_call({"op": op, "path": request["path"]})
                transfer.send_json(reply)
            else:
                transfer.send_json({"ok": False, "code": "bad_request", "error": f"unknown file op {op!r}"})
        except (redis.RedisError, HelperFailed, protocol.EngineUnavailable) as exc:
            log.warning("file %s of %s failed: %r", request.get("op"), request.get("path"), exc)
            try:
                transfer.send_json({"ok": False, "code": "file_error", "error": f"the transfer failed: {exc}"})
            except redis.RedisError:
                pass
        finally:
            self._slots.release()

    # --- operations --------------------------------------------------------------------------------

    def _put(self, transfer: Transfer, request: dict) -> None:
        reply, fd = self._helper_call({"op": "create", "path": request["path"]})
        if fd is None:
            transfer.send_json(reply)
            return
        temp, committed, written = reply["temp"], False, 0
        try:
            with os.fdopen(fd, "wb", buffering=0) as out:
                while True:
                    kind, body = transfer.receive()
                    if kind == CANCEL:
                        return
                    if kind == END:
                        break
                    if kind != DATA:
                        continue
                    written += len(body)
                    if written > self.max_file_bytes:
                        transfer.send_json({"ok": False, "code": "file_too_large", "error":
                                            f"the file is larger than the cap of {self.max_file_bytes} bytes"})
                        return
                    if not self._reserve(temp, written, RESERVE_AHEAD_BYTES):
                        transfer.send_json(self._storage_full())
                        return
                    _write_all(out, body)
                    transfer.took_chunk()
            reply, _ = self._helper_call({"op": "commit", "path": request["path"], "temp": temp})
            committed = reply["ok"]
            transfer.send_json({**reply, "size": written} if committed else reply)
        finally:
            if not committed:
                self._helper_call({"op": "abort", "path": request["path"], "temp": temp})
            self._release(temp)

    def _get(self, transfer: Transfer, request: dict) -> None:
        reply, fd = self._helper_call({"op": "open", "path": request["path"]})
        if fd is None:
            transfer.send_json(reply)
            return
        with os.fdopen(fd, "rb", buffering=0) as source:
            size = reply["size"]
            bounds = protocol.resolve_range(request.get("range"), size)
            if bounds is None:
                transfer.send_json({"ok": False, "code": "range_not_satisfiable", "size": size,
                                    "error": f"the range lies outside the file's {size} bytes"})
                return
            start, stop = bounds
            transfer.send_json({"ok": True, "size": size, "mtime": reply["mtime"], "start": start, "end": stop})
            source.seek(start)
            remaining, credits = stop - start, WINDOW
            while remaining > 0:
                while credits == 0:
                    kind, body = transfer.receive()
                    if kind == CANCEL:
                        return
                    if kind == CREDIT:
                        credits += protocol.credit_count(body)
                chunk = source.read(min(CHUNK_BYTES, remaining))
                if not chunk:
                    break  # the file shrank meanwhile: the API's client sees a short body
                transfer.send(DATA, chunk)
                credits -= 1
                remaining -= len(chunk)
            transfer.send(END)

    # --- the helper --------------------------------------------------------------------------------

    def _helper_call(self, request: dict) -> tuple[dict, int | None]:
        """Ask the helper; its reply and the fd it passed (if any). One request at a time."""
        with self._helper_lock:
            if self._helper is None or self._helper.poll() is not None:
                self._start_helper()
            try:
                self._sock.sendmsg([json.dumps(request).encode()])
                data, fds, _, _ = socket.recv_fds(self._sock, HELPER_REPLY_BYTES, 1)
            except OSError as exc:
                self._stop_helper()
                raise HelperFailed(f"the file helper failed: {exc!r}") from exc
            if not data:
                self._stop_helper()
                raise HelperFailed("the file helper exited")
        try:
            return json.loads(data), (fds[0] if fds else None)
        except ValueError as exc:
            for fd in fds:
                os.close(fd)
            raise HelperFailed(f"the file helper answered nonsense: {exc}") from exc

    def _start_helper(self) -> None:
        self._helper, self._sock = self._spawn_helper()

    def _spawn_helper(self) -> tuple[subprocess.Popen, socket.socket]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [sys.executable, "-I", "-m", "taskkernel.workers.files_helper", "--socket-fd", str(theirs.fileno()),
                "--directory", str(self.directory), "--uid", str(-1 if self.uid is None else self.uid)]
        try:
            # no environment: the helper inherits nothing of the worker's (the Redis URL, tokens)
            helper = subprocess.Popen(argv, pass_fds=[theirs.fileno()], env={}, cwd="/",
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        finally:
            theirs.close()
        return helper, ours

    # --- a checkpoint's files --------------------------------------------------------------------

    def archive(self, out_fd: int) -> dict:
        """Write the notebook's directory to `out_fd` (a file the worker opened) as a tar stream;
        the helper's reply ({"ok", "entries", "bytes", "skipped", ...} or an error). Bounded by
        the notebook's cap. A helper of its own does it, so file requests are not held up."""
        return self._one_shot({"op": "archive", "path": "", "max_bytes": self.max_notebook_bytes}, out_fd)

    def extract(self, in_fd: int) -> dict:
        """Replace the directory's contents with the tar stream on `in_fd` (see archive)."""
        return self._one_shot({"op": "extract", "path": "", "max_bytes": self.max_notebook_bytes}, in_fd)

    def _one_shot(self, request: dict, fd: int) -> dict:
        helper, sock = self._spawn_helper()
        try:
            socket.send_fds(sock, [json.dumps(request).encode()], [fd])
            data, fds, _, _ = socket.recv_fds(sock, HELPER_REPLY_BYTES, 1)
        except OSError as exc:
            raise HelperFailed(f"the file helper failed: {exc!r}") from exc
        finally:
            sock.close()  # the helper ends when its socket closes
            try:
                helper.wait(10)
            except subprocess.TimeoutExpired:
                helper.kill()
                helper.wait(5)
        for extra in fds:
            os.close(extra)
        if not data:
            raise HelperFailed("the file helper exited")
        return json.loads(data)

    def _stop_helper(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._helper is not None:
            if self._helper.poll() is None:
                self._helper.kill()
            self._helper.wait(5)
            self._helper = None


def _write_all(out, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[out.write(view):]
