"""GET /api/kernels/<id>/channels: Jupyter's kernel websocket on a taskkernel notebook.

shell: execute_request queues a cell (its outputs come back through the feed hub, hub.py);
complete / inspect / is_complete go to the worker's side channel, so they answer while a cell runs;
kernel_info and history (the notebook's cells) are answered here; comm_open/comm_msg/comm_close
and comm_info go to the engine's comms (also while a cell runs). Each non-execute request gets
busy and idle around it, on this websocket only (broadcasting them would tell the other front
ends that a running cell had gone idle). control: interrupt_request and shutdown_request (restart
or delete). stdin: input_reply answers the running cell's input().

A websocket holds no thread: it is a callback on the gateway's event loop and one entry in the hub.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import platform

import redis
import tornado.websocket

from taskkernel import __version__, messages, rpc
from taskkernel.engines import registry
from taskkernel.exceptions import BadRequest, SubmitUncertain, TaskkernelError
from taskkernel.gateway import framing
from taskkernel.gateway.app import Gateway, check_request, error_body, notebook_id_of, origin_allowed
from taskkernel.gateway.hub import KernelFeed, Request
from taskkernel.gateway.kernels import get_notebook, interrupt, restart

log = logging.getLogger("taskkernel.gateway")

HISTORY_SESSION = 1
# side-channel requests: msg_type -> (worker op, content fields it takes, the reply when it fails)
WORKER_REQUESTS = {
    "complete_request": ("complete", ("code", "cursor_pos"),
                         {"matches": [], "cursor_start": 0, "cursor_end": 0, "metadata": {}}),
    "inspect_request": ("inspect", ("code", "cursor_pos", "detail_level"), {"found": False, "data": {}, "metadata": {}}),
    "is_complete_request": ("is_complete", ("code",), {"status": "unknown"}),
}


def execute_options(content: dict) -> dict:
    """The execute_request flags the notebook's cell takes (see api/cells.py EXECUTE_OPTIONS), as
    Jupyter defines them; anything malformed is left out (the default)."""
    options = {name: content[name] for name in ("silent", "store_history", "allow_stdin")
               if isinstance(content.get(name), bool)}
    expressions = content.get("user_expressions")
    if isinstance(expressions, dict) and expressions and all(isinstance(v, str) for v in expressions.values()):
        options["user_expressions"] = expressions
    return options


class ChannelsHandler(tornado.websocket.WebSocketHandler):
    """One front end's websocket on one kernel."""

    def initialize(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.notebook_id = ""
        self.feed: KernelFeed | None = None
        self.engine = "python"
        self.shutting_down = False
        self._comm_order = asyncio.Lock()  # comm messages reach the engine in the order sent
        self._tasks: set[asyncio.Task] = set()  # requests being answered (the loop keeps weak references only)

    async def prepare(self) -> None:
        try:
            await check_request(self.gateway, self.request, self.path_kwargs.get("kernel_id"))
            self.notebook_id = notebook_id_of(self.path_kwargs["kernel_id"])
            self.engine = (await get_notebook(self.gateway, self.notebook_id))["engine"]
        except (TaskkernelError, redis.RedisError) as exc:  # answered before the upgrade, as JSON
            body, status = error_body(exc, 500)
            self.set_status(status)
            self.set_header("Content-Type", "application/json")
            self.finish(body)

    def check_origin(self, origin: str) -> bool:
        return origin_allowed(self.gateway.settings, origin, self.request.host)

    async def open(self, kernel_id: str) -> None:
        self.set_nodelay(True)
        self.feed = await self.gateway.hub.attach(self.notebook_id, self)

    def on_close(self) -> None:
        if self.feed is not None:
            self._spawn(self.gateway.hub.detach(self.notebook_id, self))

    def send(self, msg: dict) -> None:
        """Write a message to this front end; a closed socket drops it."""
        self.send_frame(framing.dump(msg))

    def send_frame(self, frame: str | bytes) -> None:
        try:
            self.write_message(frame, binary=isinstance(frame, bytes))
        except tornado.websocket.WebSocketClosedError:
            pass

    async def on_message(self, frame: str | bytes) -> None:
        """Execute requests are handled in arrival order (their cells queue in that order); the
        others run beside them, so an interrupt or a completion never waits for a submit."""
        try:
            msg = framing.parse(frame)
        except BadRequest as exc:
            log.info("kernel %s: dropped a malformed frame: %s", self.notebook_id, exc)
            return
        msg_type = msg["header"].get("msg_type", "")
        channel = msg.get("channel") or "shell"
        if channel == "shell" and msg_type == "execute_request":
            await self._execute_cell(msg)
        elif channel == "shell" and msg_type in messages.COMM_TYPES:
            self._spawn(self._comm(msg, msg_type))
        elif channel in ("shell", "control"):
            self._spawn(self._answer(msg, msg_type, channel))
        elif channel == "stdin" and msg_type == "input_reply":
            self._spawn(self._input_reply(msg))
        else:
            log.debug("kernel %s: %s on %s is not served", self.notebook_id, msg_type, channel)

    def _spawn(self, work) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _reply(self, msg: dict, msg_type: str, content: dict, channel: str = "shell") -> None:
        self.send(framing.jupyter_message(msg_type, content, msg["header"], channel, session=self.notebook_id))

    def _status(self, state: str, parent: dict) -> None:
        self.send(framing.jupyter_message("status", {"execution_state": state}, parent, "iopub",
                                          session=self.notebook_id))

    # --- execute ----------------------------------------------------------------------------

    async def _execute_cell(self, msg: dict) -> None:
        content = msg.get("content") or {}
        feed, gateway = self.feed, self.gateway
        done = asyncio.get_running_loop().create_future()
        feed.in_flight.add(done)
        try:
            submitted = await self._submit(str(content.get("code", "")), bool(content.get("stop_on_error", False)),
                                           execute_options(content))
            feed.requests[submitted.cell["id"]] = Request(msg["header"], self, bool(content.get("silent")))
        except (TaskkernelError, redis.RedisError) as exc:  # the cell was not queued: fail this request
            body, _ = error_body(exc, 500)
            error = messages.error_content(f"taskkernel.{body['error']}", body["message"])
            self._status("busy", msg["header"])
            self.send(framing.jupyter_message("error", error, msg["header"], "iopub", session=self.notebook_id))
            self._reply(msg, "execute_reply", {"status": "error", "execution_count": None, **error})
            self._status("idle", msg["header"])
        finally:
            done.set_result(None)
            feed.in_flight.discard(done)

    async def _submit(self, code: str, stop_on_error: bool, options: dict):
        """NotebookStore.submit: its script on the event loop's Redis client when the notebook has a
        worker (the common case: no thread hop); otherwise the store's own submit on a thread, which
        waits for a restarting notebook's worker or raises what the notebook's state means."""
        gateway = self.gateway
        task_message = functools.partial(gateway.messages.evaluate, notebook_id=self.notebook_id)
        call = gateway.store.submit_call(self.notebook_id, code, task_message, stop_on_error=stop_on_error,
                                         options=options)
        try:
            got = await gateway.store.durability.run_async(gateway.aredis, gateway.submit_script, call.keys, call.args)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise SubmitUncertain(f"Redis failed while cell {call.cell['id']} was being recorded ({exc})",
                                  notebook_id=self.notebook_id, cell_id=call.cell["id"]) from exc
        if got and got[0] not in (b"", b"="):
            return call.queued(got)
        return await gateway.run(gateway.store.submit, self.notebook_id, code, task_message,
                                 stop_on_error=stop_on_error, worker_timeout_s=gateway.settings.assign_timeout_s,
                                 options=options)

    # --- everything else ----------------------------------------------------------------------

    async def _answer(self, msg: dict, msg_type: str, channel: str) -> None:
        content = msg.get("content") or {}
        if not msg_type.endswith("_request"):
            log.debug("kernel %s: %s is not served", self.notebook_id, msg_type)
            return
        self._status("busy", msg["header"])
        try:
            reply = await self._serve(msg_type, content)
            self._reply(msg, msg_type.replace("_request", "_reply"), reply, channel)
        finally:
            self._status("idle", msg["header"])
            if msg_type == "shutdown_request" and not content.get("restart"):
                self.close(1000, "the kernel was shut down")

    async def _serve(self, msg_type: str, content: dict) -> dict:
        """The reply content of a shell or control request other than execute."""
        if msg_type == "interrupt_request":
            ok, _ = await self._guarded(interrupt(self.gateway, self.notebook_id))
            return {"status": "ok" if ok else "error"}
        if msg_type == "shutdown_request":
            restarting = bool(content.get("restart"))
            if not restarting:
                self.shutting_down = True  # this socket closes after its reply, not at the feed's "dead"
            work = restart(self.gateway, self.notebook_id) if restarting else \
                self.gateway.run(self.gateway.store.delete, self.notebook_id, reason="the kernel was shut down")
            ok, _ = await self._guarded(work)
            return {"status": "ok" if ok else "error", "restart": restarting}
        if msg_type in WORKER_REQUESTS:
            return await self._ask_worker(msg_type, content)
        if msg_type == "kernel_info_request":
            return self._kernel_info()
        if msg_type == "history_request":
            return (await self._guarded(self._history(content), {"status": "ok", "history": []}))[1]
        if msg_type == "comm_info_request":
            args = {"target_name": content["target_name"]} if isinstance(content.get("target_name"), str) else {}
            ok, reply = await self._guarded(self._worker_call("comm_info", args))
            return {"status": "ok", "comms": {}, **(reply or {})}
        return {"status": "error", "ename": "NotImplementedError", "evalue": f"{msg_type} is not served",
                "traceback": []}

    def kernel_gone(self) -> None:
        """The feed said the kernel is dead (deleted): close, unless this socket asked for it and
        still owes its reply."""
        if not self.shutting_down:
            self.close(1000, "the kernel was shut down")

    async def _guarded(self, work, fallback=None) -> tuple[bool, object]:
        """(True, `work`'s result), or (False, `fallback`) on a service error, logged: a front end
        asks these all the time and gets an answer, never a broken socket."""
        try:
            return True, await work
        except (TaskkernelError, redis.RedisError) as exc:
            log.warning("kernel %s: %r", self.notebook_id, exc)
            return False, fallback

    async def _worker_call(self, op: str, args: dict, wait_for_worker: bool = True) -> dict:
        """One side-channel call to the notebook's worker (waiting for a restarting notebook's)."""
        gateway = self.gateway

        def call():
            if wait_for_worker:
                notebook = gateway.store.wait_for_worker(self.notebook_id, gateway.settings.assign_timeout_s)
            else:
                notebook = gateway.store.get(self.notebook_id)
                if not notebook["worker"]:
                    return {}
            return rpc.call(gateway.redis, notebook["worker"]["id"], op, {"notebook_id": self.notebook_id, **args},
                            timeout_s=gateway.settings.rpc_timeout_s)

        return await gateway.run(call)

    async def _comm(self, msg: dict, msg_type: str) -> None:
        """A front end's comm_open / comm_msg / comm_close to the engine, in the order this socket sent
        them, between busy and idle as ipykernel handles them; what the comm's handler publishes has
        this message as parent (the hub maps it back to its header)."""
        content = msg.get("content") or {}
        if not isinstance(content.get("comm_id"), str) or \
                (msg_type == "comm_open" and not isinstance(content.get("target_name"), str)):
            log.info("kernel %s: dropped a %s without comm_id/target_name", self.notebook_id, msg_type)
            return
        self.feed.remember_comm(msg["header"])
        async with self._comm_order:
            self._status("busy", msg["header"])
            try:
                await self._guarded(self._worker_call("comm", {
                    "msg_type": msg_type, "content": content, "msg_id": msg["header"]["msg_id"],
                    "buffers": messages.encode_buffers(msg.get("buffers") or [])}))
            finally:
                self._status("idle", msg["header"])

    async def _input_reply(self, msg: dict) -> None:
        """stdin's input_reply: what the running cell's input() returns."""
        value = (msg.get("content") or {}).get("value", "")
        ok, result = await self._guarded(self._worker_call("input_reply", {"value": str(value)},
                                                           wait_for_worker=False))
        if not ok or not (result or {}).get("delivered"):
            log.info("kernel %s: an input_reply came while no cell waited for input", self.notebook_id)

    async def _ask_worker(self, msg_type: str, content: dict) -> dict:
        op, fields, fallback = WORKER_REQUESTS[msg_type]
        args = {name: content[name] for name in fields if name in content}
        args["code"] = str(args.get("code", ""))
        if "cursor_pos" in fields:
            cursor = args.get("cursor_pos")
            args["cursor_pos"] = cursor if isinstance(cursor, int) and 0 <= cursor <= len(args["code"]) \
                else len(args["code"])
            fallback = {**fallback, "cursor_start": args["cursor_pos"], "cursor_end": args["cursor_pos"]}
        gateway = self.gateway

        def ask():
            notebook = gateway.store.wait_for_worker(self.notebook_id, gateway.settings.assign_timeout_s)
            return rpc.call(gateway.redis, notebook["worker"]["id"], op, args, timeout_s=gateway.settings.rpc_timeout_s)

        _, answer = await self._guarded(gateway.run(ask))
        return {"status": "ok", **fallback, **(answer or {})}

    def _kernel_info(self) -> dict:
        try:
            spec = registry.get_spec(self.gateway.settings.config_dir, self.engine)
        except TaskkernelError:
            spec = {"name": self.engine}
        language = spec.get("language", "python")
        language_info = {"name": language}
        if language == "python":
            language_info.update(version=platform.python_version(), mimetype="text/x-python", file_extension=".py",
                                 pygments_lexer="ipython3", codemirror_mode={"name": "ipython", "version": 3},
                                 nbconvert_exporter="python")
        return {"status": "ok", "protocol_version": framing.PROTOCOL_VERSION, "implementation": "taskkernel",
                "implementation_version": __version__, "language_info": language_info,
                "banner": f"taskkernel {__version__}: {spec.get('display_name', self.engine)} "
                          f"(notebook {self.notebook_id})",
                "help_links": [], "debugger": False}

    async def _history(self, content: dict) -> dict:
        """The notebook's cells as IPython's history: tail n, a range of execution counts, or a glob search."""
        import fnmatch

        cells = await self.gateway.run(self.gateway.store.list_cells, self.notebook_id)
        entries = []
        for cell in cells:
            if cell.get("execution_count"):
                result = next((o["data"].get("text/plain") for o in cell["outputs"]
                               if o.get("output_type") == "execute_result"), None)
                entries.append((HISTORY_SESSION, cell["execution_count"], cell["code"], result))
        kind, n = content.get("hist_access_type"), content.get("n")
        if kind == "range":
            start, stop = content.get("start"), content.get("stop")
            entries = [e for e in entries if (start is None or e[1] >= start) and (stop is None or e[1] < stop)]
        elif kind == "search":
            entries = [e for e in entries if fnmatch.fnmatchcase(e[2], content.get("pattern") or "*")]
        if kind in ("tail", "search") and isinstance(n, int) and n > 0:
            entries = entries[-n:]
        output = bool(content.get("output"))
        return {"status": "ok", "history": [(s, line, (code, out) if output else code) for s, line, code, out in entries]}
