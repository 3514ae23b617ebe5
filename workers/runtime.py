"""One notebook's namespace in one worker process: runs a cell and publishes what it produces.

The runtime knows Redis (records and the feed) and the engine, but not Celery: the task layer
hands it a cell id. It claims the cell atomically (a cell already started or aborted is dropped,
so a redelivered Celery message never runs a cell twice), captures output at the fd level while
the engine runs, and writes the finished cell and its execute_reply in one Lua script.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time

import redis

from taskkernel import feed, keys, messages, metrics, rpc
from taskkernel.engines.base import Engine
from taskkernel.notebooks import NotebookStore
from taskkernel.workers import namespace
from taskkernel.workers.capture import OutputCapture

log = logging.getLogger("taskkernel.worker")

# KEYS: cell, notebook, worker, pending.  ARGV: cell id, worker id, now (epoch s), now (ISO).
# Moves a queued cell of this worker's notebook to running; returns {code, stop_on_error, notebook}.
_CLAIM_LUA = """
if redis.call('HGET', KEYS[1], 'state') ~= 'queued' then return false end
if redis.call('HGET', KEYS[2], 'worker') ~= ARGV[2] then return false end
redis.call('HSET', KEYS[1], 'state', 'running', 'started', ARGV[4])
redis.call('LREM', KEYS[4], 1, ARGV[1])
redis.call('HSET', KEYS[2], 'state', 'busy', 'last_activity', ARGV[3])
redis.call('HSET', KEYS[3], 'cell', ARGV[1], 'cell_started', ARGV[3])
local cell = redis.call('HMGET', KEYS[1], 'code', 'stop_on_error')
local nb = redis.call('HMGET', KEYS[2], 'restore_pending', 'checkpoint_every_cell')
redis.call('HDEL', KEYS[2], 'restore_pending')
return {cell[1], cell[2], nb[1] or '', nb[2] or ''}
"""

# Finish a cell in one atomic step: write its record, count it, free the worker, publish its last
# messages, and attach the record to the execute_reply entry when it is small (a caller waiting on
# the stream then needs no second read).  KEYS: cell, notebook, worker, cells-by-status, latency
# histogram, feed seq, feed stream.  ARGV: worker id, now, execution count, status, latency bucket,
# seconds, feed channel, stream maxlen, largest record to attach (bytes), n, n field/value pairs of
# the record, then the messages (feed.message_argv).
_COMPLETE_LUA = feed.PUBLISH_LUA_FUNCTION + metrics.RECORD_CELL_LUA_FUNCTION + """
local n = tonumber(ARGV[10])
redis.call('HSET', KEYS[1], unpack(ARGV, 11, 10 + 2 * n))
record_cell(KEYS[4], KEYS[5], ARGV[4], ARGV[5], ARGV[6])
redis.call('HSET', KEYS[3], 'cell', '', 'cell_started', '')
if redis.call('HGET', KEYS[2], 'worker') == ARGV[1] then
  redis.call('HSET', KEYS[2], 'state', 'idle', 'last_activity', ARGV[2], 'execution_count', ARGV[3])
