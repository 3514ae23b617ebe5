"""sys.stdout and sys.stderr of an engine process: Python-level output sent as `stream` frames.

A print travels on the same socket as displays, results and errors, so its order among them is
exact (as ipykernel's OutStream does it). Text is batched: it goes out before any other frame,
when 64 KiB are waiting, or 50 ms after it was written (a flusher thread), so a hundred thousand
prints make a few hundred frames, not a hundred thousand. Output of C code and child processes
reaches fds 1 and 2 instead, which are pipes the worker reads. Each run of text keeps the parent
of the thread that wrote it (engines/parents.py), so a thread's late output is its own cell's.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable

from taskkernel.engines import parents

INTERVAL_S = 0.05
BATCH_CHARS = 64 * 1024

Sender = Callable[[str, str, dict], None]  # (stream name, text, parent header)


class OutStream(io.TextIOBase):
    """A text stream whose writes are batched into `stream` frames."""

    def __init__(self, name: str, fd: int, streams: "StreamSet"):
        super().__init__()
        self.name = name
        self._fd = fd
        self._streams = streams
        self.buffer = _BinaryWriter(self)

    @property
    def encoding(self) -> str:
        return "utf-8"

    @property
    def errors(self) -> str:
        return "backslashreplace"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._fd  # the pipe: what is written there arrives as well, through the worker

    def write(self, text) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self._streams.add(self.name, text)
        return len(text)

    def flush(self) -> None:
        self._streams.flush()


class _BinaryWriter:
    """`sys.stdout.buffer`: bytes written there are decoded and sent like text."""

    def __init__(self, stream: OutStream):
        self._stream = stream

    def write(self, data) -> int:
        self._stream.write(bytes(data).decode("utf-8", "replace"))
        return len(data)

    def flush(self) -> None:
        self._stream.flush()


class StreamSet:
    """The pending text of stdout and stderr, in the order written, and the thread that flushes it."""

    def __init__(self, send: Sender, interval_s: float = INTERVAL_S, batch_chars: int = BATCH_CHARS):
        self._send = send
        self.interval_s = interval_s
        self.batch_chars = batch_chars
        self._pending: list[list] = []  # [name, parent, text] runs
        self._size = 0
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._flushing = threading.Lock()

    def streams(self, stdout_fd: int = 1, stderr_fd: int = 2) -> tuple[OutStream, OutStream]:
        threading.Thread(target=self._flush_loop, name="taskkernel-streams", daemon=True).start()
        return OutStream("stdout", stdout_fd, self), OutStream("stderr", stderr_fd, self)

    def add(self, name: str, text: str) -> None:
        if not text:
            return
        parent = parents.current()
        with self._lock:
            if self._pending and self._pending[-1][0] == name and self._pending[-1][1] is parent:
                self._pending[-1][2] += text
            else:
                self._pending.append([name, parent, text])
            self._size += len(text)
            full = self._size >= self.batch_chars
            if len(self._pending) == 1 and not full:
                self._wake.notify()
        if full:
            self.flush()

    def flush(self) -> None:
        """Send what is pending now (before any other frame, so the order holds)."""
        with self._flushing:  # one sender at a time: runs go out in the order written
            with self._lock:
                pending, self._pending, self._size = self._pending, [], 0
            for name, parent, text in pending:
                self._send(name, text, parent)

    def _flush_loop(self) -> None:
        import signal

        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        while True:
            with self._lock:
                while not self._pending:
                    self._wake.wait()
            threading.Event().wait(self.interval_s)  # let more arrive: one frame per batch
            try:
                self.flush()
            except OSError:
                return  # the worker is gone; the reader thread ends the process
