"""The life of one worker process after the supervisor forked it: set up, then run Celery solo."""

from __future__ import annotations

import os
import resource
import signal
import sys
import warnings

import redis
from celery import Celery, signals

from taskkernel import logs
from taskkernel.engines import registry
from taskkernel.settings import Settings
from taskkernel.workers.capture import OutputCapture
from taskkernel.workers.runtime import Runtime


class NoStdin:
    """sys.stdin of a worker: reading fails at once instead of hanging the notebook."""

    def _refuse(self, *args, **kwargs):
        raise OSError("taskkernel cells cannot read standard input (input() is not supported)")

    read = readline = readlines = __next__ = _refuse

    def __iter__(self):
        return self

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return 0

    def close(self) -> None:
        pass

    closed = False
    encoding = "utf-8"


def run_worker(app: Celery, settings: Settings, spec: dict, *, worker_id: str, queue: str) -> int:
    """Run in the forked child until the worker stops; returns the exit code."""
    os.setpgrp()  # Ctrl-C at a terminal reaches the supervisor, not the notebooks
    _die_with_parent()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    # user code must not find the service's configuration (the Redis password) in its environment
    for name in [n for n in os.environ if n.startswith("TASKKERNEL_")]:
        del os.environ[name]
    os.environ.update({k: str(v) for k, v in spec.get("env", {}).items()})
    if spec.get("working_dir"):
        os.chdir(os.path.expanduser(spec["working_dir"]))
    _limit_memory(spec.get("limits", {}).get("memory_bytes"))

    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.stdin = NoStdin()
    capture = OutputCapture()
    capture.start()
    _log_to(capture, settings, worker_id)

    _drop_privileges(settings.worker_user)
    client = redis.Redis.from_url(settings.redis_url, health_check_interval=30)
    engine = registry.engine_class(spec)(spec)
    engine.start()
    limits = spec.get("limits", {})
    runtime = Runtime(client, engine, capture, worker_id=worker_id,
                      output_limit=int(limits.get("output_bytes", settings.max_output_bytes)),
                      stream_maxlen=settings.feed_stream_maxlen, checkpoint_dir=settings.checkpoint_dir)
    app.taskkernel_runtime = runtime

    def on_ready(**_):
        runtime.install_interrupt_handler()
        runtime.serve_side_channel()
        runtime.announce_starts()
        runtime.announce_idle(spec["name"], settings.host_name, os.getpid())

    signals.worker_ready.connect(on_ready, weak=False)
    # Celery warns on every start when the host runs services as root; run the service as an
    # unprivileged user to avoid that, the warning itself says nothing per worker.
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


def _drop_privileges(user: str) -> None:
    """Run user code as `user`, so it cannot read the service's files (as codenode's engines did)."""
    if not user:
        return
    import pwd

    entry = pwd.getpwnam(user)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    home = entry.pw_dir if os.path.isdir(entry.pw_dir) and os.access(entry.pw_dir, os.W_OK) else "/tmp"
    os.environ.update({"HOME": home, "USER": user, "LOGNAME": user})
    os.chdir(home)


def _limit_memory(memory_bytes) -> None:
    """An address-space limit turns runaway allocation into a catchable MemoryError."""
    if memory_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (int(memory_bytes), int(memory_bytes)))


def _log_to(capture: OutputCapture, settings: Settings, worker_id: str) -> None:
    logs.configure(settings.log_level, bool(settings.log_json), capture.log_stream(), worker_id=worker_id,
                   host=settings.host_name)
    # Celery would otherwise set up its own logging on the redirected stdout
    signals.setup_logging.connect(lambda **_: None, weak=False)


def main(argv: list[str] | None = None) -> int:
    """Entry point of a worker started with an engine's own interpreter (not forked)."""
    import argparse

    from taskkernel.settings import load_settings
    from taskkernel.workers.celery_app import make_celery

    parser = argparse.ArgumentParser(prog="python -m taskkernel.workers.process")
    parser.add_argument("--engine", required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--queue", required=True)
    args = parser.parse_args(argv)
    settings = load_settings()
    spec = registry.get_spec(settings.config_dir, args.engine)
    return run_worker(make_celery(settings), settings, spec, worker_id=args.worker_id, queue=args.queue)


if __name__ == "__main__":
    sys.exit(main())
