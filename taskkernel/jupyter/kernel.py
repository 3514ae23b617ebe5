"""The bridge kernel: a Jupyter kernel process whose every request is served by a taskkernel notebook.

The Jupyter side is ipykernel's own machinery (`Kernel` subclass, `IPKernelApp`: the ZMQ sockets,
message signing, busy/idle status, heartbeat, the control thread); the taskkernel side is the HTTP
client. On start the kernel pins a notebook on the service; then

- execute: the cell is queued on the notebook (`evaluate` without wait) and its messages are read
  from the notebook's feed (SSE, from the last position this kernel has read, so nothing is missed
  however fast the cell is; see feedline.py); the cell's stream/display/result/error messages are
  re-published on IOPub as they arrive, under the execute_request's parent header, until the
  cell's execute_reply;
- complete / inspect / is_complete: the notebook's endpoints, which a worker answers from a side
  thread, so this kernel answers them even while a cell runs (see `shell_main`);
- interrupt (control channel, `interrupt_mode: message`; or SIGINT): the notebook's interrupt;
- shutdown: the notebook is deleted; a restart restarts it (a fresh worker, same notebook id) and
  the next kernel process, started on the same connection file, takes it over;
- history: the code this kernel ran, kept in the kernel.

The feed stream stays open while cells come and closes `feed_linger_s` after the last one: an
open SSE request holds one of the API's request threads, so an idle Jupyter kernel costs the
service nothing. When the notebook's engine dies, the kernel process exits (see `_die`).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import fnmatch
import json
import os
import platform
import queue
import signal
import sys
import threading
from pathlib import Path

import zmq
from ipykernel.kernelbase import Kernel
from traitlets import Float, Integer, Unicode

from taskkernel import __version__, messages
from taskkernel.client import ApiError, Client, Notebook
from taskkernel.jupyter.feedline import END, FAILED, FeedLine

# Feed messages that are outputs of a cell: re-published on IOPub as they are.
OUTPUT_TYPES = frozenset({"stream", "display_data", "update_display_data", "execute_result", "error",
                          "clear_output"})
# Shell requests answered at once even while a cell runs (they never wait for the worker's main
# thread: the worker answers introspection from its side thread, history is kept here).
SIDE_REQUESTS = frozenset({"complete_request", "inspect_request", "is_complete_request",
                           "kernel_info_request", "history_request"})
# What the feed carries that goes to IOPub under the Jupyter request it answers.
FORWARDED_TYPES = OUTPUT_TYPES | frozenset(messages.COMM_TYPES)
REMEMBERED_PARENTS = 1000  # Jupyter requests whose late output or comm echoes are still routed
INPUT_POLL_S = 0.02  # how often a cell waiting for input() looks at the stdin channel
HISTORY_SESSION = 1
# The ename of the reply to a cell whose engine died under it (workers/runtime.py), and the feed
# states that say a notebook's namespace is gone: the bridge then dies as ipykernel would.
ENGINE_DIED = "EngineDied"
LOST_STATES = frozenset({"restarting", "dead"})
DEATH_EXIT_STATUS = 70
# this process's own configuration and the Jupyter server's: never a notebook's environment
BRIDGE_ONLY_PREFIXES = ("TASKKERNEL_", "JUPYTER_", "JPY_")
SIDECAR_SUFFIX = ".taskkernel.json"
ABORT_MARKER_WAIT_S = 5.0  # the shell channel thread queues the stop-aborting marker within this


class _CellRun:
    """What the feed's reader hands the thread waiting for one cell."""

    def __init__(self, silent: bool):
        self.silent = silent
        self.items: queue.SimpleQueue[tuple[str, object]] = queue.SimpleQueue()
        self.output: str | None = None  # the execute_result's text, for history
        self.asking = False  # an input_request is out on the stdin channel


