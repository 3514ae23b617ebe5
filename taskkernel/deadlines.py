"""Request deadlines: the Redis calls an API request makes end by the request's own deadline.

redis-py bounds each read by its socket timeout (5 s) and may retry: with Redis frozen, a caller
that asked to wait 3 s heard after 5 s or more. The API sets a deadline per request (a context
variable: each request thread has its own) and its connections cut every connect, send and read
at what is left of it, raising redis.TimeoutError, which the API turns into its usual answers
(a 202 with the recorded cell, a 503 redis_unavailable).
"""

from __future__ import annotations

import contextvars
import time

import redis
from redis.connection import Connection
from redis.sentinel import SentinelManagedConnection

from taskkernel.connections import is_sentinel

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("taskkernel_deadline", default=None)


def set_deadline(seconds: float | None) -> None:
    """From now on, this thread's Redis calls end within `seconds` (None: no deadline)."""
    _deadline.set(None if seconds is None else time.monotonic() + seconds)


def remaining() -> float | None:
    """Seconds left before this thread's deadline, or None when it has none."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()


def _left() -> float | None:
    left = remaining()
    if left is not None and left <= 0:
        raise redis.TimeoutError("the request's deadline passed before Redis answered")
    return left


class _DeadlineMixin:
    """Cuts every connect, send and read of a redis-py connection at the calling thread's deadline."""

    def connect(self):
        left = _left()
        saved = self.socket_connect_timeout
        if left is not None and (saved is None or left < saved):
            self.socket_connect_timeout = left
        try:
            return super().connect()
        finally:
            self.socket_connect_timeout = saved

    def send_packed_command(self, command, check_health=True):
        _left()
        return super().send_packed_command(command, check_health=check_health)

    def read_response(self, disable_decoding=False, **kwargs):
        left = _left()
        if left is not None and "timeout" not in kwargs and (self.socket_timeout is None or left < self.socket_timeout):
            kwargs["timeout"] = left
        return super().read_response(disable_decoding, **kwargs)


class DeadlineConnection(_DeadlineMixin, Connection):
    """A redis-py connection whose every wait is cut at the calling thread's deadline."""


class DeadlineSentinelConnection(_DeadlineMixin, SentinelManagedConnection):
    """DeadlineConnection for a Sentinel URL: it finds the primary through the sentinels."""


def deadline_connection_class(url: str) -> type | None:
    """The deadline-bound connection class for `url`, or None where there is none (rediss://, unix://)."""
    if is_sentinel(url):
        return DeadlineSentinelConnection
    return DeadlineConnection if url.startswith("redis://") else None
