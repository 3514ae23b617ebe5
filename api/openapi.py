"""GET /api/openapi.json: an OpenAPI 3 description of every endpoint, request and response.

Its request body schemas are also the API's validation (api/validation.py compiles them), so a
limit the API enforces is written here, once; limits that follow settings are filled in from them.
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

import taskkernel
from taskkernel.settings import Settings
from taskkernel import messages
from taskkernel.messages import IDEMPOTENCY_HEADER
from taskkernel.notebooks import MAX_LEASE_S, MIN_LEASE_S
from taskkernel.states import CellState, NotebookState

blueprint = Blueprint("openapi", __name__)

HEX_ID = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
NULLABLE_STR = {"type": ["string", "null"]}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict) -> dict:
    return {"content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict:
    return {"description": description, **_json(_ref("Error"))}


def _body(properties: dict, required: list[str] | None = None) -> dict:
    schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    return {"required": bool(required), **_json(schema)}


COMMON_ERRORS = {
    "400": _error("malformed request (invalid_json, invalid_field)"),
    "401": _error("a valid token is required"),
    "403": _error("refused: the client's network (forbidden), the Host name of a tokenless API "
                  "(host_not_allowed), or a write from another site (cross_site_request)"),
    "404": _error("no such notebook or cell"),
    "413": _error("request body larger than TASKKERNEL_MAX_REQUEST_BYTES (request_too_large, with "
                  "max_request_bytes and content_length)"),
    "415": _error("request bodies must be JSON"),
    "503": _error("Redis or workers unavailable"),
    "507": _error("Redis is full (redis_out_of_memory): nothing was written"),
}


def _op(summary: str, responses: dict, body: dict | None = None, params: list | None = None) -> dict:
    op = {"summary": summary, "responses": {**responses, **COMMON_ERRORS}}
    if body is not None:
        op["requestBody"] = body
    if params:
        op["parameters"] = params
    return op


NOTEBOOK_ID = {"name": "notebook_id", "in": "path", "required": True, "schema": HEX_ID}
CELL_ID = {"name": "cell_id", "in": "path", "required": True, "schema": HEX_ID}
IDEMPOTENCY_KEY = {
    "name": IDEMPOTENCY_HEADER, "in": "header", "required": False,
    "description": "a key of the client's choosing: a repeated request with it returns the cell the first "
                   "one queued (header Idempotent-Replayed: true) and runs nothing",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x20-\\x7e]+$"},
}
VAR_NAME = {"name": "name", "in": "path", "required": True,
            "description": "a Python identifier (str.isidentifier: letters, digits and _, not starting with a digit)",
            "schema": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"}}
CODE_POS = {"code": {"type": "string"},
            "cursor_pos": {"type": "integer", "minimum": 0,
                           "description": "at most len(code) (400 invalid_field otherwise); default len(code)"}}

SCHEMAS = {
    "Error": {
        "type": "object", "required": ["error", "message"],
        "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
    },
    "Engine": {
        "type": "object", "required": ["name", "display_name", "language", "class"],
        "properties": {"name": {"type": "string"}, "display_name": {"type": "string"},
                       "language": {"type": "string"}, "class": {"type": "string"},
                       "pool_size": {"type": ["integer", "null"]}, "limits": {"type": "object"},
                       "kernelspec": NULLABLE_STR, "source": NULLABLE_STR},
    },
    "Notebook": {
        "type": "object", "required": ["id", "engine", "state", "execution_count", "worker"],
        "properties": {
            "id": HEX_ID, "engine": {"type": "string"},
            "state": {"type": "string", "enum": [s.value for s in NotebookState]},
            "execution_count": {"type": "integer"}, "cells": {"type": "integer"},
            "restarts": {"type": "integer"}, "dropped_deliveries": {"type": "integer"},
            "created": NULLABLE_STR, "last_activity": NULLABLE_STR,
            "lease_s": {"type": ["number", "null"]}, "lease_until": NULLABLE_STR,
            "cwd": {"type": "string"}, "env": {"type": "object", "additionalProperties": {"type": "string"}},
            "token": {"type": "string", "description": "only in the create response"},
            "worker": {"oneOf": [{"type": "null"}, {
                "type": "object", "required": ["id", "host", "pid"],
                "properties": {"id": {"type": "string"}, "host": NULLABLE_STR, "pid": {"type": "integer"}},
            }]},
            "files_lost": {"oneOf": [{"type": "null"}, {
                "type": "object", "required": ["host", "at", "message"],
                "description": "the notebook moved to another host (its own died or stopped): the files of "
                               "its directory stayed on that host's disk and it went on with an empty one",
                "properties": {"host": {"type": "string"}, "at": NULLABLE_STR, "message": {"type": "string"}},
            }]},
        },
    },
    "Output": {
        "type": "object", "required": ["output_type"],
        "properties": {"output_type": {"type": "string",
                                       "enum": ["stream", "execute_result", "display_data", "error"]}},
    },
    "Cell": {
        "type": "object",
        "required": ["id", "notebook_id", "code", "state", "status", "execution_count", "stdout", "stderr",
                     "outputs", "error"],
        "properties": {
            "id": HEX_ID, "notebook_id": HEX_ID, "code": {"type": "string"},
            "state": {"type": "string", "enum": [s.value for s in CellState]},
            "status": {"type": ["string", "null"], "enum": ["ok", "error", "aborted", None]},
            "execution_count": {"type": ["integer", "null"]},
            "stdout": {"type": "string"}, "stderr": {"type": "string"},
            "outputs": {"type": "array", "items": _ref("Output")},
            "error": {"oneOf": [{"type": "null"}, {"type": "object", "required": ["ename", "evalue", "traceback"]}]},
            "stop_on_error": {"type": "boolean"},
            "submitted": NULLABLE_STR, "started": NULLABLE_STR, "completed": NULLABLE_STR,
        },
    },
}


# --- a notebook's files (api/files.py) -------------------------------------------------------------------
FILE_PATH = {"name": "path", "in": "path", "required": True,
             "description": "a path inside the notebook's directory ('/'-separated; a trailing '/' lists a directory)",
             "schema": {"type": "string", "minLength": 1}}
RANGE = {"name": "Range", "in": "header", "required": False, "description": "one byte range: bytes=start-end",
         "schema": {"type": "string", "pattern": "^bytes=[0-9]*-[0-9]*$"}}
FILE_ERRORS = {
    "400": _error("a path that is not inside the notebook (invalid_path), that leads through a symlink or to a "
                  "FIFO, socket or device (unsafe_path), or of the wrong type (is_a_directory, not_a_directory)"),
    "404": _error("no such notebook (notebook_not_found) or file (file_not_found)"),
    "504": _error("the notebook's worker did not answer"),
}
LISTING = {
    "type": "object", "required": ["path", "entries"],
    "properties": {"path": {"type": "string"}, "entries": {"type": "array", "items": {
        "type": "object", "required": ["name", "type", "size", "mtime"],
        "properties": {"name": {"type": "string"},
                       "type": {"type": "string", "enum": ["file", "directory", "symlink", "other"]},
                       "size": {"type": "integer"}, "mtime": {"type": "number"}}}}},
}
BYTES = {"schema": {"type": "string", "format": "binary"}}
CHECKPOINT_FILES = {"entries": {"type": "integer"}, "bytes": {"type": "integer"},
                    "skipped": {"type": "array", "items": {"type": "string"},
                                "description": "paths not archived (symlinks, FIFOs, sockets, devices, unreadable)"},
                    "skipped_count": {"type": "integer"}, "store": {"type": "string"}}


def _file_op(summary: str, responses: dict, **kwargs) -> dict:
    """_op, with the file routes' own descriptions of 400, 404 and 413."""
    op = _op(summary, responses, **kwargs)
    op["responses"].update({code: responses[code] for code in ("400", "404", "413") if code in responses})
    return op


