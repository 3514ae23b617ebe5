"""One bridge kernel's line to its notebook's feed: a single SSE stream, open while cells come.

Opening the feed (a TCP connection, a request, the API's notebook lookup) costs more than the cell
round trip itself, so the kernel keeps one stream open from its first cell on and reads it on a
thread that hands every item to the kernel's `route`. When nothing (a cell, a comm message from
the front end) has used it for `linger_s` the stream is closed, so an idle kernel holds none of
the API's request threads; the next use reopens it from the last position read, so nothing
published in between is missed or repeated.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable

from taskkernel.client import ApiError, Notebook

END = "end"  # the feed ended: the notebook was deleted
FAILED = "failed"  # the feed could not be read (the exception follows)


class FeedLine:
    """The feed of one notebook from `position` on, handed item by item to `route(kind, item)`:
    ("message", msg), (END, None) or (FAILED, exc), on the reader thread, in stream order."""

    def __init__(self, notebook: Notebook, route: Callable[[str, object], None], position: str = "0-0",
                 linger_s: float = 5.0, retry_s: float = 30.0):
        self.notebook = notebook
        self.route = route
        self.position = position
        self.linger_s = linger_s
        self.retry_s = retry_s
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._users = 0  # cells and comm deliveries waiting for what the feed brings
        self._quiet_from = 0.0  # monotonic time the last user left

    def begin(self) -> None:
        """Something is about to be sent whose messages come on the feed: make sure it is read."""
        with self._lock:
            self._users += 1
            if self._reader is None:
                self._reader = threading.Thread(target=self._read, name="taskkernel-feed", daemon=True)
                self._reader.start()

    def end(self) -> None:
        """That is done: the stream stays open `linger_s` more (for the next cell, a widget's echo)."""
        with self._lock:
            self._users -= 1
            self._quiet_from = time.monotonic()

    def _keep(self) -> bool:
        """Whether to go on reading after a quiet `linger_s`; when not, the reader is retired under
        the lock, so a use beginning right then starts a fresh one."""
        with self._lock:
            if self._users > 0 or time.monotonic() - self._quiet_from < self.linger_s:
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
                    self.route("message", message)
                self._retire()
                self.route(END, None)
                return
            except TimeoutError:  # quiet for linger_s: reopen if a cell is still running
                if not self._keep():
                    return
            except ApiError as exc:
                self._retire()
                self.route(FAILED, exc)
                return
            except (OSError, http.client.HTTPException) as exc:  # the API went away: resume where we were
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > self.retry_s:
                    self._retire()
                    self.route(FAILED, exc)
                    return
                time.sleep(0.5)
            finally:
                feed.close()

    def _retire(self) -> None:
        with self._lock:
            self._reader = None
