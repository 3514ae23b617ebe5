"""A private Redis set watched by Sentinel on loopback: a primary, replicas and sentinels, for tests
and benchmarks of failover (the same redis-server binary runs as a sentinel with --sentinel).

Hardened as taskkernel/redis_server.py's single server is: every server has its users and the
replication users (`replica`, `sentinel`); the sentinels require a password of their own, and
their files (which Sentinel rewrites, in plain text) are 0600 in 0700 directories owned by
redis-server's uid. Clients use `ReplicatedRedis.url`, a redis+sentinel:// URL
(taskkernel/connections.py).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time

import redis

from taskkernel.connections import sentinel_url
from taskkernel.exceptions import ConfigurationError
from taskkernel.redis_server import SENTINEL_USER, UNPRIVILEGED_UID, RedisServer, _quoted, free_port, launch

SERVICE = "taskkernel"


class SentinelServer:
    """One `redis-server --sentinel` on 127.0.0.1 that monitors `primary` as `service`."""

    def __init__(self, primary: RedisServer, *, password: str, service: str = SERVICE, quorum: int = 2,
                 down_after_ms: int = 1000, failover_timeout_ms: int = 10_000):
        self.port = free_port()
        self.primary, self.password, self.service = primary, password, service
        self.quorum, self.down_after_ms, self.failover_timeout_ms = quorum, down_after_ms, failover_timeout_ms
        self.run_as_uid = UNPRIVILEGED_UID if os.geteuid() == 0 else os.geteuid()
        self.dir = tempfile.mkdtemp(prefix="taskkernel-sentinel-")
        self.conf_path = os.path.join(self.dir, "sentinel.conf")
        self.process: subprocess.Popen | None = None

    def config(self) -> str:
        service = self.service
        return "\n".join([
            f"port {self.port}",
            "bind 127.0.0.1",
            "daemonize no",
            f"dir {_quoted(self.dir)}",
            "loglevel warning",
            "sentinel resolve-hostnames no",
            f"requirepass {_quoted(self.password)}",  # for clients and the other sentinels
            f"sentinel sentinel-pass {_quoted(self.password)}",
            f"sentinel monitor {service} 127.0.0.1 {self.primary.port} {self.quorum}",
            f"sentinel down-after-milliseconds {service} {self.down_after_ms}",
            f"sentinel failover-timeout {service} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {service} 1",
            f"sentinel auth-user {service} {SENTINEL_USER}",
            f"sentinel auth-pass {service} {_quoted(self.primary.sentinel_password)}",
        ]) + "\n"

    def start(self) -> "SentinelServer":
        self.process = launch(self.dir, self.conf_path, self.config(), self.run_as_uid, "--sentinel")
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=1)

    def stop(self) -> None:
        _stop(self.process)
        shutil.rmtree(self.dir, ignore_errors=True)


class ReplicatedRedis:
    """A primary, `replicas` replicas and `sentinels` sentinels; `url` is what TASKKERNEL_REDIS_URL is set to.

    Args:
        down_after_ms: how long a silent primary takes to be judged down (Sentinel's
            down-after-milliseconds); a failover follows within about a second more.
    """

    def __init__(self, *, replicas: int = 1, sentinels: int = 3, down_after_ms: int = 1000, service: str = SERVICE):
        self.service = service
        self.servers = [RedisServer(replicated=True)]
        self.servers += [RedisServer(replica_of=self.servers[0]) for _ in range(replicas)]
        self.sentinel_password = secrets.token_hex(16)
        self.sentinels = [SentinelServer(self.servers[0], password=self.sentinel_password, service=service,
                                         quorum=sentinels // 2 + 1, down_after_ms=down_after_ms)
                          for _ in range(sentinels)]

    @property
    def password(self) -> str:
        return self.servers[0].password

    def db_url(self, db: int, *, admin: bool = False) -> str:
        from taskkernel.redis_server import ADMIN_USER, SERVICE_USER

        primary = self.servers[0]
        user, password = (ADMIN_USER, primary.admin_password) if admin else (SERVICE_USER, primary.password)
        return sentinel_url([("127.0.0.1", s.port) for s in self.sentinels], self.service, username=user,
                            password=password, db=db, sentinel_password=self.sentinel_password)

    @property
    def url(self) -> str:
        return self.db_url(0)

    @property
    def admin_url(self) -> str:
        return self.db_url(0, admin=True)

    def start(self, timeout_s: float = 20.0) -> "ReplicatedRedis":
        try:
            for server in self.servers:
                server.start()
            for sentinel in self.sentinels:
                sentinel.start()
            self.wait_until_watched(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def primary(self) -> RedisServer:
        """The server the sentinels name as primary now."""
        host, port = self.sentinels[0].client().sentinel_get_master_addr_by_name(self.service)
        return next(s for s in self.servers if s.port == int(port))

    def wait_until_watched(self, timeout_s: float, replicas: int | None = None) -> None:
        """Until every sentinel knows the primary, its replicas (all but the primary, or `replicas`)
        and every other sentinel, and the replicas are in sync: a failover can happen now."""
        want = len(self.servers) - 1 if replicas is None else replicas
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if all(self._watched(sentinel, want) for sentinel in self.sentinels):
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise ConfigurationError(f"the sentinels did not agree on {self.service} in {timeout_s} s")
            time.sleep(0.1)

    def _watched(self, sentinel: SentinelServer, replicas: int) -> bool:
        client = sentinel.client()
        try:
            master = client.sentinel_master(self.service)
            if master.get("is_sdown") or master.get("is_odown") or not master.get("is_master"):
                return False
            if int(master["num-other-sentinels"]) < len(self.sentinels) - 1:
                return False
            ok = [r for r in client.sentinel_slaves(self.service)
                  if not r.get("is_sdown") and r.get("master-link-status") == "ok"]
            return len(ok) >= replicas
        finally:
            client.close()

    def kill_primary(self) -> RedisServer:
        """SIGKILL the primary (no shutdown, no last replication); returns it, for a restart."""
        primary = self.primary()
        primary.process.kill()
        primary.process.wait(5)
        return primary

    def wait_for_failover(self, old: RedisServer, timeout_s: float = 20.0) -> RedisServer:
        """Until every sentinel names a primary other than `old`; returns it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                ports = set()
                for sentinel in self.sentinels:
                    client = sentinel.client()
                    try:
                        ports.add(int(client.sentinel_get_master_addr_by_name(self.service)[1]))
                    finally:
                        client.close()
                if len(ports) == 1 and old.port not in ports:
                    return next(s for s in self.servers if s.port in ports)
            except redis.RedisError:
                pass
            time.sleep(0.05)
        raise ConfigurationError(f"no failover away from port {old.port} in {timeout_s} s")

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            server.stop()

    def __enter__(self) -> "ReplicatedRedis":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
