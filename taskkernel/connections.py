"""Redis clients from TASKKERNEL_REDIS_URL: one server, or a service that Redis Sentinel watches.

Every part of taskkernel (API, supervisors, workers, Celery's broker, the gateway, the CLI) makes its
Redis client here, so a Sentinel URL means the same thing to all of them:

    redis+sentinel://[user:password@]host:port[,host:port...]/<service>[/<db>][?sentinel_username=..&sentinel_password=..]

The hosts are the sentinels; `user:password` log in to the primary (the ACL user of
taskkernel/redis_server.py); `sentinel_username`/`sentinel_password`, if the sentinels require
a login, log in to them. A client asks the sentinels for the primary on every new connection, and
drops its connections when the answer changes or the server it holds says it is a replica now
(redis-py's SentinelManagedConnection), so every part follows a failover by itself. kombu speaks
Sentinel as `sentinel://...;sentinel://...` with `master_name` in its transport options:
`celery_broker` translates.

Replication is asynchronous: a write that the primary acknowledged can be lost when it dies before
a replica has it. `replicated` runs a write and then `WAIT`s for replicas on the same connection
(WAIT counts that connection's writes), for the writes whose acceptance the API and the workers
promise: a submitted cell and a finished cell.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from dataclasses import dataclass

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel

from taskkernel.exceptions import ConfigurationError

log = logging.getLogger("taskkernel.redis")

SENTINEL_SCHEME = "redis+sentinel"
DEFAULT_SENTINEL_PORT = 26379
# how long one question to one sentinel may take: a frozen sentinel costs this, then the next is asked
SENTINEL_SOCKET_TIMEOUT_S = 1.0
_SENTINEL_QUERY = ("sentinel_username", "sentinel_password")


@dataclass(frozen=True)
class SentinelUrl:
    """A parsed redis+sentinel:// URL."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None

    def sentinel_kwargs(self) -> dict:
        """What redis-py's and kombu's Sentinel use to talk to the sentinels themselves."""
        found = {"socket_timeout": SENTINEL_SOCKET_TIMEOUT_S, "socket_connect_timeout": SENTINEL_SOCKET_TIMEOUT_S}
        if self.sentinel_username:
            found["username"] = self.sentinel_username
        if self.sentinel_password:
            found["password"] = self.sentinel_password
        return found

    def primary_kwargs(self) -> dict:
        return {"db": self.db, "username": self.username, "password": self.password}


def is_sentinel(url: str) -> bool:
    return url.split(":", 1)[0].lower() == SENTINEL_SCHEME


def parse_sentinel_url(url: str) -> SentinelUrl:
    """The parts of a redis+sentinel:// URL; raises ConfigurationError (without the URL's password)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != SENTINEL_SCHEME:
        raise ConfigurationError(f"not a {SENTINEL_SCHEME}:// URL")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        username = urllib.parse.unquote(user) or None
        password = urllib.parse.unquote(secret) if colon else None
    sentinels = []
    for host in hosts.split(","):
        try:
            split = urllib.parse.urlsplit("//" + host)
            port = split.port or DEFAULT_SENTINEL_PORT
        except ValueError:
            split, port = None, 0
        if not split or not split.hostname:
            raise ConfigurationError(f"{SENTINEL_SCHEME} URL: {host!r} is not host:port")
        sentinels.append((split.hostname, port))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ConfigurationError(f"{SENTINEL_SCHEME} URL: the path must be /<service>[/<db>], not {parts.path!r}")
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    unknown = set(query) - set(_SENTINEL_QUERY)
    if unknown:
        raise ConfigurationError(f"{SENTINEL_SCHEME} URL: unknown parameter(s) {sorted(unknown)}")
    return SentinelUrl(
        sentinels=tuple(sentinels), service=urllib.parse.unquote(path[0]), db=int(path[1]) if len(path) == 2 else 0,
        username=username, password=password,
        sentinel_username=query.get("sentinel_username", [None])[0] or None,
        sentinel_password=query.get("sentinel_password", [None])[0] or None)


def sentinel_url(sentinels, service: str, *, username: str = "", password: str = "", db: int = 0,
                 sentinel_password: str = "") -> str:
    """The redis+sentinel:// URL of `service` watched by `sentinels` ((host, port) pairs)."""
    login = ""
    if username or password:
        login = urllib.parse.quote(username, safe="") + (":" + urllib.parse.quote(password, safe="") if password else "") + "@"
    hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in sentinels)
    query = "?" + urllib.parse.urlencode({"sentinel_password": sentinel_password}) if sentinel_password else ""
    return f"{SENTINEL_SCHEME}://{login}{hosts}/{urllib.parse.quote(service, safe='')}/{db}{query}"


class BlockingSentinelConnectionPool(redis.sentinel.SentinelConnectionPool, redis.BlockingConnectionPool):
    """A Sentinel-managed pool that waits for a free connection, as the API's and gateway's pools do."""


