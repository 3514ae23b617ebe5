"""The trusted side of one notebook: runs a cell in the worker's engine process, publishes its outputs.

The runtime knows Redis (records and the feed) and its engine process, but not Celery: the task
layer hands it a cell id. It claims the cell atomically (a cell already started or aborted is
dropped, so a redelivered Celery message never runs a cell twice), sends the code to the engine,
keeps what comes back within the cell's output limit (streams, displays, results and errors
alike: the cap is enforced here, outside the engine), and writes the finished cell and its
execute_reply in one Lua script. When the engine dies the cell is answered at once (EngineDied)
and the worker exits, so its supervisor restarts the notebook on a fresh worker.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import queue
import secrets
import signal
import threading
import time
from typing import NamedTuple

import redis

from taskkernel import feed, files, keys, messages, metrics, rpc, workspace
from taskkernel.connections import Durability
from taskkernel.exceptions import EngineDied, EngineRefused
from taskkernel.notebooks import NotebookStore
from taskkernel.states import CellState
from taskkernel.workers.capture import OutputCapture
from taskkernel.workers.checkpoints import CheckpointStore
from taskkernel.workers.engine import EngineProcess
from taskkernel.workers.files import FileService

log = logging.getLogger("taskkernel.worker")


class Claim(NamedTuple):
    """What the claim script answers for a cell this run now owns."""

    code: str
    stop_on_error: bool
    restore_pending: bool  # the notebook restarted with restore_on_restart: load its checkpoint first
    checkpoint_every_cell: bool
    epoch: str  # the pinning's epoch, which fences the cell's completion
    options: dict  # the execute_request's flags

    @classmethod
    def from_reply(cls, reply: list) -> "Claim":
        fields = {messages.as_text(reply[i]): messages.as_text(reply[i + 1]) for i in range(0, len(reply), 2)}
        return cls(fields["code"], fields["stop_on_error"] == "1", fields["restore_pending"] == "1",
                   fields["checkpoint_every_cell"] == "1", fields["epoch"],
                   json.loads(fields["options"]) if fields["options"] else {})

# KEYS: cell, notebook, worker, pending.  ARGV: cell id, worker id, now (epoch s), now (ISO), claim
# token.  Moves a queued cell of this worker's notebook to running under the claim token (the
# worker id and a fresh attempt id: only this run may complete it); returns the claim as
# name/value pairs (Claim: code, stop_on_error, restore_pending, checkpoint_every_cell, epoch, options).  Fenced: only while the notebook is pinned to
# this worker in the epoch it was pinned in (a worker given up while its host was unreachable,
# coming back, claims nothing).  Repeating a claim that reached Redis (its answer was lost with
# the connection) returns the same answer: the cell is running under this very token.
_CLAIM_LUA = """
local state, claim = unpack(redis.call('HMGET', KEYS[1], 'state', 'claim'))
local again = state == 'running' and claim == ARGV[5]
if state ~= 'queued' and not again then return false end
if redis.call('HGET', KEYS[2], 'worker') ~= ARGV[2] then return false end
local epoch = redis.call('HGET', KEYS[2], 'epoch') or ''
if epoch ~= (redis.call('HGET', KEYS[3], 'epoch') or '') then return false end
if not again then
  local restore = redis.call('HGET', KEYS[2], 'restore_pending') or ''
  redis.call('HSET', KEYS[1], 'state', 'running', 'started', ARGV[4], 'claim', ARGV[5], 'claim_restore', restore)
  redis.call('LREM', KEYS[4], 1, ARGV[1])
  redis.call('HSET', KEYS[2], 'state', 'busy', 'last_activity', ARGV[3])
  redis.call('HSET', KEYS[3], 'cell', ARGV[1], 'cell_started', ARGV[3])
  redis.call('HDEL', KEYS[2], 'restore_pending')
end
local cell = redis.call('HMGET', KEYS[1], 'code', 'stop_on_error', 'claim_restore', 'options')
local every = redis.call('HGET', KEYS[2], 'checkpoint_every_cell')
return {'code', cell[1] or '', 'stop_on_error', cell[2] or '', 'restore_pending', cell[3] or '',
        'checkpoint_every_cell', every or '', 'epoch', epoch, 'options', cell[4] or ''}
"""

# Publish a running cell's live messages, only while it runs under this run's claim and its
# notebook is still in the epoch of the claim (fenced: a run that was given up publishes nothing).
# KEYS: cell, notebook, feed seq, feed stream.  ARGV: claim token, epoch, feed channel, stream
# maxlen, then the messages (feed.message_argv).  Returns the count published, or false.
_PUBLISH_LIVE_LUA = feed.PUBLISH_LUA_FUNCTION + """
local state, claim = unpack(redis.call('HMGET', KEYS[1], 'state', 'claim'))
if state ~= 'running' or claim ~= ARGV[1] then return false end
if (redis.call('HGET', KEYS[2], 'epoch') or '') ~= ARGV[2] then return false end
return publish_messages(KEYS[3], KEYS[4], ARGV[3], ARGV[4], ARGV, 5, nil)
"""

# Finish a cell in one atomic step: write its record, count it, free the worker, publish its last
# messages, and attach the record to the execute_reply entry when it is small (a caller waiting on
# the stream then needs no second read).  It acts only while the cell is running under this run's
# claim token: a retry of a call that did reach Redis, or a cell that someone else ended meanwhile
# (failed by a supervisor, a restart; deleted), writes, counts and publishes nothing and returns
# {'ended', state, status} instead of the number of messages published.  KEYS: cell, notebook,
# worker, cells-by-status, latency histogram, feed seq, feed stream.  ARGV: worker id, now,
# execution count, status, latency bucket, seconds, feed channel, stream maxlen, largest record to
# attach (bytes), claim token, cell id, the claim's epoch, n, n field/value pairs of the record,
# then the messages (feed.message_argv).  Fenced as the claim is: a notebook re-homed since (its
# epoch moved on) is not written for, {'fenced', ...} is returned.
_COMPLETE_LUA = feed.PUBLISH_LUA_FUNCTION + metrics.RECORD_CELL_LUA_FUNCTION + """
if redis.call('HGET', KEYS[3], 'cell') == ARGV[11] then
  redis.call('HSET', KEYS[3], 'cell', '', 'cell_started', '')