class TaskkernelKernel(Kernel):
    """A Jupyter kernel that runs its cells on a taskkernel notebook over the HTTP API."""

    implementation = "taskkernel"
    implementation_version = __version__
    language_info = {
        "name": "python",
        "version": platform.python_version(),
        "mimetype": "text/x-python",
        "file_extension": ".py",
        "pygments_lexer": "ipython3",
        "codemirror_mode": {"name": "ipython", "version": 3},
        "nbconvert_exporter": "python",
    }

    url = Unicode("http://127.0.0.1:8000", help="the taskkernel API").tag(config=True)
    token = Unicode("", help="bearer token of the taskkernel API (empty: none)").tag(config=True)
    engine = Unicode("ipython", help="engine of the notebook this kernel opens").tag(config=True)
    retry_s = Float(30.0, help="how long a lost feed connection is retried before the cell is "
                               "given up").tag(config=True)
    forward_env = Unicode("KERNEL_*", help="comma-separated glob patterns of this process's environment "
                                         "variables the notebook's cells get (names the service refuses, and "
                                         "TASKKERNEL_*/JUPYTER_*/JPY_*, are never sent); KERNEL_WORKING_DIR, "
                                         "when relative, is the notebook's working directory").tag(config=True)
    feed_linger_s = Float(5.0, help="the notebook's feed stays open this long after a cell, so the next "
                                     "cell's outputs need no new stream").tag(config=True)
    lease_s = Float(60.0, help="the notebook is opened with this lease and the kernel renews it every "
                               "third of it, so a killed kernel leaves no notebook behind (0: no lease)"
                    ).tag(config=True)

    upload_cwd_bytes = Integer(64 * 1024 * 1024, help="the files of this process's working directory (where "
                                                      "Jupyter started the kernel) are copied into the notebook's "
                                                      "working directory when it opens, up to this many bytes in "
                                                      "all (0: nothing is copied); see taskkernel/jupyter/workdir.py"
                               ).tag(config=True)
    upload_cwd_depth = Integer(0, help="levels of subdirectories of the working directory copied too "
                                       "(0: its own files only)").tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.client = Client(self.url, token=self.token or None)
        self.notebook: Notebook | None = None
        self._position = "0-0"  # the feed position this kernel has read up to
        self._history: list[tuple[int, int, str, str | None]] = []  # (session, line, code, output)
        self._handed_over = False  # a restart left the notebook to the next kernel process
        self._released = False
        self._releasing = threading.Lock()
        self.shutdown_requested = False
        self._opening = threading.Lock()  # execute and introspection may both find no notebook yet
        self._abort_done_before_reply = False
        self._expected_restarts = 0  # "restarting" statuses on the feed this kernel asked for
        self._line: FeedLine | None = None
        self._routing = threading.Lock()  # the feed reader's routing vs a cell being queued
        self._cell: tuple[str, _CellRun] | None = None  # (cell id, its waiting run) while one runs
        self._parents: collections.OrderedDict[str, dict] = collections.OrderedDict()
        for msg_type in messages.COMM_TYPES:
            self.shell_handlers[msg_type] = self._comm_from_front_end

    @property
    def kernel_info(self) -> dict:
        """ipykernel's kernel_info, less the features this kernel lacks: a debugger (the cells run
        on a worker, out of debugpy's reach) and subshells (a notebook runs one cell at a time)."""
        info = super().kernel_info
        info["supported_features"] = [f for f in info.get("supported_features", [])
                                      if f not in ("debugger", "kernel subshells")]
        return info

    @property
    def banner(self) -> str:
        where = f"notebook {self.notebook.id}" if self.notebook else "no notebook yet"
        return f"taskkernel {__version__}: {self.engine} cells run on {self.url} ({where})"

    # --- the notebook's life ----------------------------------------------------------------

    def start(self) -> None:
        """Start the kernel and open its notebook beside it: the notebook (pinned, its directory
        filled, see `_copy_working_directory`) is being made while the front end connects and asks
        for kernel_info, which need none of it; the first request that does waits for it."""
        super().start()
        threading.Thread(target=self._open_quietly, name="taskkernel-open", daemon=True).start()

    def _open_quietly(self) -> None:
        try:
            self._open_notebook()
        except Exception as exc:  # the service may be down: say so on the first cell instead
            self.log.warning("taskkernel: could not open a notebook on %s: %r", self.url, exc)

    def _sidecar(self) -> Path | None:
        """Where a restarting kernel leaves its notebook for the next process on the same
        connection file (jupyter_client relaunches a restarted kernel on the same file)."""
        connection_file = getattr(self.parent, "abs_connection_file", None)
        return Path(connection_file + SIDECAR_SUFFIX) if connection_file else None

    def _open_notebook(self) -> Notebook:
        """The kernel's notebook: taken over from a restarted predecessor, or newly opened."""
        with self._opening:
            if self.notebook is None:
                if self._released:
                    raise ApiError(410, {"error": "notebook_gone", "message": "the kernel is shutting down"})
                notebook = self._take_over()
                if notebook is None:
                    workspace = self._workspace()
                    notebook = self.client.start(self.engine, lease_s=self.lease_s or None, **workspace)
                    self._copy_working_directory(notebook, workspace.get("cwd", ""))
                self.notebook = notebook
                self.notebook.keep_alive()  # renews a lease, if the notebook has one, until close()
            return self.notebook

    def _copy_working_directory(self, notebook: Notebook, cwd: str) -> None:
        """What an ipykernel started here would see in its working directory, copied to the new
        notebook's before its first cell (a restarted notebook keeps its directory)."""
        from taskkernel.jupyter import workdir

        files = workdir.plan(Path.cwd(), cwd, self.upload_cwd_bytes, self.upload_cwd_depth)
        failed = workdir.upload(notebook, files)
        if files.skipped or failed:
            self.log.warning("taskkernel: not copied into the notebook: %s", "; ".join(files.skipped + failed))
        self.log.info("taskkernel: copied %d files (%d bytes) of %s into notebook %s", len(files.files) - len(failed),
                      files.bytes, Path.cwd(), notebook.id)

    def _workspace(self) -> dict:
        """The cwd and env the notebook is opened with, from the environment Jupyter gave this
        process (taskkernel/workspace.py says what the service accepts)."""
        from taskkernel import workspace

        patterns = [p.strip() for p in self.forward_env.split(",") if p.strip()]
        return workspace.from_jupyter(os.environ, lambda name: any(fnmatch.fnmatchcase(name, p) for p in patterns)
                                      and not name.startswith(BRIDGE_ONLY_PREFIXES))

    def _take_over(self) -> Notebook | None:
        sidecar = self._sidecar()
        if sidecar is not None and sidecar.exists():
            try:
                left = json.loads(sidecar.read_text())
                sidecar.unlink()
                notebook = self.client.notebook(left["notebook_id"])
                self._position = left.get("position", "0-0")
                self._expected_restarts = 1  # the predecessor's restart is on the feed after that position
                self.execution_count = 0  # a restarted notebook counts from 1 again
                return notebook
            except (OSError, ValueError, KeyError, ApiError) as exc:
                self.log.info("taskkernel: not taking over the previous notebook: %r", exc)
        return None

    def release_notebook(self) -> None:
        """Delete the notebook unless a restart handed it over; safe to call more than once, and
        from several threads: a second caller returns once the first one's delete is done (the
        feed reader and the cell's thread may both see the engine die, and each then exits)."""
        with self._releasing:
            if self._released or self._handed_over:
                return
            with self._opening:  # a notebook being opened (see start) is opened first, then deleted
                notebook, self._released = self.notebook, True
            if notebook is None:
                return
            try:
                notebook.close()
            except Exception as exc:
                self.log.warning("taskkernel: could not delete notebook %s: %r", notebook.id, exc)

    async def do_shutdown(self, restart: bool) -> dict:
        self.shutdown_requested = True
        if restart and self.notebook is not None:
            sidecar = self._sidecar()
            if sidecar is not None:
                # written first: jupyter_client kills a kernel that takes too long to exit
                sidecar.write_text(json.dumps({"notebook_id": self.notebook.id, "position": self._position}))
                self._handed_over = True
            try:
                await asyncio.to_thread(self.notebook.restart)
            except Exception as exc:
                self.log.warning("taskkernel: restart of notebook %s failed: %r", self.notebook.id, exc)
                if sidecar is not None:
                    sidecar.unlink(missing_ok=True)
                self._handed_over = False
        if not self._handed_over:
            await asyncio.to_thread(self.release_notebook)
        return {"status": "ok", "restart": restart}

    # --- execute ----------------------------------------------------------------------------

    async def do_execute(self, code, silent, store_history=True, user_expressions=None, allow_stdin=False,
                         *, cell_meta=None, cell_id=None):
        # The wait for the worker runs on a thread that carries this request's context (its parent
        # header and the client's identity), leaving the event loop free for SIDE_REQUESTS.
        options = {"silent": bool(silent), "store_history": bool(store_history), "allow_stdin": bool(allow_stdin)}
        if user_expressions:
            options["user_expressions"] = dict(user_expressions)
        reply, output = await asyncio.to_thread(self._run_cell, code, options)
        if reply.get("status") == "error" and not silent and self._stops_on_error():
            await self._abort_queued_before_reply()
        if isinstance(reply.get("execution_count"), int):
            self.execution_count = reply["execution_count"]  # the worker's numbering wins
        else:  # an aborted cell, or one whose worker died, has no number of its own
            reply["execution_count"] = self.execution_count
        if store_history and not silent:
            self._history.append((HISTORY_SESSION, self.execution_count, code, output))
        if user_expressions and "user_expressions" not in reply:
            reply["user_expressions"] = {
                name: {"status": "error", "ename": "NotImplementedError",
                       "evalue": "this engine does not evaluate user_expressions", "traceback": []}
                for name in user_expressions
            }
        return reply

    def _stops_on_error(self) -> bool:
        parent = self.get_parent("shell") or {}
        header, content = parent.get("header") or {}, parent.get("content") or {}
        return header.get("subshell_id") is None and content.get("stop_on_error", True)

    async def _abort_queued_before_reply(self) -> None:
        """Abort the execute requests queued behind a failed cell, ordered before its reply is sent.

        ipykernel does it after sending the reply: it sets its aborting flag and asks the shell
        channel thread to queue the "stop aborting" marker. A client that answers the reply with
        its next request at once (run_cell after an interrupt) races that marker through the same
        thread and, on a loaded machine, its request is forwarded first and aborted. Queued here,
        before the reply exists, the marker is behind every request sent before the error and
        ahead of every request sent after it, whatever the scheduling.
        """
        channel = getattr(self, "shell_channel_thread", None)
        if channel is None:
            return  # an ipykernel without one aborts on its own event loop: left to it
        posted = threading.Event()

        def post_marker():
            try:
                self._post_dummy_stop_aborting_message(None)
            finally:
                posted.set()

        self._aborting = True
        channel.io_loop.add_callback(post_marker)
        await asyncio.to_thread(posted.wait, ABORT_MARKER_WAIT_S)
        self._abort_done_before_reply = True

    def _abort_queues(self, subshell_id: str | None = None):
        """ipykernel's abort after a failed reply: already done by `_abort_queued_before_reply`."""
        if subshell_id is None and self._abort_done_before_reply:
            self._abort_done_before_reply = False
            return
        super()._abort_queues(subshell_id)

    def _run_cell(self, code: str, options: dict) -> tuple[dict, str | None]:
        """Queue the cell and wait for its reply while the feed's reader re-publishes its outputs
        (see `_route`); answer its input_requests. Returns (execute_reply content, text result)."""
        silent = options["silent"]
        parent = self.get_parent("shell")
        ident = self._get_shell_context_var(self._shell_parent_ident)
        run = _CellRun(silent)
        try:
            notebook = self._open_notebook()
            line = self._feed_line(notebook)
            line.begin()  # the stream opens (if closed) while the cell is being queued
            try:
                # under the routing lock: the reader holds the cell's first messages until its id is known
                with self._routing:
                    cell = notebook.evaluate(code, wait=False, **options)
                    self._remember(cell["id"], parent)
                    self._cell = (cell["id"], run)
            except Exception:
                line.end()
                raise
        except Exception as exc:
            return self._bridge_error(exc, silent), None
        try:
            while True:
                try:
                    kind, item = run.items.get(timeout=INPUT_POLL_S if run.asking else None)
                except queue.Empty:
                    self._poll_input(notebook, run)
                    continue
                if kind == END:
                    return self._bridge_error(ApiError(410, {"error": "notebook_gone",
                                                             "message": "the notebook was deleted"}), silent), run.output
                if kind == FAILED:
                    return self._bridge_error(item, silent), run.output
                msg_type, content = item["header"]["msg_type"], item["content"]
                if msg_type == "input_request":
                    self._ask_front_end(run, content, parent, ident)
                elif msg_type == "execute_reply":
                    if content.get("ename") == ENGINE_DIED:
                        self._die(content.get("evalue", "the engine died"))
                    return dict(content), run.output
        finally:
            with self._routing:
                self._cell = None
            line.end()

    def _route(self, kind: str, item) -> None:
        """Every item of the feed, on the reader thread: a running cell's messages and those of
        earlier cells (a thread's late output) or of a front end's comm messages (a widget's
        echo) go to IOPub under the Jupyter request they answer; the reply and input_requests go
        to the cell waiting for them; a notebook restarted behind the kernel's back ends it."""
        with self._routing:
            cell_id, run = self._cell or (None, None)
            if kind != "message":
                if run is not None:
                    run.items.put((kind, item))
                return
            message = item
            self._position = message.get("position") or self._position
            msg_type = message["header"]["msg_type"]
            if msg_type == "status" and message["content"].get("execution_state") in LOST_STATES:
                if self._expected_restarts:  # the restart this process took over from
                    self._expected_restarts -= 1
                elif self.shutdown_requested or self._released:
                    pass  # this kernel's own shutdown deleted the notebook (its engine's "dead")
                else:  # the engine died (or was restarted) since the last cell
                    self._die(f"the notebook's engine was lost ({message['content']['execution_state']})")
            parent_id = message["parent_header"].get("msg_id")
            if run is not None and parent_id == cell_id:
                if msg_type in ("execute_reply", "input_request"):
                    run.items.put(("message", message))
                    return
                if msg_type == "execute_result":
                    run.output = message["content"].get("data", {}).get("text/plain")
                if run.silent:
                    return
            parent = self._parents.get(parent_id)
            if parent is not None and msg_type in FORWARDED_TYPES:
                buffers = messages.decode_buffers(message.get("buffers") or [])
                self.session.send(self.iopub_socket, msg_type, message["content"], parent=parent,
                                  ident=self._topic(msg_type), buffers=buffers or None,
                                  metadata=message.get("metadata") or {})

    def _remember(self, taskkernel_id: str, parent: dict) -> None:
        """The Jupyter request behind a cell or comm message, for what the feed publishes under it."""
        self._parents[taskkernel_id] = parent
        while len(self._parents) > REMEMBERED_PARENTS:
            self._parents.popitem(last=False)

    def _feed_line(self, notebook: Notebook) -> FeedLine:
        """The kernel's one stream of its notebook's feed (a new one for a new notebook)."""
        if self._line is None or self._line.notebook is not notebook:
            self._line = FeedLine(notebook, self._route, self._position, linger_s=self.feed_linger_s,
                                  retry_s=self.retry_s)
        return self._line

    # --- stdin ------------------------------------------------------------------------------

    def _ask_front_end(self, run: "_CellRun", content: dict, parent: dict, ident) -> None:
        """The cell's input() wants a line: ask the front end on the stdin channel, as ipykernel does
        (the engine refuses input() itself when the request did not allow stdin)."""
        while True:  # replies to an earlier, abandoned request are stale
            try:
                self.stdin_socket.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError:
                break
        self.session.send(self.stdin_socket, "input_request",
                          {"prompt": content.get("prompt", ""), "password": bool(content.get("password"))},
                          parent, ident=ident)
        run.asking = True

    def _poll_input(self, notebook: Notebook, run: "_CellRun") -> None:
        """Deliver the front end's input_reply, if it came, to the waiting cell."""
        if not self.stdin_socket.poll(0):
            return
        _, reply = self.session.recv(self.stdin_socket, mode=zmq.NOBLOCK)
        if reply is None:
            return
        run.asking = False
        try:
            notebook.input_reply(str(reply["content"].get("value", "")))
        except ApiError as exc:  # the cell was interrupted or ended meanwhile
            self.log.info("taskkernel: input_reply not delivered: %r", exc)

    # --- comms ------------------------------------------------------------------------------

    async def _comm_from_front_end(self, stream, ident, msg) -> None:
        """A front end's comm_open / comm_msg / comm_close (a widget moved), delivered to the engine
        even while a cell runs; what its handler publishes comes back on the feed under this message."""
        def deliver():
            notebook = self._open_notebook()
            line = self._feed_line(notebook)
            line.begin()
            try:
                with self._routing:
                    self._remember(msg["header"]["msg_id"], msg)
                buffers = [bytes(b) for b in msg.get("buffers") or []]
                notebook.send_comm(msg["header"]["msg_type"], msg["content"], buffers, msg_id=msg["header"]["msg_id"],
                                   metadata=msg.get("metadata") or None)
            finally:
                line.end()

        try:
            await asyncio.to_thread(deliver)
        except Exception as exc:
            self.log.warning("taskkernel: %s not delivered: %r", msg["header"]["msg_type"], exc)

    async def comm_info_request(self, stream, ident, parent):
        """The engine's open comms (ipywidgets asks for them when a front end reconnects)."""
        target_name = parent["content"].get("target_name")
        try:
            content = await asyncio.to_thread(lambda: self._open_notebook().comm_info(target_name))
        except Exception as exc:
            self.log.warning("taskkernel: comm_info failed: %r", exc)
            content = {"status": "ok", "comms": {}}
        self.session.send(stream, "comm_info_reply", {"status": "ok", "comms": {}, **content}, parent, ident)

    def _die(self, reason: str) -> None:
        """End this kernel process because the notebook's namespace is gone; does not return.

        A front end knows a kernel died by its process (nbclient raises DeadKernelError, a Jupyter
        server's restarter starts a fresh kernel), so the bridge dies as ipykernel does when its
        process is killed: no execute_reply. The notebook, now on a fresh worker, is deleted; the
        outputs already published (the EngineDied error) are flushed first.
        """
        self.log.error("taskkernel: %s; the kernel exits", reason)
        self.release_notebook()
        iopub = getattr(self.parent, "iopub_thread", None)
        try:
            if iopub is not None:
                iopub.stop()
        finally:
            os._exit(DEATH_EXIT_STATUS)

    def _bridge_error(self, exc: Exception, silent: bool) -> dict:
        """A cell the bridge could not run (service down, notebook gone) fails with the reason."""
        ename = f"taskkernel.{getattr(exc, 'code', type(exc).__name__)}"
        evalue = f"{getattr(exc, 'message', None) or exc} (taskkernel at {self.url})"
        error = {"ename": ename, "evalue": evalue, "traceback": [f"{ename}: {evalue}"]}
        if not silent:
            self.send_response(self.iopub_socket, "error", error, ident=self._topic("error"))
        return {"status": "error", "execution_count": self.execution_count, **error}

    # --- requests answered beside a running cell ------------------------------------------------

    async def shell_main(self, subshell_id, msg):
        """Answer SIDE_REQUESTS at once even while an execute_request holds the shell.

        ipykernel runs shell requests one at a time under an asyncio lock; a running cell here only
        waits on a thread, so introspection need not queue behind it (ipykernel does the same for
        comm messages). Each still gets its own busy and idle under its own parent header, as the
        protocol asks of every request: JupyterLab waits for the idle of a complete or inspect.
        """
        lock = getattr(self, "_main_asyncio_lock", None)
        if subshell_id is None and lock is not None and lock.locked():
            request = self._request_header(msg)
            if request is not None and request["header"].get("msg_type") in SIDE_REQUESTS:
                parent = self.get_parent("shell")
                ident = self._get_shell_context_var(self._shell_parent_ident)
                self._publish_status("busy", "shell", request)
                try:
                    await asyncio.create_task(self.dispatch_shell(msg, subshell_id=None, concurrent=True),
                                              context=contextvars.copy_context())
                finally:
                    self._publish_status("idle", "shell", request)
                    self.set_parent(ident, parent, channel="shell")
                return
        await super().shell_main(subshell_id, msg)

    def _request_header(self, msg) -> dict | None:
        """The header and parent header of a raw shell message (its content left unparsed)."""
        try:
            _, frames = self.session.feed_identities(msg, copy=False)
            return self.session.deserialize(frames, content=False, copy=False)
        except Exception:
            return None

    async def do_complete(self, code, cursor_pos):
        empty = {"status": "ok", "matches": [], "cursor_start": cursor_pos, "cursor_end": cursor_pos, "metadata": {}}
        reply = await self._ask("complete", {"code": code, "cursor_pos": cursor_pos}, empty)
        return {**empty, **reply}

    async def do_inspect(self, code, cursor_pos, detail_level=0, omit_sections=()):
        empty = {"status": "ok", "found": False, "data": {}, "metadata": {}}
        body = {"code": code, "cursor_pos": cursor_pos, "detail_level": int(detail_level or 0)}
        return {**empty, **await self._ask("inspect", body, empty)}

    async def do_is_complete(self, code):
        return await self._ask("is_complete", {"code": code}, {"status": "unknown"})

    async def _ask(self, op: str, body: dict, fallback: dict) -> dict:
        def call():
            notebook = self._open_notebook()
            return self.client.request("POST", f"/notebooks/{notebook.id}/{op}", body)[1]

        try:
            return await asyncio.to_thread(call)
        except Exception as exc:  # a front end asks these all the time: answer, never fail
            self.log.warning("taskkernel: %s failed: %r", op, exc)
            return fallback

    async def do_history(self, hist_access_type, output, raw, session=None, start=None, stop=None, n=None,
                         pattern=None, unique=False, **kwargs):
        """The code this kernel ran (IPython's semantics: range stop is exclusive, search globs)."""
        entries = self._history
        if hist_access_type == "tail":
            entries = entries[-n:] if n else entries
        elif hist_access_type == "range":
            if session not in (None, 0, HISTORY_SESSION):
                entries = []
            entries = [e for e in entries if (start is None or e[1] >= start) and (stop is None or e[1] < stop)]
        elif hist_access_type == "search":
            entries = [e for e in entries if fnmatch.fnmatchcase(e[2], pattern or "*")]
            if unique:
                seen: set[str] = set()
                kept = []
                for entry in reversed(entries):
                    if entry[2] not in seen:
                        seen.add(entry[2])
                        kept.append(entry)
                entries = kept[::-1]
            entries = entries[-n:] if n else entries
        else:
            entries = []
        history = [(s, line, (code, out) if output else code) for s, line, code, out in entries]
        return {"status": "ok", "history": history}

    # --- interrupt --------------------------------------------------------------------------

    async def interrupt_request(self, stream, ident, parent):
        """interrupt_request on the control channel (kernelspec interrupt_mode "message")."""
        content: dict = {"status": "ok"}
        try:
            await asyncio.to_thread(self._interrupt_notebook)
        except Exception as exc:
            content = {"status": "error", "ename": type(exc).__name__, "evalue": str(exc), "traceback": []}
        self.session.send(stream, "interrupt_reply", content, parent, ident=ident)

    def _interrupt_notebook(self) -> None:
        if self.notebook is not None:
            self.notebook.interrupt()

    def pre_handler_hook(self):
        """A SIGINT (interrupt_mode "signal") interrupts the notebook's cell, not this process."""
        def forward(signum, frame):
            threading.Thread(target=self._interrupt_quietly, name="taskkernel-interrupt", daemon=True).start()

        self.saved_sigint_handler = signal.signal(signal.SIGINT, forward)

    def _interrupt_quietly(self) -> None:
        try:
            self._interrupt_notebook()
        except Exception as exc:
            self.log.warning("taskkernel: interrupt failed: %r", exc)


