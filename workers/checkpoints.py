"""Where a notebook's checkpoints live, kept by its worker: a Redis hash, or files under a directory.

Only workers read and write them (the trusted side); engines never see the store, so no cell can
list, plant or replace another notebook's checkpoint. The bytes are the engine's own pickles,
stored and returned untouched: they are unpickled only inside the notebook's own sandbox.
"""

from __future__ import annotations

import json
import os
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


class CheckpointStore:
    """Per-notebook checkpoints: `taskkernel:checkpoint:<id>` in Redis, or `<directory>/<id>/`."""

    def __init__(self, client: redis.Redis, directory: str = ""):
        self.redis = client
        self.directory = Path(directory) if directory else None
        if self.directory is not None:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._write = client.register_script(_WRITE_LUA)

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