end
local nb = redis.call('HMGET', KEYS[2], 'worker', 'state', 'epoch')
if nb[1] == ARGV[1] and nb[2] ~= 'deleting' then  -- the worker is free again, whoever ended the cell
  redis.call('HSET', KEYS[2], 'state', 'idle', 'last_activity', ARGV[2], 'execution_count', ARGV[3])
end
local state, status, claim = unpack(redis.call('HMGET', KEYS[1], 'state', 'status', 'claim'))
if state ~= 'running' or claim ~= ARGV[10] then
  return {'ended', state or '', status or ''}
end
if (nb[3] or '') ~= ARGV[12] then return {'fenced', state, status or ''} end
local n = tonumber(ARGV[13])
redis.call('HSET', KEYS[1], unpack(ARGV, 14, 13 + 2 * n))
record_cell(KEYS[4], KEYS[5], ARGV[4], ARGV[5], ARGV[6])
local record = redis.call('HGETALL', KEYS[1])
local size = 0
for _, v in ipairs(record) do size = size + #v end
local cell = nil
if size <= tonumber(ARGV[9]) then cell = cjson.encode(record) end
return publish_messages(KEYS[6], KEYS[7], ARGV[7], ARGV[8], ARGV, 14 + 2 * n, cell)
"""

# Publish messages outside the running cell (a comm's echo, a finished cell's thread output) only
# while the notebook is still pinned to this worker in the epoch of its last claim: a worker given
# up while its host was unreachable publishes nothing for a notebook that has moved on (the fence
# of _PUBLISH_LIVE_LUA, for what is no output of a running cell).  KEYS: notebook, feed seq, feed
# stream.  ARGV: worker id, epoch, feed channel, stream maxlen, then the messages
# (feed.message_argv).  Returns the count published, or false.
_PUBLISH_PINNED_LUA = feed.PUBLISH_LUA_FUNCTION + """
local nb = redis.call('HMGET', KEYS[1], 'worker', 'epoch')
if nb[1] ~= ARGV[1] or (nb[2] or '') ~= ARGV[2] then return false end
return publish_messages(KEYS[2], KEYS[3], ARGV[3], ARGV[4], ARGV, 5, nil)
"""

# Why the engine died, on the worker's record for its supervisor, unless the record is gone (its
# host was given up: a write would recreate a record nobody removes).  KEYS: worker.  ARGV: reason.
_RECORD_DEATH_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'died', ARGV[1])
return 1
"""

# Join the warm pool, unless this worker's record is gone (its host was given up while unreachable:
# its supervisor stops it).  KEYS: worker, idle set.  ARGV: worker id, pid.
_ANNOUNCE_IDLE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'state', 'idle', 'pid', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""

# a finished cell record up to this size rides on its execute_reply stream entry
ATTACH_RECORD_BYTES = 16 * 1024
TRUNCATED = "\n[taskkernel: output truncated, the cell exceeded {limit} bytes of output]\n"
# published at once (watchers see output live); the rest go out with the reply or a live flush
LIVE_TYPES = ("stream", "display_data", "update_display_data", "clear_output")
# what the worker takes from an engine during a cell (not execute_input: the worker announces the
# cell itself at the claim); the rich ones count against the cell's output limit
ENGINE_EVENTS = ("execute_result", "display_data", "update_display_data", "clear_output", "error")
CAPPED_TYPES = ("execute_result", "display_data", "update_display_data", "error")
# engine events that are no output of a cell: published live, under whatever parent they name
PARENTED_EVENTS = ("comm_open", "comm_msg", "comm_close", "input_request")
# A cell's start (busy, execute_input) is published when it has run this long, or with its first
# live output or its reply if that comes sooner: watchers see a long cell start at once, while a
# quick cell's whole story goes out in the one script that finishes it (one round trip fewer).
ANNOUNCE_AFTER_S = 0.002
FINAL_WRITE_RETRY_S = 300.0  # how long a finished cell waits for Redis to come back
REQUEUE_RETRY_S = 60.0  # how long a reconnected worker retries Redis to put back a lost task
# a namespace operation's answer is retried this long past its caller's not_after (api/variables.py
# waits START_GRACE_S beyond it for an operation started just in time)
CALL_ANSWER_GRACE_S = 2.0
REPLY_EXTRAS_BYTES = 1024 * 1024  # user_expressions and payload (pager text) an execute_reply may carry
EXIT_ENGINE_DIED = 70  # the worker's exit code when its engine died; the reason is on its record


