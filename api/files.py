"""Files in a notebook's directory: upload (PUT), download (GET, ranges), list (GET .../), delete.

On the worker's host the worker's file helper opens the path (as the engine's user) and passes
the fd over the worker's local socket, and the bytes go between the HTTP connection and that fd
(a whole-file download by sendfile); from another host they stream through Redis, at most a
window of chunks at a time (taskkernel.files). Either way the API's memory stays flat whatever
the file's size. Flask's MAX_CONTENT_LENGTH (for JSON bodies) does not apply here: a file's cap
is max_file_bytes.
"""

from __future__ import annotations

import email.utils
import fcntl
import mimetypes
import os
from contextlib import closing

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.routing import PathConverter
from werkzeug.wsgi import wrap_file
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from taskkernel import files
from taskkernel.exceptions import BadRequest, FileTooLarge, RangeNotSatisfiable

blueprint = Blueprint("files", __name__)


class FilePathConverter(PathConverter):
    """Everything after .../files/, as sent: a leading '/' or '//' reaches check_path (a 400), and
    is never merged into a redirect to some other path."""

    regex = ".*"
    part_isolating = False


blueprint.record_once(lambda state: state.app.url_map.converters.setdefault("filepath", FilePathConverter))

READ_BYTES = files.CHUNK_BYTES
MULTIPART_OVERHEAD_BYTES = 1024 * 1024
MAX_MULTIPART_PARTS = 64
MAX_MULTIPART_HEADER_BYTES = 64 * 1024
SOCKET_READ_BYTES = 1024 * 1024
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ from Python 3.10 on Linux; spelled out for older builds


def services():
    return current_app.extensions["taskkernel"]


def _worker(notebook_id: str) -> str:
    """The notebook's worker, once it has one and a restart's files have reached it."""
    svc = services()
    worker = svc.store.wait_for_worker(notebook_id, svc.settings.assign_timeout_s)["worker"]["id"]
    if files.wait_for_handover(svc.redis, notebook_id):
        return worker
    return svc.store.wait_for_worker(notebook_id, svc.settings.assign_timeout_s)["worker"]["id"]


@blueprint.get("/notebooks/<hexid:notebook_id>/files/", defaults={"path": ""})
@blueprint.get("/notebooks/<hexid:notebook_id>/files/<filepath:path>", merge_slashes=False)
def get_file(notebook_id: str, path: str):
    """A directory's listing (a path ending in '/', or none), else the file's bytes."""
    if path == "" or path.endswith("/"):
        directory = files.check_path(path.rstrip("/"), directory=True)
        reply = files.call(services().redis, _worker(notebook_id), notebook_id, "list", directory)
        return jsonify({"path": directory, "entries": reply["entries"]})
    return _download(notebook_id, files.check_path(path))


@blueprint.put("/notebooks/<hexid:notebook_id>/files/<filepath:path>", merge_slashes=False)
def put_file(notebook_id: str, path: str):
    """Write the body (raw, or the first file of a multipart form) to `path`, making its parents."""
    path = files.check_path(path)
    svc = services()
    cap = svc.settings.max_file_bytes
    # JSON's cap is not a file's: the file's is checked here and again as it streams (a multipart
    # body's parts and boundaries get some room of their own)
    request.max_content_length = cap + MULTIPART_OVERHEAD_BYTES
    if request.content_length is not None and request.content_length > cap and not _is_multipart():
        raise FileTooLarge(f"the file is larger than the cap of {cap} bytes", max_file_bytes=cap)
    chunks = _multipart_file(request.stream) if _is_multipart() else _body_chunks()
    worker = _worker(notebook_id)
    channel = _local(worker, notebook_id)
    if channel is not None:
        with closing(channel):
            reply = files.upload_local(channel, path, chunks, max_file_bytes=cap)
    else:
        reply = files.upload(svc.redis, worker, notebook_id, path, chunks, max_file_bytes=cap)
    response = jsonify({"path": path, "size": reply["size"]})
    response.status_code = 201
    return response


