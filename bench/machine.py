"""What the machine is (cores, memory, CPU, versions) and what a process on it uses (/proc)."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# Distribution names whose versions every report states.
PACKAGES = [
    ("celery", "celery"), ("kombu", "kombu"), ("redis-py", "redis"), ("flask", "flask"),
    ("gunicorn", "gunicorn"), ("ipykernel", "ipykernel"), ("jupyter_client", "jupyter_client"),
    ("jupyter_kernel_gateway", "jupyter_kernel_gateway"), ("jupyter_server", "jupyter_server"),
    ("pyzmq", "pyzmq"), ("tornado", "tornado"), ("websocket-client", "websocket-client"),
]


def package_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def meminfo_kib() -> dict[str, int]:
    """/proc/meminfo as {field: KiB}."""
    values = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            values[name] = int(parts[0])
    return values


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def describe(redis_server_binary: str | None) -> dict[str, str]:
    """Machine, date and versions, as the report's header lists them."""
    facts = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "cpu": f"{os.cpu_count()} cores, {cpu_model()}",
        "memory": f"{meminfo_kib()['MemTotal'] / 1024 / 1024:.1f} GiB",
        "kernel": f"{platform.system()} {platform.release()}",
        "load average at start": load_average(),
        "python": sys.version.split()[0],
    }
    if redis_server_binary:
        try:
            out = subprocess.run([redis_server_binary, "--version"], capture_output=True, text=True,
                                 timeout=10).stdout
            facts["redis-server"] = next((w.split("=", 1)[1] for w in out.split() if w.startswith("v=")),
                                         out.strip())
        except (OSError, subprocess.TimeoutExpired):
            facts["redis-server"] = "unknown"
    from taskkernel import __version__

    facts["taskkernel"] = __version__
    for label, distribution in PACKAGES:
        facts[label] = package_version(distribution) or "not installed"
    return facts


@dataclass(frozen=True)
class Memory:
    """A process's memory in MiB: resident, proportional share, and private (unique) set."""

    rss: float
    pss: float
    uss: float


def process_memory(pid: int) -> Memory:
    """Read /proc/<pid>/smaps_rollup. USS is Private_Clean + Private_Dirty."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[name.strip()] = int(parts[0])
    mib = 1024.0
    return Memory(rss=fields.get("Rss", 0) / mib, pss=fields.get("Pss", 0) / mib,
                  uss=(fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)) / mib)


def total_memory(pids: list[int]) -> Memory:
    """The summed memory of several processes (one notebook's worker and engine processes)."""
    parts = [process_memory(pid) for pid in pids]
    return Memory(rss=sum(m.rss for m in parts), pss=sum(m.pss for m in parts), uss=sum(m.uss for m in parts))


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time consumed so far by the live processes `pids` (from /proc/<pid>/stat)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def idle_cpu_percent(pids: list[int], seconds: float) -> float:
    """The CPU the processes use over `seconds`, in percent of one core."""
    before = cpu_seconds(pids)
    time.sleep(seconds)
    return (cpu_seconds(pids) - before) / seconds * 100
