"""stdout/stderr capture at the file-descriptor level, batched by time and size.

fds 1 and 2 of the worker are pipes read by a pump thread, so output from print, threads,
subprocesses (`os.system`) and C extensions is all caught. The pump hands text to the current
sink in batches (every `interval_s` or `batch_bytes`); between cells, output goes to the worker's
log (the original stderr). `end()` drains what is still in the pipes, so a cell's output is
complete when its reply is published.
"""

from __future__ import annotations

import codecs
import io
import os
import select
import signal
import sys
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
    """Owns fds 1 and 2 of the process for its whole life."""

    def __init__(self, interval_s: float = INTERVAL_S, batch_bytes: int = BATCH_BYTES,
                 read_delay_s: float = READ_DELAY_S):
        self.interval_s = interval_s
        self.batch_bytes = batch_bytes
        self.read_delay_s = read_delay_s
        self.log_fd = -1  # the original stderr, for the worker's own logging
        self._pipes: dict[str, int] = {}
        self._decoders = {name: codecs.getincrementaldecoder("utf-8")("replace") for name in ("stdout", "stderr")}
        self._lock = threading.Lock()  # guards reads from the pipes and the pending batch
        self._pending: list[tuple[str, str]] = []
        self._pending_bytes = 0
        self._pending_since = 0.0
        self._sink: Sink | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    def start(self) -> None:
        """Swap fds 1 and 2 for pipes and start the pump; call once, in the worker process."""
        sys.stdout.flush()
        sys.stderr.flush()
        self.log_fd = os.dup(2)
        for name, fd in (("stdout", 1), ("stderr", 2)):
            read_end, write_end = os.pipe()
            os.dup2(write_end, fd)
            os.close(write_end)
            os.set_blocking(read_end, False)
            self._pipes[name] = read_end
        # unbuffered text streams: a print reaches the pipe at once, so it can stream live
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True, encoding="utf-8",
                                      errors="backslashreplace")
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True, encoding="utf-8",
                                      errors="backslashreplace")
        self._thread = threading.Thread(target=self._pump, name="taskkernel-capture", daemon=True)
        self._thread.start()

    def log_stream(self) -> io.TextIOWrapper:
        """A text stream onto the original stderr, for logging that must not enter any cell."""
        return io.TextIOWrapper(io.FileIO(self.log_fd, "w", closefd=False), write_through=True,
                                encoding="utf-8", errors="backslashreplace")

    def begin(self, sink: Sink) -> None:
        """Send output to `sink` from now on (a cell starts)."""
        self._flush_std()
        with self._lock:
            self._read_available()
            self._deliver_locked()
            self._sink = sink

    def flush(self) -> None:
        """Deliver everything written so far to the current sink (before a display_data, say)."""
        self._flush_std()
        with self._lock:
            self._read_available()
            self._deliver_locked()

    def end(self) -> None:
        """Drain everything written so far into the current sink, then detach it (a cell ends)."""
        self._flush_std()
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
        fds = list(self._pipes.values())
        got = 0
        while not self._stopped.is_set():
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
        for name, fd in self._pipes.items():
            while True:
                try:
                    chunk = os.read(fd, 1 << 16)
                except BlockingIOError:
                    break
                if not chunk:
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

    @staticmethod
    def _flush_std() -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