FILE_PATHS = {
    "/api/notebooks/{notebook_id}/files/": {"get": _file_op(
        "list the notebook's directory",
        {"200": {"description": "its entries", **_json(LISTING)}, **FILE_ERRORS}, params=[NOTEBOOK_ID])},
    "/api/notebooks/{notebook_id}/files/{path}": {
        "get": _file_op("download a file (streamed; Range requests), or list a directory (path ending in '/')",
                   {"200": {"description": "the file's bytes (Content-Type by its name), or a listing",
                            "content": {"application/octet-stream": BYTES, "application/json": {"schema": LISTING}}},
                    "206": {"description": "the requested range", "content": {"application/octet-stream": BYTES}},
                    "416": _error("the range lies outside the file (range_not_satisfiable)"), **FILE_ERRORS},
                   params=[NOTEBOOK_ID, FILE_PATH, RANGE]),
        "put": _file_op("upload a file (raw body, or a multipart form's first part with a filename, else its part "
                        "named 'file'); parents are made",
                   {"201": {"description": "written", **_json({
                       "type": "object", "required": ["path", "size"],
                       "properties": {"path": {"type": "string"}, "size": {"type": "integer"}}})},
                    "413": _error("over the per-file (file_too_large) or per-notebook (notebook_storage_full) cap"),
                    **FILE_ERRORS},
                   body={"required": True, "content": {
                       "application/octet-stream": BYTES,
                       "multipart/form-data": {"schema": {"type": "object", "properties": {
                           "file": {"type": "string", "format": "binary"}}}}}},
                   params=[NOTEBOOK_ID, FILE_PATH]),
        "delete": _file_op("remove a file, a symlink (not its target) or a directory with its contents",
                      {"204": {"description": "removed"}, **FILE_ERRORS}, params=[NOTEBOOK_ID, FILE_PATH]),
    },
}


