"""stdin: the answer to a running cell's input_request (input(), getpass())."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from taskkernel import rpc
from taskkernel.api.validation import request_body
from taskkernel.exceptions import NoInputPending

blueprint = Blueprint("stdin", __name__)


@blueprint.post("/notebooks/<hexid:notebook_id>/input")
def input_reply(notebook_id: str):
    """Jupyter's input_reply: `value` is what the waiting input() returns ("\\x04" is end of file).
    409 no_input_pending when no cell waits for input."""
    svc = current_app.extensions["taskkernel"]
    body = request_body()
    notebook = svc.store.get(notebook_id)
    if not notebook["worker"]:
        raise NoInputPending("no cell of this notebook waits for input", notebook_id=notebook_id)
    result = rpc.call(svc.redis, notebook["worker"]["id"], "input_reply", {"value": body["value"]},
                      timeout_s=svc.settings.rpc_timeout_s)
    if not result.get("delivered"):
        raise NoInputPending("no cell of this notebook waits for input", notebook_id=notebook_id)
    return jsonify({"delivered": True})