@blueprint.delete("/notebooks/<hexid:notebook_id>/files/<filepath:path>", merge_slashes=False)
def delete_file(notebook_id: str, path: str):
    """Remove a file, a symlink (never its target) or a directory with its contents."""
    path = files.check_path(path.rstrip("/"))
    files.call(services().redis, _worker(notebook_id), notebook_id, "delete", path)
    return "", 204


def _local(worker: str, notebook_id: str) -> files.LocalChannel | None:
    """The worker's local socket, when this API runs on its host (and settings allow it)."""
    svc = services()
    if svc.settings.file_transfer != "auto":
        return None
    return files.LocalChannel.connect(svc.redis, worker, notebook_id)


def _download(notebook_id: str, path: str) -> Response:
    byte_range = _requested_range()
    worker = _worker(notebook_id)
    try:
        channel = _local(worker, notebook_id)
        if channel is not None:
            with closing(channel):
                header, source = files.open_local(channel, path, byte_range)
            length = header["end"] - header["start"]
            # a whole file goes out by sendfile (gunicorn's file wrapper); a range is read to its end
            chunks = wrap_file(request.environ, source, READ_BYTES) if length == header["size"] \
                else _read_exactly(source, length)
        else:
            header, chunks = files.download(services().redis, worker, notebook_id, path, byte_range=byte_range)
    except RangeNotSatisfiable as exc:
        response = jsonify(exc.to_dict())
        response.status_code = exc.status
        response.headers["Content-Range"] = f"bytes */{exc.details.get('size', '*')}"
        return response
    length = header["end"] - header["start"]
    response = Response(chunks, status=206 if byte_range else 200, direct_passthrough=True,
                        mimetype=mimetypes.guess_type(path)[0] or "application/octet-stream")
    response.headers["Content-Length"] = str(length)
    response.headers["Accept-Ranges"] = "bytes"
    response.headers["Last-Modified"] = email.utils.formatdate(header["mtime"], usegmt=True)
    if byte_range:
        response.headers["Content-Range"] = f"bytes {header['start']}-{header['end'] - 1}/{header['size']}"
    return response


def _read_exactly(source, length: int):
    with source:
        while length > 0:
            chunk = source.read(min(READ_BYTES, length))
            if not chunk:
                return
            length -= len(chunk)
            yield chunk


def _requested_range() -> tuple[int, int | None] | None:
    """One byte range of the Range header, as (start, stop) or (-n, None); None for the whole file."""
    if "Range" not in request.headers:
        return None
    parsed = request.range
    if parsed is None or parsed.units != "bytes" or len(parsed.ranges) != 1:
        raise BadRequest("only one byte range is served (Range: bytes=start-end)")
    start, stop = parsed.ranges[0]
    return start, stop


def _is_multipart() -> bool:
    return request.mimetype == "multipart/form-data"


def _body_chunks():
    """The raw body as it arrives: a SocketBody under gunicorn (a body of known length), else the
    WSGI stream's chunks."""
    direct = _gunicorn_body()
    if direct is not None:
        return SocketBody(*direct)
    return iter(lambda: request.stream.read(READ_BYTES), b"")


