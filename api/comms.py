"""Comms: a front end's comm_open / comm_msg / comm_close to the engine, and comm_info."""

from __future__ import annotations

import binascii

from flask import Blueprint, current_app, jsonify, request

from taskkernel import messages, rpc
from taskkernel.api.validation import request_body
from taskkernel.exceptions import InvalidField

blueprint = Blueprint("comms", __name__)


@blueprint.post("/notebooks/<hexid:notebook_id>/comms")
def send_comm(notebook_id: str):
    """Deliver one comm message to the notebook's engine, even while a cell runs (the worker's
    side channel, as for complete), and answer once its handler has run: 200 {"msg_id"}.

    `msg_id` (default: a new id) is the parent header of whatever the handler publishes on the
    feed (a widget's echo, an interact's output), as on ipykernel; a bridge passes the Jupyter id.
    """
    svc = current_app.extensions["taskkernel"]
    body = request_body()
    if not isinstance(body["content"].get("comm_id"), str):
        raise InvalidField("content.comm_id must be a string", field="content")
    if body["msg_type"] == "comm_open" and not isinstance(body["content"].get("target_name"), str):
        raise InvalidField("a comm_open's content.target_name must be a string", field="content")
    buffers = body.get("buffers", [])
    try:
        messages.decode_buffers(buffers)
    except (ValueError, binascii.Error):
        raise InvalidField("buffers must be a list of base64 strings", field="buffers") from None
    msg_id = body.get("msg_id") or messages.new_id()
    notebook = svc.store.wait_for_worker(notebook_id, svc.settings.assign_timeout_s)
    args = {"notebook_id": notebook_id, "msg_type": body["msg_type"], "content": body["content"],
            "metadata": body.get("metadata", {}), "buffers": buffers, "msg_id": msg_id}
    return jsonify(rpc.call(svc.redis, notebook["worker"]["id"], "comm", args, timeout_s=svc.settings.rpc_timeout_s))


@blueprint.get("/notebooks/<hexid:notebook_id>/comms")
def comm_info(notebook_id: str):
    """Jupyter's comm_info_reply: the engine's open comms, of ?target_name= when given."""
    svc = current_app.extensions["taskkernel"]
    args = {"notebook_id": notebook_id}
    if request.args.get("target_name"):
        args["target_name"] = request.args["target_name"]
    notebook = svc.store.wait_for_worker(notebook_id, svc.settings.assign_timeout_s)
    return jsonify(rpc.call(svc.redis, notebook["worker"]["id"], "comm_info", args,
                            timeout_s=svc.settings.rpc_timeout_s))
