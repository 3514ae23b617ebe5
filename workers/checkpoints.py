"""Where a notebook's checkpoints live, kept by its worker: a Redis hash, or files under a directory.

Only workers read and write them (the trusted side); engines never see the store, so no cell can
list, plant or replace another notebook's checkpoint. The bytes are the engine's own pickles,
stored and returned untouched: they are unpickled only inside the notebook's own sandbox.

A checkpoint taken with its files (include_files) also keeps the notebook's directory as a tar
file, `<id>.files.tar`, beside the namespace in the checkpoint directory, or, with checkpoints in
Redis, in the host's sandbox root (`.checkpoints/`, 0700: no engine reaches it). The service's
user only opens that file and hands the fd to the worker's file helper, which writes and reads it
as the engine's user. A checkpoint without files leaves the last files as they were.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

import redis

from taskkernel import keys
from taskkernel.exceptions import NotebookGone


# Replace a notebook's checkpoint, unless the notebook is gone or being deleted (a checkpoint taken
# after each cell, racing a delete, would recreate the key after the delete removed it).
# KEYS: notebook, checkpoint.  ARGV: field/value pairs.  Returns 1, or 0 when not written.
_WRITE_LUA = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'deleting' then return 0 end
redis.call('DEL', KEYS[2])
for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
return 1
"""

FILES_SUFFIX = ".files.tar"


class CheckpointStore:
    """Per-notebook checkpoints: `taskkernel:checkpoint:<id>` in Redis, or `<directory>/<id>/`."""

    def __init__(self, client: redis.Redis, directory: str = "", files_directory: Path | None = None):
        self.redis = client
        self.directory = Path(directory) if directory else None
        if self.directory is not None:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._write = client.register_script(_WRITE_LUA)
        self.files_directory = self.directory if self.directory is not None else files_directory

    # --- the files of a checkpoint (a tar file, written and read by the file helper) -------------------

    def files_path(self, notebook_id: str) -> Path | None:
        return None if self.files_directory is None else self.files_directory / f"{notebook_id}{FILES_SUFFIX}"

    def stage_files(self, notebook_id: str) -> tuple[int, Path]:
        """A new, empty file for the notebook's files (fd open for writing, path); commit_files puts
        it in place. Raises OSError when there is nowhere to keep them."""
        if self.files_directory is None:
            raise OSError("no directory for a checkpoint's files")
        self.files_directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        staged = self.files_directory / f".{notebook_id}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        return os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600), staged

    def commit_files(self, notebook_id: str, staged: Path) -> str:
        target = self.files_path(notebook_id)
        os.replace(staged, target)
        return str(target)

    def open_files(self, notebook_id: str) -> int | None:
        """An fd of the last checkpoint's files (for reading), or None when it was taken without them."""
        target = self.files_path(notebook_id)
        try:
            return os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC) if target is not None else None
        except FileNotFoundError:
            return None

    def remove(self, notebook_id: str) -> None:
        """Drop what the notebook's checkpoint left on disk (its Redis hash goes with its record)."""
        target = self.files_path(notebook_id)
        if target is not None:
            target.unlink(missing_ok=True)
        if self.directory is not None:
            shutil.rmtree(self.directory / notebook_id, ignore_errors=True)

    def notebooks_with_files(self) -> list[str]:
        """The notebooks whose checkpoint's files are kept here."""
        try:
            names = os.listdir(self.files_directory) if self.files_directory is not None else []
        except FileNotFoundError:
            return []
        return [name[:-len(FILES_SUFFIX)] for name in names if name.endswith(FILES_SUFFIX)]

    # --- the namespace ---------------------------------------------------------------------------------

    def write(self, notebook_id: str, blobs: dict[str, bytes], meta: dict) -> str:
        """Replace the notebook's checkpoint; returns where it went. Raises NotebookGone when the
        notebook is gone or being deleted (nothing is written)."""
        if self.directory is None:
            fields = [item for name, blob in blobs.items() for item in (f"v:{name}", blob)]
            if not self._write(keys=[keys.notebook(notebook_id), keys.checkpoint(notebook_id)],
                               args=[*fields, "meta", json.dumps(meta)]):
                raise NotebookGone(f"notebook {notebook_id} is gone: its checkpoint was not kept",
                                   notebook_id=notebook_id)
            return "redis"
        target = self.directory / notebook_id
        staging = self.directory / f".{notebook_id}.{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        for index, (name, blob) in enumerate(blobs.items()):
            (staging / f"{index}.bin").write_bytes(blob)
        (staging / "meta.json").write_text(json.dumps({**meta, "files": list(blobs)}))
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        return str(target)

    def read(self, notebook_id: str) -> dict[str, bytes] | None:
        """The notebook's variables as its engine pickled them, or None without a checkpoint."""
        if self.directory is None:
            raw = self.redis.hgetall(keys.checkpoint(notebook_id))
            if not raw:
                return None
            return {k.decode()[2:]: v for k, v in raw.items() if k.startswith(b"v:")}
        target = self.directory / notebook_id
        if not (target / "meta.json").is_file():
            return None
        names = json.loads((target / "meta.json").read_text())["files"]
        return {name: (target / f"{index}.bin").read_bytes() for index, name in enumerate(names)}
