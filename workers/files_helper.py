"""The file helper: opens paths inside one notebook's directory as the engine's user, never beyond it.

The worker starts one per notebook on its first file request (`python -I -m
taskkernel.workers.files_helper`). Started as the service's user, it drops to the engine's uid
and gid (no supplementary groups) before it touches the directory, so whatever a cell planted
there (a symlink to /etc/shadow, to another notebook's directory, a FIFO) is met with the
engine's own rights. Every path is resolved with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
RESOLVE_NO_MAGICLINKS) from the directory: no symlink is followed, nothing outside is reached.
Files are first opened with O_PATH and checked to be regular before they are opened for
reading, so a FIFO or a device is never opened at all. The helper holds no credential: it
answers the worker over a socketpair, JSON requests in, JSON replies and open fds out.

A checkpoint's files (`archive`, `extract`) are a tar stream on an fd the worker opened as the
service's user, in a directory no engine reaches: the helper writes or reads only that fd, and
walks and rebuilds the notebook's directory with the same resolution, as the engine's user.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import os
import secrets
import socket
import stat
import sys
import tarfile

SYS_OPENAT2 = 437  # the same number on every Linux architecture (it postdates the unified table)
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
MAX_REQUEST_BYTES = 64 * 1024
MAX_USAGE_ENTRIES = 200_000  # a directory walked for its size stops counting here
TEMP_PREFIX = ".taskkernel-upload-"
FD_OPS = frozenset({"archive", "extract"})  # operations given an fd of the worker's with their request
COPY_BYTES = 1024 * 1024
MAX_SKIPPED_LISTED = 100  # the names of entries an archive skipped, listed in its reply up to this many

# errno -> the error code the API answers with (taskkernel.exceptions)
ERRNO_CODES = {
    errno.ELOOP: ("unsafe_path", "the path leads through a symlink, which is never followed"),
    errno.EXDEV: ("unsafe_path", "the path leads outside the notebook's directory"),
    errno.ENOENT: ("file_not_found", "no such file or directory"),
    errno.ENOTDIR: ("not_a_directory", "a part of the path is not a directory"),
    errno.EISDIR: ("is_a_directory", "the path is a directory"),
    errno.ENOTEMPTY: ("is_a_directory", "a directory of that name is in the way"),
    errno.EEXIST: ("is_a_directory", "a directory of that name is in the way"),
    errno.EACCES: ("unsafe_path", "the engine's user may not access this path"),
    errno.EPERM: ("unsafe_path", "the engine's user may not access this path"),
    errno.ENOSPC: ("notebook_storage_full", "the disk is full"),
    errno.EDQUOT: ("notebook_storage_full", "the disk quota is exhausted"),
    errno.ENAMETOOLONG: ("invalid_path", "a name in the path is too long"),
}


class Refused(Exception):
    """A request the helper answers with an error code (never a traceback)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


RENAME_EXCHANGE = 2


def renameat2(old_dir: int, old: str, new_dir: int, new: str, flags: int) -> None:
    """renameat2(2); raises OSError (ENOENT when `new` does not exist for RENAME_EXCHANGE, ENOSYS
    with a C library older than glibc 2.28, which has no wrapper)."""
    if not hasattr(_libc, "renameat2"):
        raise OSError(errno.ENOSYS, "renameat2 is not available", new)
    if _libc.renameat2(old_dir, os.fsencode(old), new_dir, os.fsencode(new), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), new)


def _unlink_quietly(parent: int, name: str) -> None:
    """Remove the file an upload replaced (or, should a cell have swapped one in, a symlink or a
    tree: it is in the directory, removed as a DELETE would), then close `parent`."""
    try:
        _remove(parent, name)
    except OSError:
        pass
    finally:
        os.close(parent)