class CellRun:
    """What one running cell has produced so far."""

    def __init__(self, notebook_id: str, cell_id: str, output_limit: int, started_s: float,
                 claim: str = "", epoch: str = ""):
        self.notebook_id, self.cell_id = notebook_id, cell_id
        self.claim, self.epoch = claim, epoch  # the fence: what this run may still write under
        self.started_s = started_s
        self.output_limit = output_limit
        self.output_bytes = 0
        self.truncated = False
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.outputs: list[dict] = []
        self.display_ids: dict[str, list[int]] = {}  # display id -> indices in outputs showing it
        self.clear_pending = False  # clear_output(wait=True): clear when the next output comes
        self.outbox: list[dict] = []
        self.error: dict | None = None
        # the cell has returned: what it still queues (the drained output) and whatever was not
        # flushed yet goes out with the reply, and no thread flushes it any more
        self.ended = threading.Event()

    def add_output(self, msg: dict) -> None:
        """Keep the output `msg` stands for, as nbclient and Jupyter front ends keep a cell's outputs:
        update_display_data replaces the data of the outputs showing its display id (and adds
        none), as does a new display with an id already shown; clear_output empties the outputs,
        at once or, with `wait`, when the next output arrives. stdout and stderr stay as printed."""
        msg_type = msg["header"]["msg_type"]
        display_id = messages.display_id_of(msg) if msg_type in messages.DISPLAY_TYPES else None
        if display_id:
            for index in self.display_ids.get(display_id, ()):
                self.outputs[index]["data"] = msg["content"]["data"]
                self.outputs[index]["metadata"] = msg["content"].get("metadata", {})
        if msg_type == "clear_output":
            if msg["content"].get("wait"):
                self.clear_pending = True
            else:
                self._clear()
            return
        output = messages.output_from_message(msg)
        if output is None:
            return
        if self.clear_pending:
            self._clear()
        if display_id:
            self.display_ids.setdefault(display_id, []).append(len(self.outputs))
        last = self.outputs[-1] if self.outputs else None
        if output["output_type"] == "stream" and last and last["output_type"] == "stream" \
                and last["name"] == output["name"]:
            last["text"] += output["text"]
        else:
            self.outputs.append(output)

    def _clear(self) -> None:
        self.outputs.clear()
        self.display_ids.clear()
        self.clear_pending = False