def document(settings: Settings | None = None) -> dict:
    """The document, with the limits that `settings` (default: the defaults) set."""
    settings = settings or Settings()
    ok = lambda description, schema: {"description": description, **_json(schema)}  # noqa: E731
    timeout = {"type": "number", "minimum": 0, "maximum": settings.max_wait_timeout_s,
               "description": "seconds (at most TASKKERNEL_MAX_WAIT_TIMEOUT_S)"}
    return {
        "openapi": "3.1.0",
        "info": {"title": "taskkernel", "version": taskkernel.__version__,
                 "description": "Notebooks pinned to Celery workers; cells evaluated over HTTP."},
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],
        "paths": {
            "/api/engines": {"get": _op("list engine types", {"200": ok("engines", {
                "type": "object", "required": ["engines", "errors"],
                "properties": {"engines": {"type": "array", "items": _ref("Engine")}, "errors": {"type": "object"}},
            })})},
            "/api/notebooks": {
                "get": _op("list notebooks", {"200": ok("notebooks", {
                    "type": "object", "required": ["notebooks"],
                    "properties": {"notebooks": {"type": "array", "items": _ref("Notebook")}}})}),
                "post": _op("create a notebook on an idle worker",
                            {"201": ok("the new notebook, with its token", _ref("Notebook")),
                             "429": _error("a notebook quota is reached")},
                            body=_body({"engine": {"type": "string"}, "restore_on_restart": {"type": "boolean"},
                                        "checkpoint_every_cell": {"type": "boolean"},
                                        "lease_s": {"type": "number", "minimum": MIN_LEASE_S,
                                                    "maximum": MAX_LEASE_S},
                                        "cwd": {"type": "string", "description": "working directory, relative "
                                                "to the notebook's private directory (created on demand)"},
                                        "env": {"type": "object", "additionalProperties": {"type": "string"},
                                                "description": "environment variables added for the cells "
                                                "(TASKKERNEL_*, LD_*, PYTHON*, HOME, TMPDIR, PATH, USER, "
                                                "LOGNAME refused)"}})),
            },
            "/api/notebooks/{notebook_id}": {
                "get": _op("show a notebook", {"200": ok("the notebook", _ref("Notebook"))}, params=[NOTEBOOK_ID]),
                "delete": _op("delete a notebook and stop its worker", {"204": {"description": "deleted"}},
                              params=[NOTEBOOK_ID]),
            },
            "/api/notebooks/{notebook_id}/evaluate": {"post": _op(
                "queue a cell; with wait, return it finished",
                {"200": ok("the finished cell", _ref("Cell")),
                 "202": ok("the queued or still running cell", _ref("Cell")),
                 "409": _error("the notebook is being deleted"),
                 "422": _error("the Idempotency-Key already submitted other code (idempotency_key_reused)")},
                body=_body({"code": {"type": "string"}, "wait": {"type": "boolean"},
                            "timeout": {**timeout, "description": "seconds to wait with `wait` (default "
                                        f"{settings.wait_timeout_s:g}, at most TASKKERNEL_MAX_WAIT_TIMEOUT_S)"},
                            "stop_on_error": {"type": "boolean"},
                            "silent": {"type": "boolean"}, "store_history": {"type": "boolean"},
                            "allow_stdin": {"type": "boolean"},
                            "user_expressions": {"type": "object", "additionalProperties": {"type": "string"}}},
                           ["code"]),
                params=[NOTEBOOK_ID, IDEMPOTENCY_KEY])},
            "/api/notebooks/{notebook_id}/cells": {"get": _op("the notebook's cells", {"200": ok("cells", {
                "type": "object", "required": ["cells"],
                "properties": {"cells": {"type": "array", "items": _ref("Cell")}}})}, params=[NOTEBOOK_ID])},
            "/api/notebooks/{notebook_id}/cells/{cell_id}": {"get": _op(
                "one cell", {"200": ok("the cell", _ref("Cell"))}, params=[NOTEBOOK_ID, CELL_ID])},
            "/api/notebooks/{notebook_id}/complete": {"post": _op(
                "completions on the live namespace (Jupyter complete_reply)",
                {"200": ok("complete_reply", {"type": "object", "required": ["matches", "cursor_start", "cursor_end"]}),
                 "504": _error("the worker did not answer")},
                body=_body(CODE_POS, ["code"]), params=[NOTEBOOK_ID])},
            "/api/notebooks/{notebook_id}/inspect": {"post": _op(
                "docstring and signature under the cursor (Jupyter inspect_reply)",
                {"200": ok("inspect_reply", {"type": "object", "required": ["found", "data"]}),
                 "504": _error("the worker did not answer")},
                body=_body({**CODE_POS, "detail_level": {"type": "integer"}}, ["code"]), params=[NOTEBOOK_ID])},
            "/api/notebooks/{notebook_id}/is_complete": {"post": _op(
                "is the code a complete cell (Jupyter is_complete_reply)",
                {"200": ok("is_complete_reply", {"type": "object", "required": ["status"]}),
                 "504": _error("the worker did not answer")},
                body=_body({"code": {"type": "string"}}, ["code"]), params=[NOTEBOOK_ID])},
            "/api/notebooks/{notebook_id}/interrupt": {"post": _op(
                "KeyboardInterrupt in the running cell",
                {"200": ok("which cell was interrupted", {"type": "object", "required": ["interrupted"]}),
                 "504": _error("the worker did not answer")},
                body=_body({}), params=[NOTEBOOK_ID])},
            "/api/notebooks/{notebook_id}/comms": {
                "post": _op(
                    "deliver a comm_open, comm_msg or comm_close to the engine, even while a cell runs",
                    {"200": ok("delivered; msg_id is the parent of what its handler publishes",
                               {"type": "object", "required": ["msg_id"]}),
                     "504": _error("the worker did not answer")},
                    body=_body({"msg_type": {"type": "string", "enum": list(messages.COMM_TYPES)},
                                "content": {"type": "object"}, "metadata": {"type": "object"},
                                "buffers": {"type": "array", "items": {"type": "string"}},
                                "msg_id": {"type": "string"}}, ["msg_type", "content"]),
                    params=[NOTEBOOK_ID]),
                "get": _op("the engine's open comms (Jupyter comm_info_reply)",
                           {"200": ok("comm_info_reply", {"type": "object", "required": ["comms"]}),
                            "504": _error("the worker did not answer")},
                           params=[NOTEBOOK_ID, {"name": "target_name", "in": "query", "schema": {"type": "string"}}]),
            },
            "/api/notebooks/{notebook_id}/input": {"post": _op(
                "answer the running cell's input_request (input(), getpass())",
                {"200": ok("delivered", {"type": "object", "required": ["delivered"]}),
                 "409": _error("no cell waits for input (no_input_pending)"),
                 "504": _error("the worker did not answer")},
                body=_body({"value": {"type": "string"}}, ["value"]), params=[NOTEBOOK_ID])},
            "/api/notebooks/{notebook_id}/lease": {"post": _op(
                "renew the lease of a notebook opened with lease_s",
                {"200": ok("the notebook, with its new lease_until", _ref("Notebook")),
                 "409": _error("the notebook has no lease (no_lease) or is being deleted")},
                body=_body({}), params=[NOTEBOOK_ID])},
            "/api/notebooks/{notebook_id}/restart": {"post": _op(
                "a fresh namespace on a fresh worker", {"200": ok("the notebook", _ref("Notebook"))},
                body=_body({}), params=[NOTEBOOK_ID])},
            "/api/notebooks/{notebook_id}/feed": {"get": _op(
                "the feed as Server-Sent Events, replayable with Last-Event-ID",
                {"200": {"description": "an event stream",
                         "content": {"text/event-stream": {"schema": {"type": "string"}}}}},
                params=[NOTEBOOK_ID,
                        {"name": "after", "in": "query", "schema": {"type": "string", "pattern": r"^\d+-\d+$"}},
                        {"name": "timeout", "in": "query", "schema": {"type": "number", "minimum": 0}},
                        {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}}])},
            "/api/notebooks/{notebook_id}/variables/{name}": {
                "put": _op("set a variable (queued with the cells)",
                           {"200": ok("what was set", {"type": "object", "required": ["name", "type"]}),
                            "504": _error("the worker did not answer in time")},
                           body=_body({"value": {}, "dill": {"type": "string"}}), params=[NOTEBOOK_ID, VAR_NAME]),
                "get": _op("a variable as JSON, or its repr; ?format=dill for the Python client",
                           {"200": ok("the value", {"type": "object", "required": ["name"]}),
                            "504": _error("the worker did not answer in time")},
                           params=[NOTEBOOK_ID, VAR_NAME,
                                   {"name": "format", "in": "query", "schema": {"type": "string", "enum": ["json", "dill"]}}]),
            },
            "/api/notebooks/{notebook_id}/checkpoint": {"post": _op(
                "save the namespace, per variable (queued with the cells); with include_files, the "
                "notebook's directory too",
                {"200": ok("what was saved and skipped; `files`: what of the directory was saved, or null",
                           {"type": "object", "required": ["saved", "skipped"],
                            "properties": {"files": {"type": ["object", "null"], "properties": CHECKPOINT_FILES}}}),
                 "413": _error("the directory is larger than TASKKERNEL_MAX_NOTEBOOK_FILES_BYTES "
                               "(notebook_storage_full): nothing was saved, the last checkpoint stays"),
                 "504": _error("the worker did not answer in time")},
                body=_body({"timeout": timeout, "include_files": {
                    "type": "boolean", "description":
                        "also save the notebook's directory (regular files and directories; symlinks, FIFOs, "
                        "sockets and devices are skipped, never followed), archived by the worker's file helper "
                        "as the engine's user; beside the checkpoint in TASKKERNEL_CHECKPOINT_DIR, or on the "
                        "notebook's host when checkpoints are in Redis. Without it the files of the last "
                        "checkpoint taken with them are kept"}}), params=[NOTEBOOK_ID])},
            "/api/notebooks/{notebook_id}/restore": {"post": _op(
                "load the last checkpoint (queued with the cells)",
                {"200": ok("what was restored; `files`: the directory's entries and bytes put back, or null",
                           {"type": "object", "required": ["restored", "failed"]}),
                 "404": _error("no checkpoint (no_checkpoint), or, with include_files, none with files here"),
                 "504": _error("the worker did not answer in time")},
                body=_body({"timeout": timeout, "include_files": {
                    "type": "boolean", "description":
                        "first replace the directory's contents with the files of the last checkpoint taken "
                        "with include_files; without it the directory is left as it is"}}),
                params=[NOTEBOOK_ID])},
            **FILE_PATHS,
            "/api/hosts": {"get": _op("live hosts and their pools", {"200": ok("hosts", {
                "type": "object", "required": ["hosts"], "properties": {"hosts": {"type": "array"}}})})},
            "/api/pools/{engine}": {"put": _op(
                "resize the warm pool of an engine",
                {"200": ok("the new size and the hosts told", {"type": "object", "required": ["engine", "size"]})},
                body=_body({"size": {"type": "integer", "minimum": 0, "maximum": 10000}, "host": {"type": "string"}},
                           ["size"]),
                params=[{"name": "engine", "in": "path", "required": True, "schema": {"type": "string"}}])},
            "/api/openapi.json": {"get": {"summary": "this document",
                                          "responses": {"200": ok("OpenAPI 3", {"type": "object"})}}},
            "/api/status": {"get": _op(
                "hosts (heartbeat, pools, idle workers), notebooks (state, queue depth) and cell counts",
                {"200": ok("the snapshot /metrics also reads", {
                    "type": "object", "required": ["hosts", "notebooks", "cells"],
                    "properties": {"time": {"type": "number"}, "hosts": {"type": "array"},
                                   "notebooks": {"type": "array"}, "cells": {"type": "object"},
                                   "queue_depth": {"type": "integer"}}})})},
            "/metrics": {"get": _op(
                "Prometheus metrics: text format 0.0.4, or OpenMetrics when the Accept header asks for it",
                {"200": {"description": "metrics", "content": {
                    "text/plain": {"schema": {"type": "string"}},
                    "application/openmetrics-text": {"schema": {"type": "string"}}}}})},
            "/": {"get": {"summary": "the web console's page", "security": [{}],
                          "responses": {"200": {"description": "HTML",
                                                "content": {"text/html": {"schema": {"type": "string"}}}}}}},
        },
    }


@blueprint.get("/openapi.json")
def openapi():
    return jsonify(document(current_app.extensions["taskkernel"].settings))
