"""A memory and a pids cgroup per engine, where the host lets the service make them (cgroup v1).

rlimits bound one process; a cgroup bounds all of a notebook's processes together: the memory
its engine and every child use (past the limit the kernel's OOM killer ends one of them, and the
worker reports the engine's death), and how many processes it may run (a fork bomb stops there).
The cgroups are made beneath the service's own, so a deployment's limits still hold, one per
worker (`taskkernel-<worker id>`), and removed when the worker is reaped. Hosts with only the
unified (v2) hierarchy or without write access get none; `available()` says which.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = {"memory": "memory.limit_in_bytes", "pids": "pids.max"}
DEFAULT_NOTEBOOK_PROCESSES = 1024


def _own_path(controller: str) -> Path | None:
    """Where this process sits in a v1 hierarchy (`/proc/self/cgroup`: `4:memory:/some/path`)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, names, path = line.split(":", 2)
        if controller in names.split(","):
            base = ROOT / controller
            return base / path.lstrip("/") if base.is_dir() else None
    return None


def available() -> bool:
    """Whether per-engine memory and pids cgroups can be made here."""
    if os.geteuid() != 0:
        return False
    return all((p := _own_path(c)) is not None and os.access(p, os.W_OK) for c in CONTROLLERS)


def _directories(worker_id: str) -> dict[str, Path]:
    return {c: p / f"taskkernel-{worker_id}" for c in CONTROLLERS if (p := _own_path(c)) is not None}


def create(worker_id: str, *, memory_bytes: int | None, processes: int) -> list[str]:
    """Make the worker's engine cgroups with their limits; returns the `cgroup.procs` files to join."""
    if not available():
        return []
    joined = []
    limits = {"memory": memory_bytes, "pids": processes}
    for controller, directory in _directories(worker_id).items():
        directory.mkdir(exist_ok=True)
        if limits[controller]:
            (directory / CONTROLLERS[controller]).write_text(str(int(limits[controller])))
        joined.append(str(directory / "cgroup.procs"))
    return joined


def enter_command(procs_files: list[str], argv: list[str]) -> list[str]:
    """`argv`, run from a shell that first moves itself into the cgroups (its children inherit them)."""
    if not procs_files:
        return argv
    script = 'for f in "$@"; do [ "$f" = -- ] && break; echo $$ > "$f" || exit 126; shift; done; shift; exec "$@"'
    return ["/bin/sh", "-c", script, "sh", *procs_files, "--", *argv]


def remove(worker_id: str, timeout_s: float = 2.0) -> None:
    """Kill whatever is left in the worker's cgroups and remove them."""
    for directory in _directories(worker_id).values():
        if not directory.is_dir():
            continue
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                for pid in (directory / "cgroup.procs").read_text().split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                directory.rmdir()
                break
            except OSError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.02)