end
local record = redis.call('HGETALL', KEYS[1])
local size = 0
for _, v in ipairs(record) do size = size + #v end
local cell = nil
if size <= tonumber(ARGV[9]) then cell = cjson.encode(record) end
return publish_messages(KEYS[6], KEYS[7], ARGV[7], ARGV[8], ARGV, 11 + 2 * n, cell)
"""

# a finished cell record up to this size rides on its execute_reply stream entry
ATTACH_RECORD_BYTES = 16 * 1024
TRUNCATED = "\n[taskkernel: output truncated, the cell exceeded {limit} bytes of output]\n"
# published at once (watchers see output live); the rest go out with the reply or a live flush
LIVE_TYPES = ("stream", "display_data")
# A cell's start (busy, execute_input) is published when it has run this long, or with its first
# live output or its reply if that comes sooner: watchers see a long cell start at once, while a
# quick cell's whole story goes out in the one script that finishes it (one round trip fewer).
ANNOUNCE_AFTER_S = 0.002
FINAL_WRITE_RETRY_S = 300.0  # how long a finished cell waits for Redis to come back


class CellRun:
    """What one running cell has produced so far."""

    def __init__(self, notebook_id: str, cell_id: str, output_limit: int, started_s: float):
        self.notebook_id, self.cell_id = notebook_id, cell_id
        self.started_s = started_s
        self.output_limit = output_limit
        self.output_bytes = 0
        self.truncated = False
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.outputs: list[dict] = []
        self.outbox: list[dict] = []
        self.error: dict | None = None
        # the cell has returned: what it still queues (the drained output) and whatever was not
        # flushed yet goes out with the reply, and no thread flushes it any more
        self.ended = threading.Event()

    def add_output(self, msg: dict) -> None:
        output = messages.output_from_message(msg)
        if output is None:
            return
        last = self.outputs[-1] if self.outputs else None
        if output["output_type"] == "stream" and last and last["output_type"] == "stream" \
                and last["name"] == output["name"]:
            last["text"] += output["text"]
        else:
            self.outputs.append(output)


class Runtime:
    """Owns the engine of one worker process and the cell running in it."""

    def __init__(self, client: redis.Redis, engine: Engine, capture: OutputCapture, *, worker_id: str,
                 output_limit: int, stream_maxlen: int = 10_000, checkpoint_dir: str = ""):
        self.redis = client
        self.engine = engine
        self.capture = capture
        self.worker_id = worker_id
        self.output_limit = output_limit
        self.store = NotebookStore(client, stream_maxlen=stream_maxlen)
        self.checkpoints = namespace.CheckpointStore(client, checkpoint_dir)
        self.feed = self.store.feed
        self._claim = client.register_script(_CLAIM_LUA)
        self._complete_script = client.register_script(_COMPLETE_LUA)
        self._run: CellRun | None = None
        self._publish_lock = threading.Lock()
        self._started_runs: queue.SimpleQueue[CellRun] = queue.SimpleQueue()
        self._main_thread = threading.main_thread().ident

    # --- lifecycle -----------------------------------------------------------------------------

    def install_interrupt_handler(self) -> None:
        """SIGUSR2 raises KeyboardInterrupt in the cell, and only while user code runs."""
        signal.signal(signal.SIGUSR2, self._on_interrupt)

    def _on_interrupt(self, signum, frame):
        if getattr(self.engine, "running_user_code", False):
            raise KeyboardInterrupt("interrupted by taskkernel")

    def announce_idle(self, engine_name: str, host_name: str, pid: int) -> None:
        """Join the warm pool: from now on an API may pin a notebook to this worker."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(keys.worker(self.worker_id), mapping={"state": "idle", "pid": pid})
        pipe.sadd(keys.idle_workers(engine_name, host_name), self.worker_id)
        pipe.execute()

    def serve_side_channel(self) -> threading.Thread:
        """Start the thread that answers complete/inspect/is_complete/interrupt during a cell."""
        thread = threading.Thread(target=self._side_channel_loop, name="taskkernel-rpc", daemon=True)
        thread.start()
        return thread

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
            if request is not None:
                self._answer(request)

    def _answer(self, request: dict) -> None:
        op, args = request["op"], request.get("args", {})
        try:
            if op == "interrupt":
                result = self.interrupt()
            elif op == "complete":
                result = self.engine.complete(args["code"], int(args["cursor_pos"]))
            elif op == "inspect":
                result = self.engine.inspect(args["code"], int(args["cursor_pos"]), int(args.get("detail_level", 0)))
            elif op == "is_complete":
                result = self.engine.is_complete(args["code"])
            elif op == "ping":
                result = {"worker": self.worker_id, "running": self._run.cell_id if self._run else None}
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception as exc:
            rpc.answer(self.redis, request, error=f"{type(exc).__name__}: {exc}")
        else:
            rpc.answer(self.redis, request, result=result)

    def interrupt(self) -> dict:
        """Raise KeyboardInterrupt in the running cell; a no-op when none runs."""
        run = self._run
        if run is None:
            return {"interrupted": None}
        signal.pthread_kill(self._main_thread, signal.SIGUSR2)
        return {"interrupted": run.cell_id}

    # --- one cell ------------------------------------------------------------------------------

    def run_cell(self, cell_id: str, notebook_id: str) -> str:
        """Run a queued cell; returns its status, or "skipped" when it was not ours to run."""
        now = time.time()
        claimed = self._claim(
            keys=[keys.cell(cell_id), keys.notebook(notebook_id), keys.worker(self.worker_id),
                  keys.notebook_pending(notebook_id)],
            args=[cell_id, self.worker_id, now, messages.now_iso()],
        )
        if not claimed:
            log.info("cell %s of notebook %s not run: already started, aborted or not ours", cell_id, notebook_id,
                     extra={"notebook_id": notebook_id, "cell_id": cell_id})
            self._count_dropped(notebook_id)
            return "skipped"
        code = claimed[0].decode()
        stop_on_error = claimed[1] == b"1"
        context = {"notebook_id": notebook_id, "cell_id": cell_id}
        log.debug("cell started", extra=context)
        if claimed[2] == b"1":
            self._restore_after_restart(notebook_id)
        run = self._run = CellRun(notebook_id, cell_id, self.output_limit, now)
        self._queue("status", {"execution_state": "busy"})
        self._started_runs.put(run)
        self.capture.begin(self._on_output)
        try:
            reply = self.engine.execute(code, self._on_message)
        finally:
            run.ended.set()
            self.capture.end()
            self._run = None
        # logged before the reply goes out: whoever sees the reply (and deletes the notebook, say)
        # can count on the log line being written
        log.info("cell %s: %s", reply["status"], reply.get("ename", ""), extra=context)
        self._complete(run, reply)
        if reply["status"] == "error" and stop_on_error:
            self.store.abort_pending(notebook_id, reason="a cell sent with stop_on_error failed")
        if claimed[3] == b"1":
            try:
                namespace.checkpoint(self.engine.namespace, self.checkpoints, notebook_id)
            except Exception as exc:  # a failed checkpoint must not fail the cell that ran
                log.warning("checkpoint after cell %s failed: %r", cell_id, exc)
        return reply["status"]

    # --- namespace operations (push, pull, checkpoint, restore) ---------------------------------

    def run_call(self, notebook_id: str, op: str, args: dict, reply_key: str) -> None:
        """Perform a namespace operation queued behind the notebook's cells; answer on `reply_key`."""
        request = {"reply": reply_key}
        worker = self.redis.hget(keys.notebook(notebook_id), "worker")
        if worker is None or worker.decode() != self.worker_id:
            rpc.answer(self.redis, request, error="the notebook moved to another worker", code="notebook_gone")
            return
        ns = getattr(self.engine, "namespace", None)
        try:
            if ns is None:
                raise namespace.NamespaceError("not_supported", "this engine has no Python namespace")
            if op == "push":
                result = namespace.push(ns, args["name"], value=args.get("value"), dill_b64=args.get("dill"))
            elif op == "pull":
                result = namespace.pull(ns, args["name"], as_dill=bool(args.get("dill")))
            elif op == "checkpoint":
                result = namespace.checkpoint(ns, self.checkpoints, notebook_id)
            elif op == "restore":
                result = namespace.restore(ns, self.checkpoints, notebook_id)
            else:
                raise namespace.NamespaceError("bad_request", f"unknown operation {op!r}")
        except namespace.NamespaceError as exc:
            rpc.answer(self.redis, request, error=str(exc), code=exc.code)
        except Exception as exc:
            rpc.answer(self.redis, request, error=f"{type(exc).__name__}: {exc}", code="operation_failed")
        else:
            rpc.answer(self.redis, request, result=result)

    def _restore_after_restart(self, notebook_id: str) -> None:
        """A notebook restarted after a death asked for its last checkpoint: load it before its next cell."""
        try:
            result = namespace.restore(self.engine.namespace, self.checkpoints, notebook_id)
            log.info("restored %d variables of notebook %s", len(result["restored"]), notebook_id)
        except Exception as exc:
            log.warning("restore of notebook %s failed: %r", notebook_id, exc)

    def _count_dropped(self, notebook_id: str) -> None:
        """Count deliveries dropped by the claim (redeliveries), for the notebook's record."""
        key = keys.notebook(notebook_id)
        if self.redis.exists(key):  # never recreate the record of a deleted notebook
            self.redis.hincrby(key, "dropped_deliveries", 1)

    def _on_message(self, msg_type: str, content: dict) -> None:
        run = self._run
        if run is None:
            return
        if msg_type == "error":
            run.error = {k: content[k] for k in ("ename", "evalue", "traceback")}
        if msg_type != "execute_input":
            self.capture.flush()  # what was printed before a result or display comes before it
        self._queue(msg_type, content)
        if msg_type in LIVE_TYPES:
            self._flush_outbox(run)

    def _on_output(self, name: str, text: str) -> None:
        """Captured text (from the pump thread or a drain): keep it, within the limit, and stream it."""
        run = self._run
        if run is None or run.truncated:
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
                self.feed.publish(run.notebook_id, *pending)
            except redis.RedisError:
                run.outbox = pending + run.outbox  # published with the reply once Redis is back
                raise

    def _complete(self, run: CellRun, reply: dict) -> None:
        """Write the finished cell and publish its last messages in one script (one round trip)."""
        count = reply.get("execution_count")
        nb, cid = run.notebook_id, run.cell_id
        with self._publish_lock:  # a flush under way finishes first: the feed keeps its order
            outbox, run.outbox = run.outbox, []
        final = outbox + [
            messages.make_message("execute_reply", reply, notebook_id=nb, cell_id=cid),
            messages.status("idle", notebook_id=nb, cell_id=cid),
        ]
        record = messages.cell_to_redis({
            "state": "done",
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
                keys.feed_channel(nb), self.feed.maxlen, ATTACH_RECORD_BYTES, len(record),
                *messages.hash_pairs(record), *feed.message_argv(final)]
        script_keys = [keys.cell(cid), keys.notebook(nb), keys.worker(self.worker_id), keys.METRICS_CELLS,
                       keys.METRICS_CELL_SECONDS, keys.feed_seq(nb), keys.feed_stream(nb)]
        deadline = time.monotonic() + FINAL_WRITE_RETRY_S
        while True:
            try:
                self._complete_script(keys=script_keys, args=args)
                return
            except redis.RedisError as exc:
                # the cell ran: keep its result until Redis is back rather than lose it
                if time.monotonic() > deadline:
                    raise
                log.warning("cell %s finished but Redis is unavailable (%r); retrying", cid, exc)
                time.sleep(0.5)