def openat2(dir_fd: int, path: str, flags: int, mode: int = 0) -> int:
    """openat2(2) with RESOLVE; raises OSError (ELOOP for a symlink, EXDEV for an escape)."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, RESOLVE)
    fd = _libc.syscall(SYS_OPENAT2, dir_fd, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), path)
    return fd


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"  # FIFO, socket, device: listed, never opened


class Helper:
    """Serves one directory (`root`, an O_PATH fd) to the worker on `sock`."""

    def __init__(self, sock: socket.socket, root: int):
        self.sock = sock
        self.root = root
        self._after_reply = None  # work that may wait until the worker has its answer

    def serve(self) -> None:
        while True:
            try:
                data, received, _, _ = socket.recv_fds(self.sock, MAX_REQUEST_BYTES, 1)
            except InterruptedError:
                continue
            if not data:
                for extra in received:
                    os.close(extra)
                return  # the worker is gone
            fd = None
            try:
                request = json.loads(data)
                handler = getattr(self, "op_" + request["op"])
                if request["op"] in FD_OPS:
                    if not received:
                        raise Refused("bad_request", f"{request['op']} needs an fd")
                    reply, fd = handler(request, received.pop())  # the handler owns it
                else:
                    reply, fd = handler(request)
                reply = {"ok": True, **reply}
            except Refused as exc:
                reply = {"ok": False, "code": exc.code, "error": str(exc)}
            except OSError as exc:
                code, message = ERRNO_CODES.get(exc.errno, ("file_error", os.strerror(exc.errno or 0)))
                reply = {"ok": False, "code": code, "error": message}
            except (KeyError, ValueError, TypeError, AttributeError) as exc:
                reply = {"ok": False, "code": "bad_request", "error": f"malformed request: {exc!r}"}
            for extra in received:
                os.close(extra)
            payload = json.dumps(reply).encode()
            try:
                if fd is None:
                    self.sock.sendmsg([payload])
                else:
                    socket.send_fds(self.sock, [payload], [fd])
            finally:
                if fd is not None:
                    os.close(fd)
                if self._after_reply is not None:
                    after, self._after_reply = self._after_reply, None
                    after()

    # --- resolution ------------------------------------------------------------------------------

    def _path(self, request: dict, *, allow_root: bool = False) -> str:
        path = request["path"]
        if not isinstance(path, str) or (not path and not allow_root):
            raise Refused("invalid_path", "a path is required")
        parts = path.split("/")
        if path and (path.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in path):
            raise Refused("invalid_path", "the path must be relative, without '..', '.' or empty parts")
        return path or "."

    def _open_path(self, path: str) -> tuple[int, os.stat_result]:
        fd = openat2(self.root, path, os.O_PATH | os.O_NOFOLLOW)  # a final symlink is opened itself...
        info = os.fstat(fd)
        if stat.S_ISLNK(info.st_mode):  # ...and refused, as one on the way is (ELOOP)
            os.close(fd)
            raise Refused("unsafe_path", "the path is a symlink, which is never followed")
        return fd, info

    def _parent(self, path: str, create: bool) -> tuple[int, str]:
        """An O_PATH fd of the path's parent directory (made, as the engine's user, when `create`)."""
        parent, _, name = path.rpartition("/")
        if not parent:
            return os.dup(self.root), name
        try:
            return openat2(self.root, parent, os.O_PATH | os.O_DIRECTORY), name
        except FileNotFoundError:
            if not create:
                raise
        current = os.dup(self.root)
        try:
            for part in parent.split("/"):
                try:
                    os.mkdir(part, 0o755, dir_fd=current)
                except FileExistsError:
                    pass
                following = openat2(current, part, os.O_PATH | os.O_DIRECTORY)
                os.close(current)
                current = following
        except BaseException:
            os.close(current)
            raise
        return current, name

    # --- operations ------------------------------------------------------------------------------

    def op_stat(self, request: dict):
        fd, info = self._open_path(self._path(request, allow_root=True))
        os.close(fd)
        return {"type": _kind(info.st_mode), "size": info.st_size, "mtime": info.st_mtime}, None

    def op_open(self, request: dict):
        """A regular file opened for reading; its size and mtime."""
        fd, info = self._open_path(self._path(request))
        try:
            if stat.S_ISDIR(info.st_mode):
                raise Refused("is_a_directory", "the path is a directory: list it with a trailing '/'")
            if not stat.S_ISREG(info.st_mode):
                raise Refused("unsafe_path", f"the path is a {_kind(info.st_mode)} (a FIFO, socket or device), "
                                             "which is never opened")
            # reopening the O_PATH fd cannot reach another inode: it is this regular file's
            readable = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            os.close(fd)
        return {"size": info.st_size, "mtime": info.st_mtime}, readable

    def op_create(self, request: dict):
        """A new temporary file beside the path (parents made) for an upload; `commit` renames it."""
        path = self._path(request)
        parent, name = self._parent(path, create=True)
        try:
            try:
                existing = os.stat(name, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                existing = None
            if existing is not None and stat.S_ISDIR(existing.st_mode):
                raise Refused("is_a_directory", "a directory of that name is in the way")
            temp = TEMP_PREFIX + secrets.token_hex(8)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                         dir_fd=parent)
        finally:
            os.close(parent)
        return {"temp": temp}, fd

    def op_commit(self, request: dict):
        """Put an upload's temporary file in place (atomically: readers see the old or the new file).

        An existing file is swapped out with renameat2(RENAME_EXCHANGE) and unlinked after the
        reply, not replaced by rename(2): over an existing file ext4 (auto_da_alloc) allocates and
        starts writing back the new file's blocks inside the rename, measured at a third of a
        100 MiB upload's time; freeing the old file's pages is left until the caller has its answer.
        """
        parent, name = self._parent(self._path(request), create=False)
        temp = self._temp(request)
        try:
            try:
                renameat2(parent, temp, parent, name, RENAME_EXCHANGE)
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.EINVAL, errno.ENOSYS):
                    raise
                os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)  # nothing there yet
                os.close(parent)
                return {}, None
            replaced = os.stat(temp, dir_fd=parent, follow_symlinks=False)
            if stat.S_ISDIR(replaced.st_mode):  # a cell made a directory of that name meanwhile: undo
                renameat2(parent, temp, parent, name, RENAME_EXCHANGE)
                raise Refused("is_a_directory", "a directory of that name is in the way")
        except BaseException:
            os.close(parent)
            raise
        self._after_reply = lambda: _unlink_quietly(parent, temp)
        return {}, None

    def op_abort(self, request: dict):
        try:
            parent, _ = self._parent(self._path(request), create=False)
        except OSError:
            return {}, None
        try:
            os.unlink(self._temp(request), dir_fd=parent)
        except FileNotFoundError:
            pass
        finally:
            os.close(parent)
        return {}, None

    def op_list(self, request: dict):
        """The directory's entries: name, type, size, mtime (symlinks described, not followed)."""
        fd, info = self._open_path(self._path(request, allow_root=True))
        try:
            if not stat.S_ISDIR(info.st_mode):
                raise Refused("not_a_directory", "the path is not a directory")
            listing = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        finally:
            os.close(fd)
        entries = []
        try:
            for name in sorted(os.listdir(listing)):
                if name.startswith(TEMP_PREFIX):
                    continue
                try:
                    entry = os.stat(name, dir_fd=listing, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                entries.append({"name": name, "type": _kind(entry.st_mode), "size": entry.st_size,
                                "mtime": entry.st_mtime})
        finally:
            os.close(listing)
        return {"entries": entries}, None

    def op_delete(self, request: dict):
        """Remove a file, a symlink (not what it points to) or a directory tree."""
        parent, name = self._parent(self._path(request), create=False)
        try:
            _remove(parent, name)
        finally:
            os.close(parent)
        return {}, None

    def op_archive(self, request: dict, fd: int):
        """Write the directory to `fd` as a tar stream (a checkpoint's files): directories and
        regular files with their modes and mtimes; symlinks, FIFOs, sockets, devices, files the
        engine's user cannot read and uploads under way are skipped (named in the reply), never
        followed or opened. Refused (notebook_storage_full) past `max_bytes` of file contents."""
        cap = int(request["max_bytes"])
        total, entries, skipped = 0, 0, []
        with os.fdopen(fd, "wb") as out, tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            tar.copybufsize = COPY_BYTES
            for path, info, parent, name in self._tree():
                if stat.S_ISDIR(info.st_mode):
                    tar.addfile(_member(path, info, tarfile.DIRTYPE))
                    entries += 1
                    continue
                source = self._open_regular(parent, name) if stat.S_ISREG(info.st_mode) else None
                if source is None:
                    skipped.append(path)
                    continue
                with source:
                    size = os.fstat(source.fileno()).st_size
                    total += size
                    if total > cap:
                        raise Refused("notebook_storage_full",
                                      f"the notebook's files are larger than the cap of {cap} bytes")
                    member = _member(path, info, tarfile.REGTYPE)
                    member.size = size
                    tar.addfile(member, _Exactly(source, size))
                entries += 1
        return {"entries": entries, "bytes": total, "skipped": skipped[:MAX_SKIPPED_LISTED],
                "skipped_count": len(skipped)}, None

    def op_extract(self, request: dict, fd: int):
        """Replace the directory's contents with the tar stream on `fd` (see op_archive): every
        entry is removed, then the archive's directories and regular files are made (as the
        engine's user, each path resolved as any other); anything else in it is ignored."""
        cap = int(request["max_bytes"])
        total, entries = 0, 0
        with os.fdopen(fd, "rb") as source, tarfile.open(fileobj=source, mode="r|") as tar:
            self._clear()
            for member in tar:
                path = self._path({"path": member.name})
                if member.isdir():
                    parent, name = self._parent(path + "/.", create=True)
                    os.close(parent)
                elif member.isreg():
                    total += member.size
                    if total > cap:
                        raise Refused("notebook_storage_full",
                                      f"the checkpoint's files are larger than the cap of {cap} bytes")
                    self._write_member(path, member, tar.extractfile(member))
                else:
                    continue
                entries += 1
        return {"entries": entries, "bytes": total}, None

    def _tree(self):
        """(path, lstat, parent fd, name) of every entry under the root, a directory before what it
        holds; directories are entered with openat2 (never through a symlink), one at a time."""
        pending = [""]
        while pending:
            prefix = pending.pop()
            try:
                opened = openat2(self.root, prefix or ".", os.O_RDONLY | os.O_DIRECTORY)
            except OSError:  # replaced by a symlink or removed meanwhile: not entered
                continue
            try:
                for name in sorted(os.listdir(opened)):
                    if name.startswith(TEMP_PREFIX):
                        continue
                    try:
                        info = os.stat(name, dir_fd=opened, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    path = prefix + name
                    yield path, info, opened, name
                    if stat.S_ISDIR(info.st_mode):
                        pending.append(path + "/")
            finally:
                os.close(opened)

    @staticmethod
    def _open_regular(parent: int, name: str):
        """The regular file `name` in `parent` opened for reading, or None (not regular, unreadable)."""
        try:
            handle = openat2(parent, name, os.O_PATH | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(handle).st_mode):
                return None
            return os.fdopen(os.open(f"/proc/self/fd/{handle}", os.O_RDONLY | os.O_CLOEXEC), "rb", buffering=0)
        except OSError:
            return None
        finally:
            os.close(handle)

    def _clear(self) -> None:
        """Remove every entry of the root (the root itself stays: the engine's HOME)."""
        listing = os.open(f"/proc/self/fd/{self.root}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for name in os.listdir(listing):
                _remove(listing, name)
        finally:
            os.close(listing)

    def _write_member(self, path: str, member: tarfile.TarInfo, data) -> None:
        parent, name = self._parent(path, create=True)
        try:
            out = openat2(parent, name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, member.mode & 0o777)
        finally:
            os.close(parent)
        try:
            while chunk := data.read(COPY_BYTES):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view):]
            os.utime(out, (member.mtime, member.mtime))
        finally:
            os.close(out)

    def op_usage(self, request: dict):
        """Bytes in regular files under the directory (for the per-notebook cap), but for the
        temporary files named in `exclude`: uploads under way, counted by their reservations."""
        exclude = frozenset(request.get("exclude") or ())
        total, seen = 0, 0
        for _, _, files, top_fd in os.fwalk(".", dir_fd=self.root):
            for name in files:
                seen += 1
                if name in exclude:
                    continue
                try:
                    entry = os.stat(name, dir_fd=top_fd, follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(entry.st_mode):
                    total += entry.st_size
            if seen > MAX_USAGE_ENTRIES:
                break
        return {"bytes": total}, None

    @staticmethod
    def _temp(request: dict) -> str:
        temp = request["temp"]
        if not (isinstance(temp, str) and temp.startswith(TEMP_PREFIX) and "/" not in temp):
            raise Refused("bad_request", "not an upload's temporary name")
        return temp


def _remove(parent: int, name: str) -> None:
    """Remove `name` in the directory `parent`: a file, a symlink (not its target) or a tree."""
    info = os.stat(name, dir_fd=parent, follow_symlinks=False)
    if not stat.S_ISDIR(info.st_mode):
        os.unlink(name, dir_fd=parent)
        return
    # fwalk never follows symlinks and works on dir fds: a planted link is unlinked, not entered
    for _, dirs, files, top_fd in os.fwalk(name, topdown=False, dir_fd=parent):
        for entry in files:
            os.unlink(entry, dir_fd=top_fd)
        for entry in dirs:
            try:
                os.rmdir(entry, dir_fd=top_fd)
            except NotADirectoryError:  # a symlink to a directory, listed among dirs
                os.unlink(entry, dir_fd=top_fd)
    os.rmdir(name, dir_fd=parent)


def _member(path: str, info: os.stat_result, kind: bytes) -> tarfile.TarInfo:
    member = tarfile.TarInfo(path)
    member.type = kind
    member.mode = info.st_mode & 0o777
    member.mtime = int(info.st_mtime)
    return member


class _Exactly:
    """A file read as exactly `size` bytes: one that shrank while archived is padded with zeros
    (tarfile insists on the size its header gave), one that grew is cut there."""

    def __init__(self, source, size: int):
        self.source, self.left = source, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.source.read(n) if n else b""
        if len(data) < n:
            data += bytes(n - len(data))
        self.left -= n
        return data


def drop_privileges(uid: int, gid: int) -> None:
    """Become the engine's user for good (real, effective and saved ids; no supplementary groups)."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getgroups():
        raise SystemExit("files helper: could not drop privileges")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="taskkernel.workers.files_helper")
    parser.add_argument("--socket-fd", type=int, required=True)
    parser.add_argument("--directory", required=True)
    parser.add_argument("--uid", type=int, default=-1, help="drop to this uid and gid (-1: stay)")
    args = parser.parse_args(argv)
    # no PR_SET_PDEATHSIG: it follows the thread that started the helper, which may end first;
    # the helper ends when the worker's end of the socket closes (the worker died) instead
    if args.uid >= 0:
        drop_privileges(args.uid, args.uid)
    root = os.open(args.directory, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    sock = socket.socket(fileno=args.socket_fd)
    Helper(sock, root).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
