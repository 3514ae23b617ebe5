"""Where a round trip's time goes: the cell's own timestamps, and py-spy profiles of the API and worker.

The breakdown needs nothing but the cell record (`submitted` is stamped by the API as it records
the cell, `started` by the worker as it claims it, `completed` as the worker starts writing the
result), read against the client's clock on the same machine. The profiles (with `--profile`)
sample the API's request process and the notebook's worker with py-spy while round trips run,
and keep the functions that hold the most samples.
"""

from __future__ import annotations

import collections
import datetime as dt
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

PHASES = (
    ("client -> cell recorded by the API", "HTTP in, Flask, notebook lookup, stream position"),
    ("recorded -> claimed by the worker", "submit script, Celery send_task, broker, Celery consumer, claim"),
    ("claimed -> result being written", "busy status, capture, compile and run, outputs"),
    ("result written -> client has it", "reply transaction, XREAD wake-up, cell read, JSON, HTTP out"),
)


def _epoch(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


def breakdown(sent: float, cell: dict, received: float) -> tuple[float, float, float, float]:
    """The four phases of one round trip in ms, from wall-clock send/receive times and the cell."""
    submitted, started, completed = (_epoch(cell[k]) for k in ("submitted", "started", "completed"))
    return ((submitted - sent) * 1000, (started - submitted) * 1000, (completed - started) * 1000,
            (received - completed) * 1000)


def py_spy() -> str | None:
    """The py-spy executable (installed with the `bench` extra), or None."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def record(pid: int, seconds: float, out: Path, subprocesses: bool = False) -> subprocess.Popen:
    """Start sampling `pid` (CPU-active frames, 500 Hz) into a collapsed-stack file."""
    args = [py_spy(), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "500",
            "--format", "raw", "--nonblocking", "-o", str(out)]
    if subprocesses:
        args.insert(2, "--subprocesses")
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize(path: Path, top: int = 40) -> list[tuple[float, float, str]]:
    """(inclusive %, self %, function (file)) of the most-sampled functions in a collapsed-stack file."""
    inclusive: collections.Counter = collections.Counter()
    own: collections.Counter = collections.Counter()
    total = 0
    try:
        text = path.read_text()
    except OSError:
        return []
    for line in text.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_short(f) for f in stack.split(";") if not f.startswith("process ")]
        for frame in set(frames):
            inclusive[frame] += n
        if frames:
            own[frames[-1]] += n
    if not total:
        return []
    boring = ("<module>", "_run_module_as_main", "_run_code", "main (", "build_parser", "cmd_", "Thread.",
              "_bootstrap", "BaseApplication.run", "Arbiter.", "Supervisor.", "run_worker", "WorkController.start",
              "Blueprint.start", "StartStopStep.start", "Consumer.start", "Evloop.start", "asynloop",
              "_worker (concurrent", "Worker.init_process", "ThreadWorker.run", "ThreadWorker.init_process")
    rows = [(100.0 * n / total, 100.0 * own[f] / total, f) for f, n in inclusive.most_common()
            if not f.startswith(boring)]
    return rows[:top]


def _short(frame: str) -> str:
    name, _, location = frame.partition(" (")
    path = location.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({path})"


def profile_roundtrips(api_pid: int, worker_pid: int, call, seconds: float, out_dir: Path) -> dict[str, list]:
    """Run `call` in a loop for `seconds` while py-spy samples the API and the worker."""
    stop = time.monotonic() + seconds + 1.5
    errors: list[BaseException] = []

    def load():
        try:
            while time.monotonic() < stop:
                call()
        except BaseException as exc:  # reported below; the profile is still useful
            errors.append(exc)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    time.sleep(0.5)
    api_out, worker_out = out_dir / "profile-api.raw", out_dir / "profile-worker.raw"
    samplers = [record(api_pid, seconds, api_out, subprocesses=True), record(worker_pid, seconds, worker_out)]
    for sampler in samplers:
        try:
            sampler.wait(seconds + 30)
        except subprocess.TimeoutExpired:
            sampler.kill()
            sampler.wait(5)
    loader.join(seconds + 30)
    if errors:
        raise errors[0]
    return {"API (gunicorn worker process)": summarize(api_out), "notebook worker": summarize(worker_out)}
