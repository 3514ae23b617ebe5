"""The life of one worker process after the supervisor forked it: start its engine, then run Celery solo.

The worker is the trusted side of its notebook: it holds the broker connection and writes the
notebook's records and feed. The notebook's code runs in the engine process the worker starts
(in the sandbox) and owns until it exits; nothing the worker holds is inherited by the engine,
which is exec'd fresh with an environment built here.
"""

from __future__ import annotations

import os
import signal
import sys
import warnings
from pathlib import Path

from celery import Celery, signals

from taskkernel import connections, logs
from taskkernel.settings import Settings
from taskkernel.workers import cgroups, consumer, directories, kernelspecs, sandbox
from taskkernel.workers.capture import OutputCapture
from taskkernel.workers.checkpoints import CheckpointStore
from taskkernel.workers.engine import EngineProcess
from taskkernel.workers.files import FileService
from taskkernel.workers.runtime import Runtime
from taskkernel.workers.tasks import register_tasks


def run_worker(app: Celery, settings: Settings, spec: dict, *, worker_id: str, queue: str, slot: int,
               sandbox_root: Path) -> int:
    """Run in the forked child until the worker stops; returns the exit code."""
    os.setpgrp()  # Ctrl-C at a terminal reaches the supervisor, not the notebooks
    _die_with_parent()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    logs.configure(settings.log_level, bool(settings.log_json), sys.stderr, worker_id=worker_id,
                   host=settings.host_name)
    signals.setup_logging.connect(lambda **_: None, weak=False)  # Celery keeps to our logging

    spec = kernelspecs.resolve(spec)  # a Jupyter-kernel engine's kernelspec, found on this side
    uid = sandbox.slot_uid(settings, slot)
    directory = sandbox.prepare_directory(sandbox_root, worker_id, uid)
    limits = spec.get("limits", {})
    procs = cgroups.create(worker_id, memory_bytes=limits.get("notebook_memory_bytes"),
                           processes=int(limits.get("notebook_processes", cgroups.DEFAULT_NOTEBOOK_PROCESSES)))
    engine = EngineProcess(sandbox.engine_launch(settings, spec, directory=directory, uid=uid, cgroup_procs=procs))
    engine.start({"spec": spec, "limits": sandbox.engine_limits(spec, uid)})
    capture = OutputCapture(engine.pipes)
    capture.start()
    client = connections.connect(settings.redis_url, health_check_interval=30)
    file_service = FileService(client, worker_id, directory / "home", uid, max_file_bytes=settings.max_file_bytes,
                               max_notebook_bytes=settings.max_notebook_files_bytes)
    checkpoints = CheckpointStore(client, settings.checkpoint_dir,
                                  files_directory=directories.checkpoint_files_dir(sandbox_root))
    runtime = Runtime(client, engine, capture, worker_id=worker_id,
                      output_limit=int(limits.get("output_bytes", settings.max_output_bytes)),
                      rpc_timeout_s=settings.rpc_timeout_s, stream_maxlen=settings.feed_stream_maxlen,
                      checkpoints=checkpoints, files=file_service,
                      durability=connections.Durability.from_settings(settings))
    register_tasks(app, runtime)  # the tasks get their runtime as an argument, not through the app
    consumer.install(app, runtime)  # a task message lost with a broker connection is queued again

    def on_ready(**_):
        runtime.install_interrupt_handler()
        runtime.serve_side_channel()
        file_service.start(local_socket=directories.socket_path(sandbox_root, worker_id))
        runtime.announce_starts()
        runtime.announce_idle(spec["name"], settings.host_name, os.getpid())

    signals.worker_ready.connect(on_ready, weak=False)
    # Celery warns on every start when the host runs services as root; the worker holds no user
    # code (that runs in the sandboxed engine), so the warning says nothing here.
    warnings.filterwarnings("ignore", message="You're running the worker with superuser privileges")
    worker = app.Worker(
        hostname=f"{worker_id}@{settings.host_name}",
        pool_cls="solo",
        concurrency=1,
        queues=[queue],
        without_gossip=True,
        without_mingle=True,
        without_heartbeat=not settings.task_events,  # Flower lists workers by their heartbeats
        quiet=True,
        loglevel=settings.log_level,
        optimization="fair",
    )
    worker.start()
    engine.kill()
    return worker.exitcode or 0


def _die_with_parent() -> None:
    """A worker never outlives its supervisor: the kernel kills it when the parent dies."""
    parent = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