class Runtime:
    """Owns the engine of one worker process and the cell running in it."""

    def __init__(self, client: redis.Redis, engine: EngineProcess, capture: OutputCapture, *, worker_id: str,
                 output_limit: int, rpc_timeout_s: float = 10.0, stream_maxlen: int = 10_000,
                 checkpoints: CheckpointStore, files: FileService | None = None,
                 durability: Durability | None = None):
        self.redis = client
        self.engine = engine
        self.capture = capture
        self.worker_id = worker_id
        self.output_limit = output_limit
        self.rpc_timeout_s = rpc_timeout_s
        self.store = NotebookStore(client, stream_maxlen=stream_maxlen, durability=durability)
        self.checkpoints = checkpoints
        self.files = files  # the worker's file service: a checkpoint's files are archived through it
        engine.on_output_flush = capture.flush
        engine.on_death = self._on_engine_death
        engine.on_event = self._on_parented_event
        self._notebook_id = ""  # the notebook this worker last ran a cell of (for events between cells)
        self._notebook_epoch = ""  # that notebook's epoch at the claim: events between cells are fenced by it
        self._between_cells_bytes = 0  # what was published outside the running cell since it started
        self._gone = threading.Lock()
        self._budget_lock = threading.Lock()  # the running cell's output budget: pump and engine reader
        self._interrupt_lock = threading.Lock()  # an interrupt and the end of its cell, one at a time
        self._claiming = ""  # the cell being claimed and set up: an interrupt now is kept for it
        self._execution_count = 0  # the engine's, as its last reply said
        self.feed = self.store.feed
        self._claim = client.register_script(_CLAIM_LUA)
        self._publish_live = client.register_script(_PUBLISH_LIVE_LUA)
        self._announce_idle = client.register_script(_ANNOUNCE_IDLE_LUA)
        # in one step: an EXISTS then HINCRBY would recreate the record of a notebook deleted between
        self._count_dropped_script = client.register_script(
            "if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HINCRBY', KEYS[1], 'dropped_deliveries', 1) end")
        self._complete_script = client.register_script(_COMPLETE_LUA)
        self._publish_pinned = client.register_script(_PUBLISH_PINNED_LUA)
        self._run: CellRun | None = None
        self._publish_lock = threading.Lock()
        self._started_runs: queue.SimpleQueue[CellRun] = queue.SimpleQueue()
        self._workspace_of = ""  # the notebook whose cwd and env the engine has entered
        self._files_ready_for = ""  # the notebook whose restart hand-over of files was waited for
        self._comm_requests: queue.SimpleQueue[dict] = queue.SimpleQueue()

    # --- lifecycle -----------------------------------------------------------------------------

    def install_interrupt_handler(self) -> None:
        """SIGUSR2 to the worker (its supervisor's wall-time limit) interrupts the running cell."""
        signal.signal(signal.SIGUSR2, lambda signum, frame: self.interrupt())

    def announce_idle(self, engine_name: str, host_name: str, pid: int) -> None:
        """Join the warm pool: from now on an API may pin a notebook to this worker."""
        self._announce_idle(keys=[keys.worker(self.worker_id), keys.idle_workers(engine_name, host_name)],
                            args=[self.worker_id, pid])

    def serve_side_channel(self) -> threading.Thread:
        """Start the thread that answers complete/inspect/is_complete/interrupt during a cell."""
        thread = threading.Thread(target=self._side_channel_loop, name="taskkernel-rpc", daemon=True)
        thread.start()
        # comm messages wait for their widget's handler: on a thread of their own, in order, so a
        # slow callback holds up no completion or interrupt behind it
        threading.Thread(target=self._comm_loop, name="taskkernel-comms", daemon=True).start()
        return thread

    def _comm_loop(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2, signal.SIGINT, signal.SIGTERM})
        while True:
            self._answer(self._comm_requests.get())

    def announce_starts(self) -> threading.Thread:
        """Start the thread that publishes a cell's start once it has run ANNOUNCE_AFTER_S."""
        thread = threading.Thread(target=self._announce_loop, name="taskkernel-announce", daemon=True)
        thread.start()
        return thread

    def _announce_loop(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2, signal.SIGINT, signal.SIGTERM})
        while True:
            run = self._started_runs.get()
            if run.ended.wait(ANNOUNCE_AFTER_S):
                continue
            try:
                self._flush_outbox(run)
            except redis.RedisError as exc:  # the messages stay queued and go out with the reply
                log.warning("publishing the start of cell %s: %r", run.cell_id, exc)

    def _side_channel_loop(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2, signal.SIGINT, signal.SIGTERM})
        while True:
            try:
                request = rpc.next_request(self.redis, self.worker_id, timeout_s=rpc.MAX_BLOCK_S)
            except redis.RedisError as exc:
                log.warning("side channel: %r", exc)
                time.sleep(0.5)
                continue
            if request is not None and request.get("op") == "comm":
                self._comm_requests.put(request)
            elif request is not None:
                self._answer(request)

    def _answer(self, request: dict) -> None:
        op, args = request["op"], request.get("args", {})
        try:
            if op == "interrupt":
                result = self.interrupt()
            elif op in ("complete", "inspect", "is_complete"):
                fields = {"code": str(args["code"])}
                if op != "is_complete":
                    fields["cursor_pos"] = int(args["cursor_pos"])
                if op == "inspect":
                    fields["detail_level"] = int(args.get("detail_level", 0))
                result = self.engine.request(op, timeout_s=self.rpc_timeout_s, **fields)[0]
            elif op in ("comm", "comm_info", "input_reply"):
                result = self._deliver(op, args)
            elif op == "ping":
                result = {"worker": self.worker_id, "running": self._run.cell_id if self._run else None}
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception as exc:
            rpc.answer(self.redis, request, error=f"{type(exc).__name__}: {exc}")
        else:
            rpc.answer(self.redis, request, result=result)

    def _deliver(self, op: str, args: dict) -> dict:
        """A front end's comm message, comm_info request or input value, to the engine at once
        (it takes them even while a cell runs)."""
        self._notebook_id = str(args.get("notebook_id") or self._notebook_id)
        if op == "comm_info":
            fields = {"target_name": args["target_name"]} if args.get("target_name") else {}
            return self.engine.request("comm_info", timeout_s=self.rpc_timeout_s, **fields)[0]
        if op == "input_reply":
            return self.engine.request("input_reply", timeout_s=self.rpc_timeout_s, value=str(args["value"]))[0]
        buffers = messages.decode_buffers(args.get("buffers") or [])
        parent = {"msg_id": str(args["msg_id"]), "msg_type": str(args["msg_type"])}
        self.engine.request("comm", timeout_s=self.rpc_timeout_s, msg_type=str(args["msg_type"]),
                            content=args.get("content") or {}, metadata=args.get("metadata") or {}, parent=parent,
                            buffers=buffers)
        return {"msg_id": parent["msg_id"]}

    def _on_parented_event(self, event: dict, buffers: list[bytes]) -> None:
        """An engine event that names its parent (engine reader thread): the running cell's joins
        the cell (its outputs, its cap); another request's (a comm message's, a finished cell's
        thread's) is published at once under that parent, never kept in another cell's record."""
        msg_type, content = str(event.get("event")), event.get("content") or {}
        parent = event.get("parent") or {}
        metadata = event.get("metadata") if isinstance(event.get("metadata"), dict) else {}
        run = self._run
        if msg_type not in ENGINE_EVENTS and msg_type not in PARENTED_EVENTS and msg_type != "stream":
            return
        if run is not None and parent.get("msg_id") in (None, run.cell_id):
            if msg_type in PARENTED_EVENTS:  # comms and input requests: live, no output of the cell
                size = len(json.dumps(content, default=repr)) + sum(len(b) for b in buffers)
                with self._budget_lock:  # but within its output limit, as everything the cell makes
                    if run.truncated or run.output_bytes + size > run.output_limit:
                        self._truncate(run)
                        return
                    run.output_bytes += size
                msg = messages.make_message(msg_type, content, notebook_id=run.notebook_id, cell_id=run.cell_id,
                                            buffers=buffers)
                msg["metadata"] = metadata  # ipywidgets' protocol version rides on its comm_open here
                with self._publish_lock:
                    run.outbox.append(msg)
                self._flush_outbox(run)
            else:
                self._on_message(msg_type, content)
            return
        notebook_id = self._notebook_id
        if not notebook_id or not parent.get("msg_id") and msg_type not in PARENTED_EVENTS:
            if msg_type == "stream":
                log.info("engine output outside a cell: %s", str(content.get("text"))[:2000])
            return
        if msg_type == "stream" and content.get("name") not in ("stdout", "stderr"):
            return
        size = len(json.dumps(content, default=repr)) + sum(len(b) for b in buffers)
        with self._budget_lock:  # outside the running cell: one output limit's worth until the next starts
            room = self.output_limit - self._between_cells_bytes
            if room <= 0:
                return
            if size > room:
                self._between_cells_bytes = self.output_limit
                if msg_type != "stream":
                    return
                text = str(content.get("text", "")).encode("utf-8", "replace")[:room].decode("utf-8", "ignore")
                content = {**content, "text": text + TRUNCATED.format(limit=self.output_limit)}
            else:
                self._between_cells_bytes += size
        msg = messages.make_message(msg_type, content, notebook_id=notebook_id, cell_id=parent.get("msg_id"),
                                    parent_type=str(parent.get("msg_type") or "execute_request"), buffers=buffers)
        msg["metadata"] = metadata
        try:
            self._publish_between_cells(notebook_id, msg)
        except redis.RedisError as exc:
            log.warning("publishing a %s outside the running cell: %r", msg_type, exc)

    def _publish_between_cells(self, notebook_id: str, msg: dict) -> bool:
        """Publish `msg` of `notebook_id` outside its running cell, fenced (_PUBLISH_PINNED_LUA);
        returns False when the notebook is no longer this worker's in that epoch."""
        published = self._publish_pinned(
            keys=[keys.notebook(notebook_id), keys.feed_seq(notebook_id), keys.feed_stream(notebook_id)],
            args=[self.worker_id, self._notebook_epoch, keys.feed_channel(notebook_id), self.feed.maxlen,
                  *feed.message_argv([msg])])
        if published is None:
            log.info("notebook %s is no longer this worker's: its %s is dropped", notebook_id,
                     msg["header"]["msg_type"], extra={"notebook_id": notebook_id})
            return False
        return True

    def interrupt(self) -> dict:
        """Raise KeyboardInterrupt in the running cell; a no-op when none runs."""
        with self._interrupt_lock:  # the cell cannot end (and the next begin) meanwhile
            run = self._run
            cell_id = run.cell_id if run is not None else self._claiming
            if not cell_id:
                return {"interrupted": None}
            # a cell claimed but not yet sent to the engine (its record already says running): the
            # engine keeps the interrupt and sends the cell's execute out interrupted
            self.engine.interrupt()
        return {"interrupted": cell_id}

    # --- one cell ------------------------------------------------------------------------------

    def run_cell(self, cell_id: str, notebook_id: str) -> str:
        """Run a queued cell; returns its status, or "skipped" when it was not ours to run."""
        if self._files_ready_for != notebook_id:  # the first cell here: a restart's files arrive first
            files.wait_for_handover(self.redis, notebook_id)
            self._files_ready_for = notebook_id
        now = time.time()
        claim = f"{self.worker_id}:{secrets.token_hex(8)}"
        with self._interrupt_lock:  # from the claim on, the cell is seen running: an interrupt is kept
            self._claiming = cell_id
        try:
            claimed = self._claim_cell(cell_id, notebook_id, now, claim)
        except BaseException:
            self._not_claiming()
            raise
        if not claimed:
            self._not_claiming()
            log.info("cell %s of notebook %s not run: already started, aborted or not ours", cell_id, notebook_id,
                     extra={"notebook_id": notebook_id, "cell_id": cell_id})
            self._count_dropped(notebook_id)
            return "skipped"
        try:
            claimed = Claim.from_reply(claimed)
            code, stop_on_error, options = claimed.code, claimed.stop_on_error, claimed.options
            context = {"notebook_id": notebook_id, "cell_id": cell_id}
            log.debug("cell started", extra=context)
            if self._workspace_of != notebook_id:
                self._enter_workspace(notebook_id)
            if claimed.restore_pending:
                self._restore_after_restart(notebook_id)
            run = self._run = CellRun(notebook_id, cell_id, self.output_limit, now, claim, claimed.epoch)
        except BaseException:
            self._not_claiming()
            raise
        self._notebook_id, self._notebook_epoch = notebook_id, run.epoch
        with self._budget_lock:
            self._between_cells_bytes = 0
        self._queue("status", {"execution_state": "busy"})
        # announced here, not by the engine: a long cell is seen starting at once, and a quick
        # one's events come back in the one frame that carries its reply
        if not options.get("silent"):
            self._queue("execute_input", {"code": code, "execution_count": self._execution_count + 1})
        self._started_runs.put(run)
        self.capture.begin(self._on_output)
        death = ""
        try:
            reply = _reply_content(self.engine.request(
                "execute", code=code, on_event=self._on_message, options=options,
                parent={"msg_id": cell_id, "msg_type": "execute_request"})[0])
        except EngineDied as exc:
            death = str(exc)
            reply = self._died_in_cell(run, death)
        finally:
            run.ended.set()
            self.capture.end()
            with self._interrupt_lock:
                self._run, self._claiming = None, ""
                self.engine.disarm_interrupt()
        if isinstance(reply.get("execution_count"), int):
            self._execution_count = reply["execution_count"]
        # logged before the reply goes out: whoever sees the reply (and deletes the notebook, say)
        # can count on the log line being written
        log.info("cell %s: %s", reply["status"], reply.get("ename", ""), extra=context)
        if death:
            self._end_after_death(run, reply, claim, death)  # does not return
        if not self._complete(run, reply, claim):
            return reply["status"]  # someone else ended the cell: its queue and checkpoint are not ours
        if reply["status"] == "error" and stop_on_error:
            self.store.abort_pending(notebook_id, reason="a cell sent with stop_on_error failed")
        if claimed.checkpoint_every_cell:
            try:
                self._checkpoint(notebook_id)
            except Exception as exc:  # a failed checkpoint must not fail the cell that ran
                log.warning("checkpoint after cell %s failed: %r", cell_id, exc)
        return reply["status"]

    def _not_claiming(self) -> None:
        """The cell being claimed will not run here: an interrupt kept for it must reach no other."""
        with self._interrupt_lock:
            self._claiming = ""
            self.engine.disarm_interrupt()

    def _died_in_cell(self, run: CellRun, death: str) -> dict:
        """The reply of a cell whose engine died under it."""
        error = messages.error_content(messages.ENGINE_DIED,
                                       f"{death}; the notebook's namespace was lost and a fresh worker was started",
                                       [f"{messages.ENGINE_DIED}: {death}"])
        self.capture.flush()
        self._queue("error", error)
        run.error = error
        return {"status": "error", "execution_count": None, **error}

    def _end_after_death(self, run: CellRun, reply: dict, claim: str, death: str) -> None:
        """Answer the cell the engine died under and end this worker: new cells wait for the next
        worker (detach first), then this cell's reply, then the queue is aborted and a fresh worker pinned."""
        try:
            detached = self.store.detach(run.notebook_id, self.worker_id)
            self._complete(run, reply, claim)
            if detached:
                self.store.finish_restart(run.notebook_id, detached, reason=death, running_cell="")
        finally:
            self._engine_gone(death)

    def _on_engine_death(self, reason: str) -> None:
        """The engine died between cells (or before the first): leave; the supervisor restarts the notebook."""
        if self._run is None:
            self._engine_gone(reason)

    def _engine_gone(self, reason: str) -> None:
        """Record why the engine died (for the supervisor's restart) and end this worker at once."""
        if not self._gone.acquire(blocking=False):
            self._gone.acquire()  # another thread is ending this worker: nothing returns from here
        log.warning("engine of worker %s died: %s", self.worker_id, reason)
        try:
            record_death(self.redis, self.worker_id, reason)
        except redis.RedisError:
            pass
        os._exit(EXIT_ENGINE_DIED)

    # --- namespace operations (push, pull, checkpoint, restore) ---------------------------------

    def run_call(self, notebook_id: str, op: str, args: dict, reply_key: str) -> None:
        """Perform a namespace operation queued behind the notebook's cells; answer on `reply_key`.

        Its message is off the queue: a Redis failure in the ownership check or the answer is
        retried (as a claim is) while its caller may still be waiting, rather than losing the call.
        """
        request = {"reply": reply_key}
        not_after = float(args["not_after"]) if args.get("not_after") is not None else None
        wait_until = (not_after + CALL_ANSWER_GRACE_S) if not_after is not None else time.time() + FINAL_WRITE_RETRY_S

        def answer(**outcome) -> None:
            _while_redis_fails(lambda: rpc.answer(self.redis, request, **outcome), f"answering {op}", wait_until)

        if not_after is not None and time.time() > not_after:
            answer(error=f"{op} was not started: its caller stopped waiting", code="expired")
            log.info("%s for notebook %s not started: its caller stopped waiting", op, notebook_id)
            return
        worker = _while_redis_fails(lambda: self.redis.hget(keys.notebook(notebook_id), "worker"),
                                    f"starting {op}", wait_until)
        if worker is None or worker.decode() != self.worker_id:
            answer(error="the notebook moved to another worker", code="notebook_gone")
            return
        try:
            if op == "push":
                blob = [base64.b64decode(args["dill"])] if args.get("dill") is not None else []
                result = self.engine.request("push", name=str(args["name"]), value=args.get("value"),
                                             buffers=blob)[0]
            elif op == "pull":
                result, blobs = self.engine.request("pull", name=str(args["name"]), dill=bool(args.get("dill")))
                if blobs:
                    result["dill"] = base64.b64encode(blobs[0]).decode()
            elif op == "checkpoint":
                result = self._checkpoint(notebook_id, include_files=bool(args.get("include_files")))
            elif op == "restore":
                result = self._restore(notebook_id, include_files=bool(args.get("include_files")))
            else:
                raise EngineRefused(f"unknown operation {op!r}", "bad_request")
        except EngineRefused as exc:
            answer(error=exc.message, code=exc.code)
        except Exception as exc:
            answer(error=f"{type(exc).__name__}: {exc}", code="operation_failed")
        else:
            answer(result=result)

    def _checkpoint(self, notebook_id: str, include_files: bool = False) -> dict:
        """Have the engine pickle its namespace, and keep the bytes where only this notebook's workers
        look; with `include_files`, the notebook's directory too (archived first: a checkpoint whose
        files cannot be saved, past the notebook's cap say, is not taken, the last one stays)."""
        started = time.perf_counter()
        staged, files_report = None, None
        if include_files:
            staged, files_report = self._archive_files(notebook_id)
        try:
            meta, blobs = self.engine.request("checkpoint")
            names = meta.pop("names")
            meta["created"] = time.time()
            where = self.checkpoints.write(notebook_id, dict(zip(names, blobs)), meta)
            if staged is not None:
                files_report["store"] = self.checkpoints.commit_files(notebook_id, staged)
                staged = None
        finally:
            if staged is not None:
                staged.unlink(missing_ok=True)
        return {**meta, "bytes": sum(len(b) for b in blobs), "store": where, "files": files_report,
                "seconds": round(time.perf_counter() - started, 6)}

    def _archive_files(self, notebook_id: str):
        """The notebook's directory archived by the file helper (as the engine's user) into a staged
        file of the checkpoint store; (its path, the helper's report). Raises EngineRefused."""
        if self.files is None:
            raise EngineRefused("this worker keeps no files", "not_supported")
        try:
            fd, staged = self.checkpoints.stage_files(notebook_id)
        except OSError as exc:
            raise EngineRefused(f"the checkpoint's files have nowhere to go: {exc}", "not_supported") from None
        try:
            reply = self.files.archive(fd)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        if not reply.pop("ok", False):
            staged.unlink(missing_ok=True)
            raise EngineRefused(f"the notebook's files were not saved: {reply.get('error')}",
                                reply.get("code") or "operation_failed")
        return staged, reply

    def _restore(self, notebook_id: str, include_files: bool = False) -> dict:
        """Load the last checkpoint's namespace; with `include_files`, first replace the directory's
        contents with the files saved by the last checkpoint taken with them. Without it the
        directory is left as it is."""
        blobs = self.checkpoints.read(notebook_id)
        if blobs is None:
            raise EngineRefused("the notebook has no checkpoint to restore", "no_checkpoint")
        files_report = None
        if include_files:
            files_report = self._restore_files(notebook_id)
        names = list(blobs)
        result = self.engine.request("restore", names=names, buffers=[blobs[n] for n in names])[0]
        return {**result, "files": files_report}

    def _restore_files(self, notebook_id: str) -> dict:
        fd = self.checkpoints.open_files(notebook_id) if self.files is not None else None
        if fd is None:
            raise EngineRefused("the notebook's checkpoints hold no files here: take one with include_files "
                                "(with checkpoints in Redis, a checkpoint's files stay on the host that took it)",
                                "no_checkpoint")
        try:
            reply = self.files.extract(fd)
        finally:
            os.close(fd)
        if not reply.pop("ok", False):
            raise EngineRefused(f"the checkpoint's files were not restored: {reply.get('error')}",
                                reply.get("code") or "operation_failed")
        if self._workspace_of == notebook_id:
            self._enter_workspace(notebook_id)  # its working directory may have been replaced
        return reply

    def _enter_workspace(self, notebook_id: str) -> None:
        """Before a notebook's first cell on this worker: the engine enters the notebook's working
        directory and adds its environment (taskkernel/workspace.py); a failure is logged, and the
        cell runs in the private home."""
        self._workspace_of = notebook_id
        cwd, env = workspace.decode(self.redis.hget(keys.notebook(notebook_id), workspace.RECORD_FIELD))
        if not cwd and not env:
            return
        try:
            self.engine.request("workspace", cwd=cwd, env=env)
        except (EngineRefused, EngineDied, TimeoutError, OSError) as exc:  # a death shows in the cell
            log.warning("notebook %s: could not enter its workspace: %r", notebook_id, exc,
                        extra={"notebook_id": notebook_id})

    def _restore_after_restart(self, notebook_id: str) -> None:
        """A notebook restarted after a death asked for its last checkpoint: load it before its next cell."""
        try:
            result = self._restore(notebook_id)
            log.info("restored %d variables of notebook %s", len(result["restored"]), notebook_id)
        except Exception as exc:
            log.warning("restore of notebook %s failed: %r", notebook_id, exc)

    def _claim_cell(self, cell_id: str, notebook_id: str, now: float, claim: str) -> list | None:
        """Claim a cell to run under `claim`; its fields, or None when it is not ours to run."""
        deadline = time.monotonic() + FINAL_WRITE_RETRY_S
        while True:  # the message is off the queue: if Redis is away, the cell waits for it, not lost
            try:
                return self._claim(
                    keys=[keys.cell(cell_id), keys.notebook(notebook_id), keys.worker(self.worker_id),
                          keys.notebook_pending(notebook_id)],
                    args=[cell_id, self.worker_id, now, messages.now_iso(), claim],
                )
            except redis.RedisError as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("claiming cell %s: Redis is unavailable (%r); retrying", cell_id, exc)
                time.sleep(0.5)

    def requeue_lost(self, task_message) -> str | None:
        """Put back the task of this worker's oldest queued cell when its broker connection lost it
        (NotebookStore.requeue_lost; `task_message(cell_id, notebook_id)` builds it), before the
        connection consumes again. Returns that cell's id, or None. Redis is retried for a while:
        the connection that lost the message is usually lost because Redis went away."""
        deadline = time.monotonic() + REQUEUE_RETRY_S
        while True:
            try:
                cell_id = self.store.requeue_lost(self.worker_id, task_message)
                break
            except redis.RedisError as exc:
                if time.monotonic() > deadline:
                    log.warning("looking for a task message lost with the broker connection: %r", exc)
                    return None
                time.sleep(0.5)
        if cell_id:
            log.warning("cell %s was queued but its task message was lost with the broker connection: queued again",
                        cell_id, extra={"cell_id": cell_id})
        return cell_id

    def _count_dropped(self, notebook_id: str) -> None:
        """Count deliveries dropped by the claim (redeliveries), for the notebook's record."""
        self._count_dropped_script(keys=[keys.notebook(notebook_id)])

    def _on_message(self, msg_type: str, content: dict) -> None:
        """An event of the running cell, from the engine (its reader thread): keep it within the limit."""
        run = self._run
        if run is None:
            return
        if msg_type == "stream":
            name = "stdout" if content.get("name") == "stdout" else "stderr"
            self._on_output(name, str(content.get("text", "")))
            return
        if msg_type == "oversized":  # a frame beyond what the worker reads: it was thrown away
            with self._budget_lock:
                self._truncate(run)
            return
        if msg_type not in ENGINE_EVENTS:
            return
        if msg_type in CAPPED_TYPES:
            size = len(json.dumps(content, default=repr))
            with self._budget_lock:
                if run.truncated or run.output_bytes + size > run.output_limit:
                    self._truncate(run)
                    return
                run.output_bytes += size
        if msg_type == "error":
            content = {"ename": str(content.get("ename", "")), "evalue": str(content.get("evalue", "")),
                       "traceback": [str(line) for line in content.get("traceback") or []]}
            run.error = content
        self._queue(msg_type, content)
        if msg_type in LIVE_TYPES:
            self._flush_outbox(run)

    def _on_output(self, name: str, text: str) -> None:
        """Captured text (from the pump thread or a drain): keep it, within the limit, and stream it."""
        run = self._run
        if run is None:
            return
        with self._budget_lock:
            if run.truncated:
                return
            size = len(text.encode("utf-8", "replace"))
            if run.output_bytes + size > run.output_limit:
                room = max(0, run.output_limit - run.output_bytes)
                text = text.encode("utf-8", "replace")[:room].decode("utf-8", "ignore")
                text += TRUNCATED.format(limit=run.output_limit)
                run.truncated = True
            run.output_bytes += size
        (run.stdout if name == "stdout" else run.stderr).append(text)
        self._queue("stream", {"name": name, "text": text})
        self._flush_outbox(run)

    def _truncate(self, run: CellRun) -> None:
        """Stop keeping the cell's output, saying so once (call with the budget lock held)."""
        if run.truncated:
            return
        run.truncated = True
        run.output_bytes = run.output_limit
        notice = TRUNCATED.format(limit=run.output_limit)
        run.stderr.append(notice)
        self._queue("stream", {"name": "stderr", "text": notice})

    def _queue(self, msg_type: str, content: dict) -> None:
        run = self._run
        msg = messages.make_message(msg_type, content, notebook_id=run.notebook_id, cell_id=run.cell_id)
        with self._publish_lock:
            run.add_output(msg)
            run.outbox.append(msg)

    def _flush_outbox(self, run: CellRun) -> None:
        """Publish what the cell has queued so far (from any thread), unless it has returned."""
        with self._publish_lock:
            if run.ended.is_set() or not run.outbox:
                return
            pending, run.outbox = run.outbox, []
            try:
                published = self._publish_live(
                    keys=[keys.cell(run.cell_id), keys.notebook(run.notebook_id), keys.feed_seq(run.notebook_id),
                          keys.feed_stream(run.notebook_id)],
                    args=[run.claim, run.epoch, keys.feed_channel(run.notebook_id), self.feed.maxlen,
                          *feed.message_argv(pending)])
                if published is None:
                    log.info("cell %s was ended elsewhere: its live output is dropped", run.cell_id)
            except redis.RedisError:
                run.outbox = pending + run.outbox  # published with the reply once Redis is back
                raise

    def _complete(self, run: CellRun, reply: dict, claim: str) -> bool:
        """Write the finished cell and publish its last messages in one script (one round trip).

        `claim` is the token `run_cell` claimed the cell with. Returns False when the cell was no
        longer running under it (someone else ended it, or this is the retry of a call that had
        reached Redis): then nothing was written or published, so a cell ends exactly once.
        Retries while Redis is unavailable, up to FINAL_WRITE_RETRY_S, then raises the RedisError.
        """
        count = reply.get("execution_count")
        nb, cid = run.notebook_id, run.cell_id
        with self._publish_lock:  # a flush under way finishes first: the feed keeps its order
            outbox, run.outbox = run.outbox, []
        final = outbox + [
            messages.make_message("execute_reply", reply, notebook_id=nb, cell_id=cid),
            messages.status("idle", notebook_id=nb, cell_id=cid),
        ]
        record = messages.cell_to_redis({
            "state": CellState.DONE.value,
            "status": reply["status"],
            "execution_count": count,
            "stdout": "".join(run.stdout),
            "stderr": "".join(run.stderr),
            "outputs": run.outputs,
            "error": run.error,
            "completed": messages.now_iso(),
        })
        finished = time.time()
        seconds = max(0.0, finished - run.started_s)
        args = [self.worker_id, finished, count or 0, reply["status"], metrics.latency_bucket(seconds), seconds,
                keys.feed_channel(nb), self.feed.maxlen, ATTACH_RECORD_BYTES, claim, cid, run.epoch, len(record),
                *messages.hash_pairs(record), *feed.message_argv(final)]
        script_keys = [keys.cell(cid), keys.notebook(nb), keys.worker(self.worker_id), keys.METRICS_CELLS,
                       keys.METRICS_CELL_SECONDS, keys.feed_seq(nb), keys.feed_stream(nb)]
        deadline = time.monotonic() + FINAL_WRITE_RETRY_S
        retried = False
        while True:
            try:
                got = self.store.durability.run(self.redis, self._complete_script, script_keys, args)
                break
            except redis.RedisError as exc:
                # the cell ran: keep its result until Redis is back rather than lose it (the claim
                # makes a retry of a call that did run a no-op)
                if time.monotonic() > deadline:
                    raise
                log.warning("cell %s finished but Redis is unavailable (%r); retrying", cid, exc)
                retried = True
                time.sleep(0.5)
        if isinstance(got, list):
            state, status = (messages.as_text(x) for x in got[1:3])
            if got[0] == b"fenced":
                log.warning("cell %s finished but its notebook was re-homed meanwhile: not written", cid,
                            extra={"notebook_id": nb, "cell_id": cid})
            elif retried and state == CellState.DONE and status == reply["status"]:
                log.info("cell %s: completed by an earlier try whose answer was lost", cid,
                         extra={"notebook_id": nb, "cell_id": cid})
            else:
                log.warning("cell %s finished %s but was already ended (state %r, status %r): not written",
                            cid, reply["status"], state, status, extra={"notebook_id": nb, "cell_id": cid})
            return False
        return True