def main(argv: list[str] | None = None) -> int:
    """Run the kernel process (what the kernelspec's argv starts); returns the exit status.

    The connection to taskkernel comes from TASKKERNEL_URL, TASKKERNEL_TOKEN and TASKKERNEL_ENGINE.
    They are read here, not through taskkernel.settings, because they are not the service's
    configuration: they are the kernelspec's `env`, the one channel jupyter_client offers to configure
    a kernel process without putting a secret on its command line.
    """
    from ipykernel.kernelapp import IPKernelApp
    from traitlets.config import Config

    environ = os.environ
    config = Config()
    for variable, trait in (("TASKKERNEL_URL", "url"), ("TASKKERNEL_TOKEN", "token"), ("TASKKERNEL_ENGINE", "engine"),
                            ("TASKKERNEL_FORWARD_ENV", "forward_env")):
        if environ.get(variable):
            setattr(config.TaskkernelKernel, trait, environ[variable])

    def on_sigterm(signum, frame):  # a kernel manager that gives up waiting: still delete the notebook
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        IPKernelApp.launch_instance(argv, kernel_class=TaskkernelKernel, config=config)
    finally:
        if IPKernelApp.initialized():
            app = IPKernelApp.instance()
            kernel = getattr(app, "kernel", None)
            if isinstance(kernel, TaskkernelKernel):
                kernel.release_notebook()
                control = getattr(app, "control_thread", None)
                if kernel.shutdown_requested and control is not None:
                    # The control thread is still finishing the shutdown_request (it flushes
                    # through the IOPub thread); ipykernel's exit hook stops IOPub first and would
                    # leave it waiting until the kernel manager loses patience and kills us.
                    control.join(timeout=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
