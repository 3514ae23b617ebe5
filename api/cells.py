"""Cells: evaluate (queue on the notebook's worker, optionally wait), show one, list them."""

from __future__ import annotations

import functools
import logging
import re

import redis
from flask import Blueprint, current_app, jsonify, request

from taskkernel import feed, messages
from taskkernel.api.validation import request_body
from taskkernel.deadlines import set_deadline
from taskkernel.exceptions import InvalidField
from taskkernel.messages import IDEMPOTENCY_HEADER
from taskkernel.states import CellState

blueprint = Blueprint("cells", __name__)
log = logging.getLogger("taskkernel.api")

IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,255}")
# the execute_request fields an evaluate may set, with their Jupyter meaning (default: off, on, off, {})
EXECUTE_OPTIONS = ("silent", "store_history", "allow_stdin", "user_expressions")
REPLY_MARGIN_S = 0.5  # an evaluate with wait answers within its timeout and this (to read the cell)
MIN_DEADLINE_S = 2.0  # and never sooner than this: recording the cell needs its round trips


@blueprint.post("/notebooks/<hexid:notebook_id>/evaluate")
def evaluate(notebook_id: str):
    """Queue a cell. 202 + the queued cell; with wait, 200 + the finished cell (202 on timeout).

    With an Idempotency-Key header, a repeated request returns the cell the first one queued
    (Idempotent-Replayed: true) and runs nothing. Once the cell is recorded the answer always
    carries it, even if Redis fails while the caller waits (202 then).
    """
    svc = current_app.extensions["taskkernel"]
    body = request_body()
    options = {k: body[k] for k in EXECUTE_OPTIONS if k in body}
    timeout_s = body.get("timeout", svc.settings.wait_timeout_s)
    if body.get("wait"):
        set_deadline(max(timeout_s + REPLY_MARGIN_S, MIN_DEADLINE_S))  # heard by its own timeout, Redis frozen or not
    idempotency_key = request.headers.get(IDEMPOTENCY_HEADER)
    if idempotency_key is not None and not IDEMPOTENCY_KEY.fullmatch(idempotency_key):
        raise InvalidField(f"header {IDEMPOTENCY_HEADER} must be 1 to 255 printable ASCII characters",
                           field=IDEMPOTENCY_HEADER)
    task_message = functools.partial(svc.messages.evaluate, notebook_id=notebook_id)
    submitted = svc.store.submit(notebook_id, body["code"], task_message,
                                 stop_on_error=body.get("stop_on_error", False),
                                 worker_timeout_s=svc.settings.assign_timeout_s,
                                 idempotency_key=idempotency_key or "",
                                 idempotency_ttl_s=svc.settings.idempotency_ttl_s, options=options)
    cell = submitted.cell
    if body.get("wait") and cell["state"] != CellState.DONE:
        try:
            reply = feed.wait_for_reply(svc.redis, notebook_id, cell["id"], submitted.position, timeout_s,
                                        stop=svc.stopping)
            record = feed.cell_record_from_reply(reply) if reply else None
            cell = messages.cell_from_redis(record) if record else svc.store.get_cell(cell["id"])
        except redis.RedisError as exc:  # the cell is recorded and may run: say so, never 503
            log.warning("waiting for cell %s: %r; answering with the cell as recorded", cell["id"], exc)
    status = 200 if cell["state"] == CellState.DONE else 202
    response = jsonify(cell)
    response.status_code = status
    response.headers["Location"] = f"/api/notebooks/{notebook_id}/cells/{cell['id']}"
    if submitted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
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
