"""The feed's wire format (Jupyter message shape) and the cell object, written down once.

A feed message is a JSON object:

    {"seq": 7,                       # per-notebook sequence number, added when published
     "header": {"msg_id", "msg_type", "date", "session", "username", "version"},
     "parent_header": {"msg_id": <cell id>, "msg_type": "execute_request"} or {},
     "metadata": {}, "content": {...}, "notebook_id": <nb>}

`content` follows the Jupyter messaging spec for each msg_type in MSG_TYPES.

Comm messages (widgets) may carry binary buffers; on the feed, and in the bodies of the comms
endpoint, they are `"buffers": [<base64>, ...]` at the top level of the message (absent when
there are none), the JSON stand-in for the binary frames Jupyter's wire protocol uses.

A message's parent is the request it answers: the cell (`execute_request`, msg_id = cell id),
or a comm message or input reply delivered through the API (msg_id = the id that request was
given, its msg_type `comm_msg`, `comm_open`, `comm_close`): output a widget callback prints
while handling a comm message is the comm message's, as on ipykernel.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import uuid

PROTOCOL_VERSION = "5.3"

# msg_type -> the content keys every message of that type must carry
MSG_TYPES: dict[str, tuple[str, ...]] = {
    "status": ("execution_state",),
    "execute_input": ("code", "execution_count"),
    "stream": ("name", "text"),
    "execute_result": ("execution_count", "data", "metadata"),
    "display_data": ("data", "metadata", "transient"),
    "update_display_data": ("data", "metadata", "transient"),
    "error": ("ename", "evalue", "traceback"),
    "execute_reply": ("status", "execution_count"),
    "clear_output": ("wait",),
    "comm_open": ("comm_id", "target_name", "data"),
    "comm_msg": ("comm_id", "data"),
    "comm_close": ("comm_id", "data"),
    "input_request": ("prompt", "password"),
}
# what a front end may send to a notebook's engine through the comms endpoint
COMM_TYPES = ("comm_open", "comm_msg", "comm_close")
# the messages that may carry transient.display_id (nbclient updates its outputs on each)
DISPLAY_TYPES = ("display_data", "update_display_data", "execute_result")
EXECUTION_STATES = ("busy", "idle", "starting", "restarting", "dead")

CELL_STATES = ("queued", "running", "done")  # taskkernel.states.CellState
# the HTTP header of an evaluate that makes its retries safe: the same key returns the same cell
IDEMPOTENCY_HEADER = "Idempotency-Key"
CELL_STATUSES = ("ok", "error", "aborted")
ENGINE_DIED = "EngineDied"  # the ename of a cell whose engine (or worker, or host) died under it


def error_content(ename: str, evalue: str, traceback: list[str] | None = None) -> dict:
    """Jupyter's `error` content (also a failed execute_reply's): `traceback` defaults to the one
    line "ename: evalue"."""
    return {"ename": ename, "evalue": evalue, "traceback": [f"{ename}: {evalue}"] if traceback is None else traceback}


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def new_id() -> str:
    return uuid.uuid4().hex


def make_message(msg_type: str, content: dict, *, notebook_id: str, cell_id: str | None = None,
                 parent_type: str = "execute_request", buffers: list[bytes] | None = None) -> dict:
    """Build one feed message; `cell_id` becomes the parent header's msg_id (a request of
    `parent_type`), `buffers` the message's base64 `buffers`."""
    parent = {"msg_id": cell_id, "msg_type": parent_type} if cell_id else {}
    msg = {
        "header": {
            "msg_id": new_id(),
            "msg_type": msg_type,
            "date": now_iso(),
            "session": notebook_id,
            "username": "taskkernel",
            "version": PROTOCOL_VERSION,
        },
        "parent_header": parent,
        "metadata": {},
        "content": content,
        "notebook_id": notebook_id,
    }
    if buffers:
        msg["buffers"] = encode_buffers(buffers)
    return msg


def encode_buffers(buffers: list[bytes]) -> list[str]:
    return [base64.b64encode(bytes(b)).decode("ascii") for b in buffers]


def decode_buffers(encoded: list[str]) -> list[bytes]:
    """The bytes of a message's base64 `buffers`; ValueError when one is not base64."""
    return [base64.b64decode(b, validate=True) for b in encoded]


def status(state: str, *, notebook_id: str, cell_id: str | None = None) -> dict:
    return make_message("status", {"execution_state": state}, notebook_id=notebook_id, cell_id=cell_id)


