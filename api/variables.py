"""Push/pull variables and checkpoint/restore a notebook's namespace (queued with its cells).

Values travel as JSON, or as base64 dill that only the client and the notebook's worker ever
load: this process passes dill payloads through untouched and never unpickles anything.
"""

from __future__ import annotations

import base64
import binascii
import time

from flask import Blueprint, current_app, jsonify, request

from taskkernel import keys, rpc
from taskkernel.api.validation import request_body
from taskkernel.deadlines import set_deadline
from taskkernel.exceptions import EngineUnavailable, InvalidField
from taskkernel.messages import new_id

blueprint = Blueprint("variables", __name__)
START_GRACE_S = 1.0  # an operation the worker started just before its not_after may answer this late


def _call(notebook_id: str, op: str, args: dict, timeout_s: float | None = None):
    svc = current_app.extensions["taskkernel"]
    wait_s = timeout_s or svc.settings.rpc_timeout_s
    set_deadline(svc.settings.assign_timeout_s + wait_s + 1.0)
    reply_key = keys.reply(new_id())
    # the worker does not start the operation after this (wall clock, as hosts share it): a caller
    # told 504 is not surprised by a checkpoint or a restore that runs later
    args = {**args, "not_after": time.time() + wait_s}
    svc.store.enqueue(notebook_id, svc.messages.call(notebook_id, op, args, reply_key),
                      worker_timeout_s=svc.settings.assign_timeout_s)
    try:
        return rpc.wait_reply(svc.redis, reply_key, op, wait_s + START_GRACE_S)
    except EngineUnavailable as exc:
        raise EngineUnavailable(f"the notebook's worker did not answer {op!r} within {wait_s:g} s; it is not "
                                "started after that (one already under way may still finish)", op=op) from exc


def _check_name(name: str) -> None:
    if not name.isidentifier():
        raise InvalidField(f"{name!r} is not a Python identifier", field="name")


@blueprint.put("/notebooks/<hexid:notebook_id>/variables/<name>")
def push_variable(notebook_id: str, name: str):
    """Set a variable: {"value": <any JSON>} or {"dill": <base64 dill, from the Python client>}."""
    _check_name(name)
    body = request_body()
    if ("value" in body) == ("dill" in body):
        raise InvalidField("send exactly one of 'value' and 'dill'", field="value")
    if "dill" in body:
        try:
            base64.b64decode(body["dill"], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidField("field 'dill' must be base64", field="dill") from None
    return jsonify(_call(notebook_id, "push", {"name": name, **body}))


@blueprint.get("/notebooks/<hexid:notebook_id>/variables/<name>")
def pull_variable(notebook_id: str, name: str):
    """A variable as JSON, or its repr when it is not JSON-serialisable; ?format=dill for the client."""
    _check_name(name)
    as_dill = request.args.get("format") == "dill"
    return jsonify(_call(notebook_id, "pull", {"name": name, "dill": as_dill}))


@blueprint.post("/notebooks/<hexid:notebook_id>/checkpoint")
def checkpoint(notebook_id: str):
    """Save the namespace (per variable); says what was saved and what could not be, and why.
    With include_files, the notebook's directory is saved beside it (a checkpoint without keeps
    the files the last one with them saved)."""
    body = request_body()
    return jsonify(_call(notebook_id, "checkpoint", {"include_files": bool(body.get("include_files"))},
                         body.get("timeout")))


@blueprint.post("/notebooks/<hexid:notebook_id>/restore")
def restore(notebook_id: str):
    """Load the last checkpoint into the notebook's namespace; with include_files, first replace the
    directory's contents with the checkpoint's files (without, the directory is left as it is)."""
    body = request_body()
    return jsonify(_call(notebook_id, "restore", {"include_files": bool(body.get("include_files"))},
                         body.get("timeout")))
