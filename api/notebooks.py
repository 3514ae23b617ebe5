"""Notebooks: create (pin to an idle worker), list, show, delete, renew a lease, restart, interrupt."""

from __future__ import annotations

import secrets
import time

from flask import Blueprint, current_app, jsonify

from taskkernel import keys, rpc, workspace
from taskkernel.api.auth import token_digest
from taskkernel.api.validation import request_body
from taskkernel.assignment import RESTARTED_ERROR
from taskkernel.engines import registry
from taskkernel.exceptions import InvalidField, NotSupportedByEngine

blueprint = Blueprint("notebooks", __name__)


def services():
    return current_app.extensions["taskkernel"]


@blueprint.post("/notebooks")
def create_notebook():
    body = request_body()
    engine = body.get("engine", "python")
    lease_s = body.get("lease_s", 0.0)
    svc = services()
    spec = registry.get_spec(svc.settings.config_dir, engine)  # UnknownEngine -> 400
    cwd = workspace.check_cwd(body.get("cwd", str(spec.get("cwd") or "")))
    env = workspace.check_env(body.get("env", {}))
    token = secrets.token_urlsafe(32)
    options = {k: body[k] for k in ("restore_on_restart", "checkpoint_every_cell") if k in body}
    if spec.get("kernelspec") and any(options.values()):  # checkpoints are of a Python namespace
        raise NotSupportedByEngine(f"engine {engine!r} runs the Jupyter kernel {spec['kernelspec']!r}: it has no "
                                   "Python namespace to checkpoint or restore", engine=engine)
    notebook = svc.store.create(engine, timeout_s=svc.settings.assign_timeout_s, token_sha256=token_digest(token),
                                max_total=svc.settings.max_notebooks,
                                max_of_engine=int(spec.get("max_notebooks", 0)), options=options,
                                lease_s=lease_s, workspace_json=workspace.encode(cwd, env) if cwd or env else "")
    response = jsonify({**notebook, "token": token})
    response.status_code = 201
    response.headers["Location"] = f"/api/notebooks/{notebook['id']}"
    return response


@blueprint.get("/notebooks")
def list_notebooks():
    return jsonify({"notebooks": services().store.list()})


@blueprint.get("/notebooks/<hexid:notebook_id>")
def get_notebook(notebook_id: str):
    return jsonify(services().store.get(notebook_id))


@blueprint.delete("/notebooks/<hexid:notebook_id>")
def delete_notebook(notebook_id: str):
    services().store.delete(notebook_id)
    return "", 204


@blueprint.post("/notebooks/<hexid:notebook_id>/lease")
def renew_lease(notebook_id: str):
    """Keep a notebook opened with lease_s for another lease_s (its client is still there)."""
    request_body()
    return jsonify(services().store.renew_lease(notebook_id))


@blueprint.post("/notebooks/<hexid:notebook_id>/restart")
def restart_notebook(notebook_id: str):
    """A fresh namespace on a fresh worker; queued cells are aborted, the running one is killed."""
    svc = services()
    request_body()
    svc.store.get(notebook_id)
    svc.store.restart(notebook_id, reason="the notebook was restarted", cell_error=RESTARTED_ERROR)
    return jsonify(svc.store.wait_for_worker(notebook_id, svc.settings.assign_timeout_s))


@blueprint.post("/notebooks/<hexid:notebook_id>/interrupt")
def interrupt_notebook(notebook_id: str):
    """KeyboardInterrupt in the running cell; a harmless no-op when none runs."""
    svc = services()
    request_body()
    notebook = svc.store.get(notebook_id)
    if not notebook["worker"]:
        return jsonify({"interrupted": None})
    result = rpc.call(svc.redis, notebook["worker"]["id"], "interrupt", timeout_s=svc.settings.rpc_timeout_s)
    return jsonify(result)


def _introspect(notebook_id: str, op: str):
    svc = services()
    body = request_body()
    code = body["code"]
    args = {"code": code}
    if op != "is_complete":
        cursor_pos = body.get("cursor_pos", len(code))
        if not 0 <= cursor_pos <= len(code):
            raise InvalidField(f"cursor_pos must be between 0 and {len(code)}", field="cursor_pos")
        args["cursor_pos"] = cursor_pos
    if "detail_level" in body:
        args["detail_level"] = body["detail_level"]
    deadline = time.monotonic() + svc.settings.rpc_timeout_s
    while True:  # a worker retired meanwhile (a restart) is not waited on: its successor is asked
        worker = svc.store.wait_for_worker(notebook_id, svc.settings.assign_timeout_s)["worker"]["id"]
        result = rpc.call(svc.redis, worker, op, args, timeout_s=max(0.01, deadline - time.monotonic()),
                          still_there=lambda: svc.redis.hget(keys.notebook(notebook_id), "worker") == worker.encode())
        if result is not rpc.MOVED:
            return jsonify(result)


@blueprint.post("/notebooks/<hexid:notebook_id>/complete")
def complete(notebook_id: str):
    """Jupyter's complete_reply: matches, cursor_start, cursor_end, on the live namespace."""
    return _introspect(notebook_id, "complete")


@blueprint.post("/notebooks/<hexid:notebook_id>/inspect")
def inspect(notebook_id: str):
    return _introspect(notebook_id, "inspect")


@blueprint.post("/notebooks/<hexid:notebook_id>/is_complete")
def is_complete(notebook_id: str):
    return _introspect(notebook_id, "is_complete")
