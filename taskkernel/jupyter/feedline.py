"""One bridge kernel's line to its notebook's feed: a single SSE stream, open while cells come.

Opening the feed (a TCP connection, a request, the API's notebook lookup) costs more than the cell
round trip itself, so the kernel keeps one stream open from its first cell on and reads it on a
thread into a queue that the running cell drains. When no cell has run for `linger_s` the stream
is closed, so an idle kernel holds none of the API's request threads; the next cell reopens it
from the last position read, so nothing published in between is missed or repeated.
"""

from __future__ import annotations

import http.client
import queue
import threading
import time

from taskkernel.client import ApiError, Notebook

END = "end"  # the feed ended: the notebook was deleted
FAILED = "failed"  # the feed could not be read (the exception follows)


class FeedLine:
    """The feed of one notebook from `position` on, as ("message", msg) / (END, None) / (FAILED, exc)."""

    def __init__(self, notebook: Notebook, position: str = "0-0", linger_s: float = 5.0, retry_s: float = 30.0):
        self.notebook = notebook
        self.position = position
        self.linger_s = linger_s
        self.retry_s = retry_s
        self.items: queue.SimpleQueue[tuple[str, object]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._busy_until = 0.0  # monotonic time until which the stream is kept (a cell runs: inf)

    def begin_cell(self) -> None:
        """A cell is about to be queued: make sure the stream is (or will be) read."""
        with self._lock:
            self._busy_until = float("inf")
            if self._reader is None:
                self._reader = threading.Thread(target=self._read, name="taskkernel-feed", daemon=True)
                self._reader.start()

    def end_cell(self) -> None:
        """The cell is answered: keep the stream for `linger_s` more, for the next cell."""
        with self._lock:
            self._busy_until = time.monotonic() + self.linger_s

    def next(self, timeout_s: float | None = None) -> tuple[str, object]:
        """The next item; queue.Empty after `timeout_s`."""
        return self.items.get(timeout=timeout_s)

    def _keep(self) -> bool:
        """Whether to go on reading after a quiet `linger_s`; when not, the reader is retired under
        the lock, so a cell beginning right then starts a fresh one."""
        with self._lock:
            if time.monotonic() < self._busy_until:
                return True
            self._reader = None
            return False

    def _read(self) -> None:
        failing_since = None
        while True:
            feed = self.notebook.feed(after=self.position, read_timeout_s=self.linger_s)
            try:
                for message in feed:
                    failing_since = None
                    self.position = message.get("position") or self.position
                    self.items.put(("message", message))
                self._retire()
                self.items.put((END, None))
                return
            except TimeoutError:  # quiet for linger_s: reopen if a cell is still running
                if not self._keep():
                    return
            except ApiError as exc:
                self._retire()
                self.items.put((FAILED, exc))
                return
            except (OSError, http.client.HTTPException) as exc:  # the API went away: resume where we were
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > self.retry_s:
                    self._retire()
                    self.items.put((FAILED, exc))
                    return
                time.sleep(0.5)
            finally:
                feed.close()

    def _retire(self) -> None:
        with self._lock:
            self._reader = None