def _while_redis_fails(call, what: str, until_epoch_s: float):
    """`call()`, repeated every 0.5 s while Redis fails, until the wall clock passes `until_epoch_s`
    (then the RedisError is raised)."""
    while True:
        try:
            return call()
        except redis.RedisError as exc:
            if time.time() > until_epoch_s:
                raise
            log.warning("%s: Redis is unavailable (%r); retrying", what, exc)
            time.sleep(0.5)


def record_death(client: redis.Redis, worker_id: str, reason: str) -> bool:
    """Say on the worker's record why its engine died (for its supervisor's restart); False, and
    nothing written, when the record is gone (its host was given up)."""
    return bool(client.register_script(_RECORD_DEATH_LUA)(keys=[keys.worker(worker_id)], args=[reason]))


def _reply_content(reply: dict) -> dict:
    """execute_reply content as the worker publishes it: only known fields, whatever the engine sent."""
    status = reply.get("status") if reply.get("status") in ("ok", "error", "aborted") else "error"
    count = reply.get("execution_count")
    content = {"status": status, "execution_count": count if isinstance(count, int) else None}
    if status == "ok":
        extra = {"user_expressions": reply.get("user_expressions") or {}, "payload": reply.get("payload") or []}
        if len(json.dumps(extra, default=repr)) > REPLY_EXTRAS_BYTES:  # never past the cell's caps this way
            extra = {"user_expressions": {}, "payload": []}
        content.update(extra)
    else:
        content.update(ename=str(reply.get("ename", ""))[:10_000], evalue=str(reply.get("evalue", ""))[:100_000],
                       traceback=[str(line)[:100_000] for line in (reply.get("traceback") or [])[:1000]])
    return content
