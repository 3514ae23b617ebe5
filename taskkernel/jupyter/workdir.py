"""The bridge kernel's working directory, copied into its notebook's directory when the notebook opens.

A kernel started by nbclient, JupyterLab or `jupyter console` runs in the directory Jupyter chose
(the notebook's own, for nbclient and JupyterLab), and an ipykernel user expects the files there to
be visible: `Image("python.png")`, `pd.read_csv("data.csv")`, `import helpers`. The cells of a
bridge kernel run in a sandbox on the service, which shows no host directory, so the bridge uploads
that directory's files through the files API (`PUT /api/notebooks/<id>/files/<path>`) before the
first cell, into the notebook's working directory.

What is copied is bounded, so a kernel started in a large directory (a home directory, a checkout)
starts quickly and never fills the notebook's quota: regular files only (symlinks are not followed,
hidden names such as `.git` or `.ipynb_checkpoints` and `__pycache__` are left out), `depth` levels of
subdirectories (0: the directory's own files), at most MAX_FILES files and `max_bytes` bytes in all;
a file that does not fit is skipped, and the kernel's log says what was. Nothing is copied back: a
file a cell writes stays in the notebook's directory (download it with the files API).
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MAX_FILES = 256
MAX_SCANNED = 4096  # directory entries looked at, whatever they are
UPLOAD_THREADS = 4
LEFT_OUT = frozenset({"__pycache__"})


@dataclasses.dataclass
class Plan:
    """The files to copy: (local path, path in the notebook's directory, size), and what was left."""

    files: list[tuple[Path, str, int]] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)  # "name: reason"

    @property
    def bytes(self) -> int:
        return sum(size for _, _, size in self.files)


def plan(local_dir: Path, remote_dir: str, max_bytes: int, depth: int = 0) -> Plan:
    """What of `local_dir` goes to `remote_dir` (relative to the notebook's directory), breadth
    first in name order, so a directory's own files come before its subdirectories'."""
    found = Plan()
    if max_bytes <= 0:
        return found
    budget, scanned = max_bytes, 0
    level = [(local_dir, remote_dir)]
    for current_depth in range(depth + 1):
        deeper = []
        for directory, remote in level:
            try:
                entries = sorted(os.scandir(directory), key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                scanned += 1
                if scanned > MAX_SCANNED:
                    found.skipped.append(f"{directory}: more than {MAX_SCANNED} entries looked at")
                    return found
                if entry.name.startswith(".") or entry.name in LEFT_OUT:
                    continue
                target = posixpath.join(remote, entry.name) if remote else entry.name
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if current_depth < depth:
                            deeper.append((Path(entry.path), target))
                        continue
                    if not entry.is_file(follow_symlinks=False):
                        continue  # symlinks, sockets, FIFOs
                    size = entry.stat(follow_symlinks=False).st_size
                except OSError:
                    continue
                if len(found.files) >= MAX_FILES:
                    found.skipped.append(f"{target}: more than {MAX_FILES} files")
                elif size > budget:
                    found.skipped.append(f"{target}: {size} bytes, over the {max_bytes} bytes copied in all")
                else:
                    found.files.append((Path(entry.path), target, size))
                    budget -= size
        level = deeper
    return found


def upload(notebook, files: Plan) -> list[str]:
    """Upload the planned files to the notebook (a few at a time); the ones that failed, with why."""
    def one(item: tuple[Path, str, int]) -> str | None:
        local, remote, _ = item
        try:
            notebook.upload(local, remote)
        except Exception as exc:  # a file that vanished or was refused is skipped, not fatal
            return f"{remote}: {exc}"
        return None

    if not files.files:
        return []
    with ThreadPoolExecutor(max_workers=min(UPLOAD_THREADS, len(files.files)),
                            thread_name_prefix="taskkernel-upload") as pool:
        return [failure for failure in pool.map(one, files.files) if failure]
