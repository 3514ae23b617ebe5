"""Cells: evaluate (queue on the notebook's worker, optionally wait), show one, list them."""

from __future__ import annotations

import functools

from flask import Blueprint, current_app, jsonify

from taskkernel import feed, messages
from taskkernel.api.validation import json_body
from taskkernel.exceptions import InvalidField
from taskkernel.workers.tasks import evaluate_message

blueprint = Blueprint("cells", __name__)


@blueprint.post("/notebooks/<hexid:notebook_id>/evaluate")
def evaluate(notebook_id: str):
    """Queue a cell. 202 + the queued cell; with wait, 200 + the finished cell (202 on timeout)."""
    svc = current_app.extensions["taskkernel"]
    body = json_body({"code": str, "wait": bool, "timeout": float, "stop_on_error": bool}, required=("code",))
    timeout_s = body.get("timeout", svc.settings.wait_timeout_s)
    if not 0 <= timeout_s <= svc.settings.max_wait_timeout_s:
        raise InvalidField(f"field 'timeout' must be between 0 and {svc.settings.max_wait_timeout_s:g} s", field="timeout")
    task_message = functools.partial(evaluate_message, svc.celery, notebook_id=notebook_id)
    cell, _queue, position = svc.store.submit(notebook_id, body["code"], task_message,
                                              stop_on_error=body.get("stop_on_error", False),
                                              worker_timeout_s=svc.settings.assign_timeout_s)
    if body.get("wait"):
        reply = feed.wait_for_reply(svc.redis, notebook_id, cell["id"], position, timeout_s)
        record = feed.cell_record_from_reply(reply) if reply else None
        cell = messages.cell_from_redis(record) if record else svc.store.get_cell(cell["id"])
    status = 200 if cell["state"] == "done" else 202
    response = jsonify(cell)
    response.status_code = status
    response.headers["Location"] = f"/api/notebooks/{notebook_id}/cells/{cell['id']}"
    return response


@blueprint.get("/notebooks/<hexid:notebook_id>/cells/<hexid:cell_id>")
def get_cell(notebook_id: str, cell_id: str):
    svc = current_app.extensions["taskkernel"]
    svc.store.get(notebook_id)
    return jsonify(svc.store.get_cell(cell_id, notebook_id=notebook_id))


@blueprint.get("/notebooks/<hexid:notebook_id>/cells")
def list_cells(notebook_id: str):
    svc = current_app.extensions["taskkernel"]
    svc.store.get(notebook_id)
    return jsonify({"cells": svc.store.list_cells(notebook_id)})
