"""Operations on a notebook's namespace from outside a cell: push, pull, checkpoint, restore.

They run in the worker's main thread, in queue order with the cells (as Celery tasks), so a
value pushed before a cell is there when it runs and a checkpoint never sees a half-run cell.
Values cross the API as JSON or as base64 dill that only the client and this worker load; the
API never unpickles anything. Checkpoints are taken per variable (pickle protocol 5 first, dill
when pickle cannot), so one unpicklable value is reported and skipped, not fatal.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import time
import types
from pathlib import Path

import dill
import redis

from taskkernel import keys

PICKLE, DILL = b"P", b"D"
SKIP_NAMES = {"__name__", "__builtins__", "display", "_", "__doc__", "__loader__", "__spec__", "__package__"}


class NamespaceError(Exception):
    """An operation failed for a reason the caller should see; `code` becomes the API's error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def push(namespace: dict, name: str, *, value=None, dill_b64: str | None = None) -> dict:
    if dill_b64 is not None:
        value = dill.loads(base64.b64decode(dill_b64))
    namespace[name] = value
    return {"name": name, "type": type(value).__name__}


def pull(namespace: dict, name: str, *, as_dill: bool = False) -> dict:
    if name not in namespace:
        raise NamespaceError("variable_not_found", f"the notebook has no variable {name!r}")
    value = namespace[name]
    if as_dill:
        return {"name": name, "dill": base64.b64encode(dill.dumps(value, recurse=True)).decode()}
    try:
        text = json.dumps(value, allow_nan=False)
        if json.loads(text) == value and type(json.loads(text)) is type(value):
            return {"name": name, "json": True, "value": value}
    except (TypeError, ValueError):
        pass
    return {"name": name, "json": False, "repr": repr(value)[:100_000], "type": type(value).__name__}


def _serialise(value) -> bytes:
    try:
        return PICKLE + pickle.dumps(value, protocol=5)
    except Exception:
        return DILL + dill.dumps(value, recurse=True)


def _deserialise(blob: bytes):
    return pickle.loads(blob[1:]) if blob[:1] == PICKLE else dill.loads(blob[1:])


class CheckpointStore:
    """Where checkpoints live: a Redis hash per notebook, or files under a directory."""

    def __init__(self, client: redis.Redis, directory: str = ""):
        self.redis = client
        self.directory = Path(directory) if directory else None

    def write(self, notebook_id: str, blobs: dict[str, bytes], meta: dict) -> str:
        if self.directory is None:
            pipe = self.redis.pipeline(transaction=True)
            pipe.delete(keys.checkpoint(notebook_id))
            pipe.hset(keys.checkpoint(notebook_id), mapping={**{f"v:{k}": v for k, v in blobs.items()},
                                                             "meta": json.dumps(meta)})
            pipe.execute()
            return "redis"
        target = self.directory / notebook_id
        staging = self.directory / f".{notebook_id}.{os.getpid()}"
        staging.mkdir(parents=True, exist_ok=True)
        for name, blob in blobs.items():
            (staging / f"{name}.bin").write_bytes(blob)
        (staging / "meta.json").write_text(json.dumps(meta))
        if target.exists():
            for old in target.iterdir():
                old.unlink()
            target.rmdir()
        staging.rename(target)
        return str(target)

    def read(self, notebook_id: str) -> dict[str, bytes] | None:
        if self.directory is None:
            raw = self.redis.hgetall(keys.checkpoint(notebook_id))
            if not raw:
                return None
            return {k.decode()[2:]: v for k, v in raw.items() if k.startswith(b"v:")}
        target = self.directory / notebook_id
        if not target.is_dir():
            return None
        return {p.stem: p.read_bytes() for p in target.glob("*.bin")}


def checkpoint(namespace: dict, store: CheckpointStore, notebook_id: str) -> dict:
    """Save every variable that can be saved; report the ones that cannot, and why."""
    started = time.perf_counter()
    blobs, skipped = {}, {}
    for name, value in list(namespace.items()):
        if name in SKIP_NAMES or name.startswith("__") or isinstance(value, types.ModuleType):
            continue
        try:
            blobs[name] = _serialise(value)
        except Exception as exc:
            skipped[name] = f"{type(exc).__name__}: {exc}"[:300]
    meta = {"saved": sorted(blobs), "skipped": skipped, "created": time.time()}
    where = store.write(notebook_id, blobs, meta)
    return {**meta, "bytes": sum(len(b) for b in blobs.values()), "store": where,
            "seconds": round(time.perf_counter() - started, 6)}


def restore(namespace: dict, store: CheckpointStore, notebook_id: str) -> dict:
    blobs = store.read(notebook_id)
    if blobs is None:
        raise NamespaceError("no_checkpoint", "the notebook has no checkpoint to restore")
    restored, failed = [], {}
    for name, blob in blobs.items():
        try:
            namespace[name] = _deserialise(blob)
            restored.append(name)
        except Exception as exc:
            failed[name] = f"{type(exc).__name__}: {exc}"[:300]
    return {"restored": sorted(restored), "failed": failed}