class SocketBody:
    """A request body read straight from the client's socket, past gunicorn's reader.

    gunicorn's reader copies every byte through several buffers, and measured on 100 MB that was
    most of an upload's time. Iterating yields chunks of one reused buffer (each valid until the
    next); `splice_into` moves the body into a file by splice(2), without copying it through
    this process at all.
    """

    def __init__(self, sock, reader, buffered: bytes):
        self.sock = sock
        self.reader = reader
        self.buffered = buffered
        self.left = reader.length - len(buffered)
        reader.length = self.left  # what gunicorn drains after the response: only what was not read here

    def _took(self, n: int) -> None:
        self.left -= n
        self.reader.length = self.left

    def __iter__(self):
        if self.buffered:
            yield self.buffered
            self.buffered = b""
        buffer = memoryview(bytearray(SOCKET_READ_BYTES))
        while self.left > 0:
            n = self.sock.recv_into(buffer, min(self.left, SOCKET_READ_BYTES))
            if not n:
                raise BadRequest("the request body ended before its Content-Length")
            self._took(n)
            yield buffer[:n]

    @property
    def length(self) -> int:
        """The bytes of the body not yet taken."""
        return len(self.buffered) + self.left

    def splice_into(self, fd: int) -> int:
        """Write the rest of the body to `fd`; the bytes written."""
        written = 0
        while self.buffered:
            n = os.write(fd, self.buffered)
            self.buffered = self.buffered[n:]
            written += n
        read_end, write_end = os.pipe()
        try:
            try:
                fcntl.fcntl(write_end, F_SETPIPE_SZ, SOCKET_READ_BYTES)
            except OSError:
                pass  # the default 64 KiB pipe works too, in more steps
            sock_fd = self.sock.fileno()
            while self.left > 0:
                moved = os.splice(sock_fd, write_end, min(self.left, SOCKET_READ_BYTES))
                if moved == 0:
                    raise BadRequest("the request body ended before its Content-Length")
                self._took(moved)
                while moved:
                    out = os.splice(read_end, fd, moved)
                    moved -= out
                    written += out
        finally:
            os.close(read_end)
            os.close(write_end)
        return written


def _gunicorn_body():
    """(socket, length reader, bytes it holds already) of gunicorn's request, or None elsewhere."""
    sock = request.environ.get("gunicorn.socket")
    reader = getattr(request.environ.get("wsgi.input"), "reader", None)
    unreader = getattr(reader, "unreader", None)
    if sock is None or type(reader).__name__ != "LengthReader" or not hasattr(unreader, "take_buffered"):
        return None
    buffered = unreader.take_buffered()
    if len(buffered) > reader.length:  # a pipelined next request behind this body: leave it be
        unreader.unread(buffered)
        return None
    return sock, reader, buffered


def _multipart_file(stream):
    """The bytes of the form's file part, parsed as they arrive (never spooled): the first part
    with a filename, or, failing that, the first part named "file" (what `curl -F file=<local`
    sends). Other parts are skipped as they stream.

    The decoder is given no max_form_memory_size: werkzeug checks it against every chunk handed
    in, so a 64 KiB limit refused any upload read in 256 KiB chunks (a 413 for all but tiny
    files). What it buffers is bounded here instead: a read's worth plus the headers of a part.
    """
    boundary = request.mimetype_params.get("boundary", "").encode()
    if not boundary:
        raise BadRequest("a multipart body needs a boundary")
    decoder = MultipartDecoder(boundary, max_parts=MAX_MULTIPART_PARTS)
    in_file, seen_file, done = False, False, False
    while not done:
        chunk = stream.read(READ_BYTES)
        try:
            decoder.receive_data(chunk or None)
            while True:
                event = decoder.next_event()
                if isinstance(event, NeedData):
                    break
                if isinstance(event, Epilogue):
                    done = True
                    break
                if isinstance(event, (File, Field)):
                    in_file = not seen_file and (isinstance(event, File) or event.name == "file")
                    seen_file = seen_file or in_file
                elif isinstance(event, Data) and in_file:
                    yield event.data
        except (ValueError, RequestEntityTooLarge) as exc:  # malformed parts, or too many of them
            raise BadRequest(f"the multipart body cannot be parsed: {getattr(exc, 'description', exc)}") from None
        if len(decoder.buffer) > READ_BYTES + MAX_MULTIPART_HEADER_BYTES:  # a part's headers never end
            raise BadRequest("a multipart part's headers are too long")
        if not chunk and not done:
            raise BadRequest("the multipart body ended before its closing boundary")
    if not seen_file:
        raise BadRequest("the multipart form has no file part (one with a filename, or named 'file')")