def validate_message(msg: dict) -> list[str]:
    """Return what is wrong with a feed message (empty when it conforms)."""
    problems = []
    for key in ("header", "parent_header", "metadata", "content"):
        if not isinstance(msg.get(key), dict):
            problems.append(f"missing or non-object {key!r}")
    if problems:
        return problems
    header = msg["header"]
    for key in ("msg_id", "msg_type", "date", "session", "version"):
        if not isinstance(header.get(key), str):
            problems.append(f"header.{key} missing")
    msg_type = header.get("msg_type")
    if msg_type not in MSG_TYPES:
        problems.append(f"unknown msg_type {msg_type!r}")
        return problems
    for key in MSG_TYPES[msg_type]:
        if key not in msg["content"]:
            problems.append(f"{msg_type}.content.{key} missing")
    if msg_type == "status" and msg["content"].get("execution_state") not in EXECUTION_STATES:
        problems.append(f"bad execution_state {msg['content'].get('execution_state')!r}")
    if msg_type == "stream" and msg["content"].get("name") not in ("stdout", "stderr"):
        problems.append("stream.name must be stdout or stderr")
    if msg_type == "execute_reply":
        reply_status = msg["content"].get("status")
        if reply_status not in CELL_STATUSES:
            problems.append(f"bad execute_reply status {reply_status!r}")
        elif reply_status == "error":  # an error reply says what the error was, as the error message does
            problems += [f"execute_reply.content.{key} missing" for key in MSG_TYPES["error"]
                         if key not in msg["content"]]
    if "buffers" in msg and not (isinstance(msg["buffers"], list) and all(isinstance(b, str) for b in msg["buffers"])):
        problems.append("buffers must be a list of base64 strings")
    if "seq" in msg and not isinstance(msg["seq"], int):
        problems.append("seq must be an integer")
    return problems


def display_id_of(msg: dict) -> str | None:
    """The display id a display_data / update_display_data / execute_result carries, if any."""
    transient = msg["content"].get("transient")
    return transient.get("display_id") if isinstance(transient, dict) else None


def output_from_message(msg: dict) -> dict | None:
    """The nbformat v4 output a feed message stands for, or None (status, input, reply).

    update_display_data and clear_output are no output of their own: they change outputs kept
    before them (see workers/runtime.py CellRun.add_output).
    """
    msg_type = msg["header"]["msg_type"]
    content = msg["content"]
    if msg_type == "stream":
        return {"output_type": "stream", "name": content["name"], "text": content["text"]}
    if msg_type == "execute_result":
        return {
            "output_type": "execute_result",
            "execution_count": content["execution_count"],
            "data": content["data"],
            "metadata": content.get("metadata", {}),
        }
    if msg_type == "display_data":
        return {"output_type": "display_data", "data": content["data"], "metadata": content.get("metadata", {})}
    if msg_type == "error":
        return {
            "output_type": "error",
            "ename": content["ename"],
            "evalue": content["evalue"],
            "traceback": content["traceback"],
        }
    return None


# --- the cell object, stored as a Redis hash of strings -------------------------------------

_JSON_FIELDS = ("outputs", "error")
_INT_FIELDS = ("execution_count", "position")
_BOOL_FIELDS = ("stop_on_error",)


def cell_to_redis(cell: dict) -> dict[str, str]:
    out = {}
    for key, value in cell.items():
        if key in _JSON_FIELDS:
            out[key] = json.dumps(value)
        elif key in _BOOL_FIELDS:
            out[key] = "1" if value else "0"
        elif value is None:
            out[key] = ""
        else:
            out[key] = str(value)
    return out


def hash_pairs(mapping: dict) -> list:
    """field1, value1, field2, value2, ...: a hash as a Lua script's ARGV takes it (HSET unpack)."""
    return [item for pair in mapping.items() for item in pair]


def cell_from_redis(raw: dict) -> dict:
    """Decode a cell hash (bytes or str) into the API's cell object."""
    data = {as_text(k): as_text(v) for k, v in raw.items()}
    cell = {
        "id": data.get("id"),
        "notebook_id": data.get("notebook_id"),
        "code": data.get("code", ""),
        "state": data.get("state"),
        "status": data.get("status") or None,
        "execution_count": None,
        "stdout": data.get("stdout", ""),
        "stderr": data.get("stderr", ""),
        "outputs": json.loads(data["outputs"]) if data.get("outputs") else [],
        "error": json.loads(data["error"]) if data.get("error") else None,
        "stop_on_error": data.get("stop_on_error") == "1",
        "submitted": data.get("submitted") or None,
        "started": data.get("started") or None,
        "completed": data.get("completed") or None,
    }
    if data.get("execution_count"):
        cell["execution_count"] = int(data["execution_count"])
    return cell


def as_text(value) -> str:
    """Redis answers bytes; keys, ids and fields are text."""
    return value.decode() if isinstance(value, bytes) else value
