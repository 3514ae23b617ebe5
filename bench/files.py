"""Files in and out of a notebook: 100 MB up and down through the API, against curl of a static file.

The peer is the same client (`curl`) fetching the same file from `python -m http.server` on
loopback, from a directory on the same disk: what moving those bytes over HTTP on this machine
costs with no notebook, no Redis and no sandbox in between. Ours: `curl -T` (PUT) and `curl`
(GET) of /api/notebooks/<id>/files/big.bin. During each transfer the API's memory (RSS of the
gunicorn arbiter and its worker) is sampled every 10 ms; its peak over the idle baseline shows
whether the transfer was streamed. Run alone: `python -m bench.files [--size-mb 100] [--reps 3]`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.results import Results
from bench.services import Processes, Stack, descendants, http_ok, wait_until
from taskkernel.redis_server import free_port

FIGURE = "9. files"
OURS_UP = "taskkernel upload (curl -T, PUT)"
OURS_DOWN = "taskkernel download (curl, GET)"
PEER = "curl of a static file (python -m http.server)"
FLOOR_WRITE = "floor: copying the file on the same disk (shutil.copyfile)"


def size_mb(quick: bool) -> int:
    """The file's size in a run of the whole bench (`--quick`: a tenth)."""
    return 10 if quick else 100


def metric_time(size_mb: int) -> str:
    return f"{size_mb} MiB: time (s)"


def metric_rate(size_mb: int) -> str:
    return f"{size_mb} MiB: throughput (MB/s)"


METRIC_RSS = "API RSS above idle, peak during the transfer (MiB)"


class MemorySampler:
    """Samples the summed RSS of a process and its descendants every `interval_s`, in a thread."""

    def __init__(self, pid: int, interval_s: float = 0.01):
        self.pid, self.interval_s = pid, interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            self._stop.wait(self.interval_s)


def tree_rss(pid: int) -> int:
    """Bytes resident in `pid` and its descendants (0 for those gone)."""
    total = 0
    for each in [pid, *descendants(pid)]:
        try:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def curl(*args: str, timeout_s: float = 300) -> float:
    """Seconds one curl takes (it must succeed: -f)."""
    started = time.perf_counter()
    subprocess.run(["curl", "-sSf", "-o", "/dev/null", *args], check=True, timeout=timeout_s)
    return time.perf_counter() - started


def measure(stack: Stack, processes: Processes, results: Results, *, size_mb: int = 100, reps: int = 3,
            log=lambda text: None) -> None:
    """Add the files figure's rows to `results` (interleaved repetitions: peer, upload, download)."""
    if shutil.which("curl") is None:
        for system in (PEER, OURS_UP, OURS_DOWN):
            results.missing(FIGURE, system, metric_time(size_mb), "s", "curl is not installed (apt-get install curl)")
        return
    size = size_mb * 1024 * 1024
    with tempfile.TemporaryDirectory(prefix="bench-files-") as directory:
        big = Path(directory) / "big.bin"
        with open(big, "wb") as out:
            for _ in range(size_mb):
                out.write(os.urandom(1024 * 1024))
        port = free_port()
        server = processes.start("http.server", [sys.executable, "-m", "http.server", str(port), "--bind",
                                                 "127.0.0.1", "--directory", directory], dict(os.environ))
        notebook = stack.client().start("python")
        try:
            wait_until(lambda: http_ok(port, "/"), 30, "python -m http.server", server)
            api_pid = stack.api.pid
            url = f"{stack.url}/api/notebooks/{notebook.id}/files/big.bin"
            curl("-T", str(big), url)  # warm-up: the helper starts, the page cache holds the file
            for rep in range(reps):
                started = time.perf_counter()
                shutil.copyfile(big, Path(directory) / "copy.bin")  # what writing the bytes costs this disk
                results.add(FIGURE, FLOOR_WRITE, metric_time(size_mb), "s", [time.perf_counter() - started])
                for system, args in ((PEER, [f"http://127.0.0.1:{port}/big.bin"]),
                                     (OURS_UP, ["-T", str(big), url]), (OURS_DOWN, [url])):
                    idle = tree_rss(api_pid)
                    with MemorySampler(api_pid) as sampler:
                        seconds = curl(*args)
                    results.add(FIGURE, system, metric_time(size_mb), "s", [seconds])
                    results.add(FIGURE, system, metric_rate(size_mb), "MB/s", [size / 1e6 / seconds],
                                higher_is_better=True)
                    if system != PEER:
                        results.add(FIGURE, system, METRIC_RSS, "MiB", [max(0, sampler.peak - idle) / 2**20])
                    log(f"files rep {rep + 1} {system}: {seconds:.3f} s, {size / 1e6 / seconds:.0f} MB/s, "
                        f"API peak +{max(0, sampler.peak - idle) / 2**20:.1f} MiB")
            back = Path(directory) / "back.bin"
            subprocess.run(["curl", "-sSf", "-o", str(back), url], check=True, timeout=300)
            if back.read_bytes() != big.read_bytes():
                results.note(FIGURE, "failed: the downloaded file differs from the uploaded one")
        finally:
            notebook.close()
            processes.stop(server)
    results.note(FIGURE, f"{size_mb} MiB of random bytes; curl is the client for all three; the peer is "
                         "`python -m http.server` serving the file from the same disk on loopback; each upload "
                         "replaces the file (a write, where the peer only reads: the floor row is a plain "
                         "copy of the file on the same disk); the API "
                         "runs on the worker's host, so it takes the fd the worker's file helper opened (as "
                         "the engine's uid) over the worker's local socket: upload by splice(2) from the "
                         "client's socket, download by sendfile; RSS is of the API's gunicorn arbiter + "
                         "worker, sampled every 10 ms")

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    processes = Processes()
    stack = Stack(processes, pool=1)
    results = Results()
    try:
        stack.start()
        measure(stack, processes, results, size_mb=args.size_mb, reps=args.reps,
                log=lambda text: print(text, file=sys.stderr, flush=True))
    finally:
        stack.close()
        processes.stop_all()
    for row in results.rows:
        values = "/".join(f"{v:.3f}" for v in sorted(row.values))
        print(f"{row.system:<46} {row.metric:<52} median {row.median:10.3f} {row.unit:<5} (min..max {values})")
    for note in results.notes.get(FIGURE, []):
        print("note:", note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
