"""Operations on a namespace from outside a cell, as the engine process performs them.

Push, pull, snapshot (for a checkpoint) and load (a restore) run in the engine, in queue order
with the cells, so a value pushed before a cell is there when it runs and a snapshot never sees a
half-run cell. Unpickling runs code, which is why it happens here, inside the notebook's own
sandbox, and never in the worker or the API: the worker stores and returns the bytes untouched.
Snapshots are taken per variable (pickle protocol 5 first, dill when pickle cannot), so one
unpicklable value is reported and skipped, not fatal.
"""

from __future__ import annotations

import json
import pickle
import types

from taskkernel.exceptions import NamespaceError  # noqa: F401 (raised as namespace.NamespaceError)

PICKLE, DILL = b"P", b"D"
SKIP_NAMES = {"__name__", "__builtins__", "display", "_", "__doc__", "__loader__", "__spec__", "__package__",
              "get_ipython", "exit", "quit", "In", "Out", "_ih", "_oh", "_dh"}


def push(namespace: dict, name: str, *, value=None, dill_blob: bytes | None = None) -> dict:
    if dill_blob is not None:
        import dill

        value = dill.loads(dill_blob)
    namespace[name] = value
    return {"name": name, "type": type(value).__name__}


def pull(namespace: dict, name: str, *, as_dill: bool = False) -> tuple[dict, list[bytes]]:
    """The value as JSON when it survives the round trip, else its repr; or dill bytes."""
    if name not in namespace:
        raise NamespaceError("variable_not_found", f"the notebook has no variable {name!r}")
    value = namespace[name]
    if as_dill:
        import dill

        return {"name": name}, [dill.dumps(value, recurse=True)]
    try:
        text = json.dumps(value, allow_nan=False)
        if json.loads(text) == value and type(json.loads(text)) is type(value):
            return {"name": name, "json": True, "value": value}, []
    except (TypeError, ValueError):
        pass
    return {"name": name, "json": False, "repr": repr(value)[:100_000], "type": type(value).__name__}, []


def snapshot(namespace: dict) -> tuple[dict, dict[str, bytes]]:
    """Serialise every variable that can be; report the ones that cannot, and why."""
    blobs, skipped = {}, {}
    for name, value in list(namespace.items()):
        if name in SKIP_NAMES or name.startswith("__") or isinstance(value, types.ModuleType):
            continue
        try:
            blobs[name] = _serialise(value)
        except Exception as exc:
            skipped[name] = f"{type(exc).__name__}: {exc}"[:300]
    return {"saved": sorted(blobs), "skipped": skipped}, blobs


def load(namespace: dict, blobs: dict[str, bytes]) -> dict:
    restored, failed = [], {}
    for name, blob in blobs.items():
        try:
            namespace[name] = _deserialise(blob)
            restored.append(name)
        except Exception as exc:
            failed[name] = f"{type(exc).__name__}: {exc}"[:300]
    return {"restored": sorted(restored), "failed": failed}


def _serialise(value) -> bytes:
    try:
        return PICKLE + pickle.dumps(value, protocol=5)
    except Exception:
        import dill

        return DILL + dill.dumps(value, recurse=True)


def _deserialise(blob: bytes):
    if blob[:1] == PICKLE:
        return pickle.loads(blob[1:])
    import dill

    return dill.loads(blob[1:])