def connect(url: str, *, max_connections: int | None = None, timeout_s: float | None = None,
            connection_class: type | None = None, **kwargs) -> redis.Redis:
    """A redis-py client of `url` (redis://, rediss://, unix:// or redis+sentinel://).

    Args:
        max_connections: with it, a blocking pool of that many connections that waits up to
            `timeout_s` for a free one (the API's, the gateway's); without, redis-py's default pool.
        connection_class: a Connection subclass for redis:// (the API's DeadlineConnection); for a
            Sentinel URL its Sentinel twin is used (deadlines.DeadlineSentinelConnection).
        kwargs: passed to the connections (health_check_interval, socket_timeout, ...).
    """
    if not is_sentinel(url):
        if max_connections is None and connection_class is None:
            return redis.Redis.from_url(url, **kwargs)
        pool_kwargs = dict(kwargs)
        if connection_class is not None:
            pool_kwargs["connection_class"] = connection_class
        if max_connections is not None:
            pool = redis.BlockingConnectionPool.from_url(url, max_connections=max_connections,
                                                         timeout=timeout_s, **pool_kwargs)
        else:
            pool = redis.ConnectionPool.from_url(url, **pool_kwargs)
        return redis.Redis(connection_pool=pool)
    target = parse_sentinel_url(url)
    manager = redis.sentinel.Sentinel(list(target.sentinels), sentinel_kwargs=target.sentinel_kwargs())
    pool_kwargs = {**target.primary_kwargs(), **kwargs}
    if connection_class is not None:
        pool_kwargs["connection_class"] = connection_class
    if max_connections is not None:
        return manager.master_for(target.service, connection_pool_class=BlockingSentinelConnectionPool,
                                  max_connections=max_connections, timeout=timeout_s, **pool_kwargs)
    return manager.master_for(target.service, **pool_kwargs)


def connect_async(url: str, **kwargs) -> redis.asyncio.Redis:
    """A redis.asyncio client of `url`, as `connect` makes a synchronous one (the gateway's event loop)."""
    if not is_sentinel(url):
        return redis.asyncio.Redis.from_url(url, **kwargs)
    target = parse_sentinel_url(url)
    manager = redis.asyncio.sentinel.Sentinel(list(target.sentinels), sentinel_kwargs=target.sentinel_kwargs())
    return manager.master_for(target.service, **{**target.primary_kwargs(), **kwargs})


def celery_broker(url: str) -> tuple[str, dict]:
    """kombu's broker URL for `url` and the transport options it needs (master_name, sentinel_kwargs)."""
    if not is_sentinel(url):
        return url, {}
    target = parse_sentinel_url(url)
    login = ""
    if target.username or target.password:
        login = (urllib.parse.quote(target.username or "", safe="")
                 + (":" + urllib.parse.quote(target.password, safe="") if target.password else "") + "@")
    broker = ";".join(f"sentinel://{login}{f'[{h}]' if ':' in h else h}:{p}/{target.db}" for h, p in target.sentinels)
    return broker, {"master_name": target.service, "sentinel_kwargs": target.sentinel_kwargs()}


class Durability:
    """How long an acknowledged write waits to be on replicas: TASKKERNEL_REDIS_WAIT_REPLICAS (-1: 1 for
    a Sentinel URL, whose failover promotes a replica; 0 for a single server) and _WAIT_TIMEOUT_MS.

    After a WAIT that timed out (no replica connected: after a failover, until the old primary
    comes back as a replica), writes wait only DEGRADED_WAIT_MS for DEGRADED_S, rather than the
    whole timeout each: nothing is gained by waiting for a replica that is not there.
    """

    DEGRADED_S = 5.0
    DEGRADED_WAIT_MS = 5

    def __init__(self, replicas: int = 0, timeout_ms: int = 500):
        self.replicas, self.timeout_ms = replicas, timeout_ms
        self._degraded_until = 0.0

    def __repr__(self) -> str:
        return f"Durability(replicas={self.replicas}, timeout_ms={self.timeout_ms})"

    @classmethod
    def from_settings(cls, settings) -> "Durability":
        replicas = settings.redis_wait_replicas
        if replicas < 0:
            replicas = 1 if is_sentinel(settings.redis_url) else 0
        return cls(replicas, settings.redis_wait_timeout_ms)

    def _timeout_ms(self) -> int:
        return self.DEGRADED_WAIT_MS if time.monotonic() < self._degraded_until else self.timeout_ms

    def run(self, client: redis.Redis, script, keys: list, args: list):
        """Run the registered `script` and, with replicas, WAIT until that many have it (at most
        timeout_ms), on one connection (WAIT counts that connection's writes): a write acknowledged
        after this survives a failover.

        When fewer replicas confirm in time (one is down or far behind), the write stands on the
        primary alone: logged, and answered as usual (a replica down must not stop the service). A
        connection lost before WAIT answers raises, as the write itself would: the callers' retry
        (submit and complete are idempotent) repeats both.
        """
        if self.replicas <= 0:
            return script(keys=keys, args=args)
        pipe = client.pipeline(transaction=False)
        script(keys=keys, args=args, client=pipe)
        timeout_ms = self._timeout_ms()
        pipe.execute_command("WAIT", self.replicas, timeout_ms)
        got, acked = pipe.execute()
        self._check(acked, timeout_ms)
        return got

    async def run_async(self, client: redis.asyncio.Redis, script, keys: list, args: list):
        """`run` on a redis.asyncio client (the gateway's event loop)."""
        if self.replicas <= 0:
            return await script(keys=keys, args=args)
        async with client.pipeline(transaction=False) as pipe:
            await script(keys=keys, args=args, client=pipe)
            timeout_ms = self._timeout_ms()
            pipe.execute_command("WAIT", self.replicas, timeout_ms)
            got, acked = await pipe.execute()
        self._check(acked, timeout_ms)
        return got

    def _check(self, acked, timeout_ms: int) -> None:
        if int(acked) >= self.replicas:
            self._degraded_until = 0.0
            return
        if timeout_ms == self.timeout_ms:  # once per episode, not for every write
            log.warning("a write reached %s of %s replicas within %s ms: it would be lost if the primary "
                        "failed now; for %s s, writes wait %s ms", acked, self.replicas, timeout_ms,
                        self.DEGRADED_S, self.DEGRADED_WAIT_MS)
        self._degraded_until = time.monotonic() + self.DEGRADED_S
