"""A notebook's directory across its workers: a restart resets the namespace, not the files.

Each worker's engine has its own directory, made before the worker is pinned to a notebook (the
warm pool). When a worker ends while its notebook lives on (a restart, an engine death), its
supervisor moves the directory aside (`<root>/.stash/<notebook>`, 0700: no engine reaches it),
gives it to the engine user of the notebook's next worker and moves its entries into that
worker's directory, then clears the notebook's `files_from` mark (set by the restart), which
file requests and the first cell wait on. When the notebook is gone, the stash is removed.
A notebook re-homed to another host (its own host died) starts with an empty directory.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger("taskkernel.supervisor")

STASH = ".stash"


SOCKETS = ".sockets"  # the workers' local file sockets (workers/files.py), 0700, the service's user
CHECKPOINT_FILES = ".checkpoints"  # checkpoints' files when checkpoints are in Redis (workers/checkpoints.py)


def checkpoint_files_dir(root: Path) -> Path:
    return root / CHECKPOINT_FILES


def socket_path(root: Path, worker_id: str) -> Path:
    return root / SOCKETS / worker_id


def remove_socket(root: Path, worker_id: str) -> None:
    try:
        socket_path(root, worker_id).unlink()
    except FileNotFoundError:
        pass


def clear(root: Path) -> None:
    """Remove the stashes, sockets and checkpoints' files under `root` (a supervisor starting on a
    used directory: the notebooks they served were re-homed when it stopped)."""
    for name in (STASH, SOCKETS, CHECKPOINT_FILES):
        target = root / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target, ignore_errors=True)


def stash_dir(root: Path) -> Path:
    return root / STASH


def stash(root: Path, worker_id: str, notebook_id: str) -> bool:
    """Move the ended worker's directory aside for its notebook; False when it has none."""
    home = root / worker_id / "home"
    if home.is_symlink() or not home.is_dir():
        return False
    stashes = stash_dir(root)
    stashes.mkdir(mode=0o700, exist_ok=True)
    target = stashes / notebook_id
    if not target.exists():
        os.rename(home, target)
        return True
    _move_entries(home, target)  # two restarts before a hand-over: the older files stay, new ones join
    return True


def hand_over(root: Path, notebook_id: str, worker_id: str, uid: int | None) -> None:
    """Give the stashed directory's entries to `worker_id`'s engine (owned by `uid`), then drop the stash."""
    source = stash_dir(root) / notebook_id
    home = root / worker_id / "home"
    if uid is not None:
        _chown_tree(source, uid)
    _move_entries(source, home)
    discard(root, notebook_id)


def discard(root: Path, notebook_id: str) -> None:
    target = stash_dir(root) / notebook_id
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target, ignore_errors=True)


def stashed(root: Path) -> list[str]:
    """The notebooks whose directories wait for a hand-over."""
    try:
        return os.listdir(stash_dir(root))
    except FileNotFoundError:
        return []


def _chown_tree(top: Path, uid: int) -> None:
    """chown every entry under `top` to uid:uid, never through a symlink (fwalk works on dir fds)."""
    os.chown(top, uid, uid, follow_symlinks=False)
    for _, dirs, files, top_fd in os.fwalk(top, follow_symlinks=False):
        for name in dirs + files:
            try:
                os.chown(name, uid, uid, dir_fd=top_fd, follow_symlinks=False)
            except OSError as exc:
                log.warning("handing over %s: chown %s: %r", top, name, exc)


def _move_entries(source: Path, target: Path) -> None:
    """Rename each entry of `source` into `target`; one the new engine has made already wins."""
    source_fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    target_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for name in os.listdir(source_fd):
            try:
                os.stat(name, dir_fd=target_fd, follow_symlinks=False)
                continue  # taken in the new directory
            except FileNotFoundError:
                pass
            try:
                os.rename(name, name, src_dir_fd=source_fd, dst_dir_fd=target_fd)
            except OSError as exc:
                log.warning("handing over %s: %s: %r", source, name, exc)
    finally:
        os.close(source_fd)
        os.close(target_fd)
