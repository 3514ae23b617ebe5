"""The engine's stdout/stderr, read by its worker from pipes and batched by time and size.

fds 1 and 2 of the engine process are pipes whose read ends the worker holds, so output from
print, threads, subprocesses (`os.system`) and C extensions is all caught, and nothing in the
engine can bypass it. A pump thread in the worker hands text to the current sink in batches
(every `interval_s` or `batch_bytes`); between cells, output goes to the worker's log. `flush()`
drains what is in the pipes, so a cell's output is complete when its reply is published.
"""

from __future__ import annotations

import codecs
import os
import select
import signal
import threading
import time
from collections.abc import Callable

Sink = Callable[[str, str], None]  # (stream name, text)

INTERVAL_S = 0.05
BATCH_BYTES = 64 * 1024
# Once output is waiting, the pump lets more arrive before reading: reading at every write made
# the pump and the printing thread hand the GIL to each other line by line (10,000 prints took
# 62 ms in a worker, 16 ms with the delay; 100,000 took 457 ms, 210 ms). The pipes keep the default
# 64 KiB: a larger F_SETPIPE_SZ was faster still for 100,000 lines (145 ms at 1 MiB) but counts
# against the service user's pipe-buffer quota (fs.pipe-user-pages-soft, 64 MiB by default), which
# a few hundred workers would exhaust, after which every new pipe gets a single page.
READ_DELAY_S = 0.005
PIPE_BYTES = 64 * 1024  # Linux's default pipe capacity: a read this large means the writer may be waiting


class OutputCapture:
    """Reads an engine's stdout and stderr pipes for the engine's whole life."""

    def __init__(self, pipes: dict[str, int], interval_s: float = INTERVAL_S, batch_bytes: int = BATCH_BYTES,
                 read_delay_s: float = READ_DELAY_S, log_fd: int = 2):
        self.interval_s = interval_s
        self.batch_bytes = batch_bytes
        self.read_delay_s = read_delay_s
        self.log_fd = log_fd  # output between cells goes to the worker's own log
        self._pipes = dict(pipes)
        for fd in self._pipes.values():
            os.set_blocking(fd, False)
        self._decoders = {name: codecs.getincrementaldecoder("utf-8")("replace") for name in ("stdout", "stderr")}
        self._lock = threading.Lock()  # guards reads from the pipes and the pending batch
        self._pending: list[tuple[str, str]] = []
        self._pending_bytes = 0
        self._pending_since = 0.0
        self._sink: Sink | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    def start(self) -> None:
        """Start the pump; call once."""
        self._thread = threading.Thread(target=self._pump, name="taskkernel-capture", daemon=True)
        self._thread.start()

    def begin(self, sink: Sink) -> None:
        """Send output to `sink` from now on (a cell starts)."""
        with self._lock:
            self._read_available()
            self._deliver_locked()
            self._sink = sink

    def flush(self) -> None:
        """Deliver everything written so far to the current sink (before a display_data, say)."""
        with self._lock:
            self._read_available()
            self._deliver_locked()

    def end(self) -> None:
        """Drain everything written so far into the current sink, then detach it (a cell ends)."""
        with self._lock:
            self._read_available()
            self._deliver_locked()
            for name in self._decoders:
                tail = self._decoders[name].decode(b"", final=True)
                if tail:
                    self._send(name, tail)
            self._sink = None

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # --- the pump ------------------------------------------------------------------------------

    def _pump(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2, signal.SIGINT, signal.SIGTERM})
        got = 0
        while not self._stopped.is_set() and self._pipes:
            fds = list(self._pipes.values())
            try:
                # with nothing waiting to be sent, sleep until output arrives (idle workers stay idle)
                ready, _, _ = select.select(fds, [], [], self.interval_s if self._pending else None)
                if ready and self.read_delay_s and got < PIPE_BYTES:  # a full pipe is read at once
                    time.sleep(self.read_delay_s)
                got = 0
                with self._lock:
                    if ready:
                        got = self._read_available()
                    if self._pending and (self._pending_bytes >= self.batch_bytes
                                          or time.monotonic() - self._pending_since >= self.interval_s):
                        self._deliver_locked()
            except Exception as exc:  # keep pumping: a dead pump would block every print
                self._log(f"taskkernel capture: {exc!r}\n")
                time.sleep(self.interval_s)

    def _read_available(self) -> int:
        """Read what the pipes hold into the pending batch; returns the bytes read."""
        total = 0
        for name, fd in list(self._pipes.items()):
            while True:
                try:
                    chunk = os.read(fd, 1 << 16)
                except BlockingIOError:
                    break
                if not chunk:  # the engine (and whatever it started) closed it: it is gone
                    del self._pipes[name]
                    os.close(fd)
                    break
                total += len(chunk)
                text = self._decoders[name].decode(chunk)
                if not text:
                    continue
                if not self._pending:
                    self._pending_since = time.monotonic()
                if self._pending and self._pending[-1][0] == name:
                    self._pending[-1] = (name, self._pending[-1][1] + text)
                else:
                    self._pending.append((name, text))
                self._pending_bytes += len(chunk)
                if self._pending_bytes >= self.batch_bytes:
                    self._deliver_locked()
        return total

    def _deliver_locked(self) -> None:
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        for name, text in pending:
            self._send(name, text)

    def _send(self, name: str, text: str) -> None:
        if self._sink is not None:
            try:
                self._sink(name, text)
                return
            except Exception as exc:
                self._log(f"taskkernel capture sink failed: {exc!r}\n")
        self._log(text)

    def _log(self, text: str) -> None:
        if self.log_fd >= 0:
            try:
                os.write(self.log_fd, text.encode("utf-8", "backslashreplace"))
            except OSError:
                pass
