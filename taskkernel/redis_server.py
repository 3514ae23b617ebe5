"""A private redis-server on a free loopback port, for `taskkernel up`, the tests and benchmarks.

The server is Debian's `redis-server` from PATH (7.0 with security fixes backported), hardened
because a notebook cell is untrusted code on the same machine:

- its password is never on a command line (`/proc/<pid>/cmdline` is world-readable): the settings
  and the ACL go into a `redis.conf` (0600) in the server's private directory (0700), and even there
  the passwords are only SHA-256 hashes;
- ACL users: nobody can log in as `default`; `taskkernel` (the service: API, supervisors, workers)
  may run every command except Redis's @dangerous category (CONFIG, MODULE, DEBUG, SAVE, FLUSHALL,
  KEYS, REPLICAOF, ...); `admin` may run everything (tests' and benchmarks' housekeeping). Whoever
  has the service password can still read and change every key: the ACL keeps it from taking over
  the server (its files, modules, configuration, replication), not from the data;
- `maxmemory` with `noeviction`: a full Redis refuses writes (an OOM error) instead of silently
  evicting notebook records;
- started by root, it runs as an unprivileged uid of its own.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time

import redis

from taskkernel.exceptions import ConfigurationError
from taskkernel.settings import Settings

SERVICE_USER = "taskkernel"
ADMIN_USER = "admin"
# What the service user may run: everything but @dangerous. Measured, not guessed: with the full
# test suite on this ACL, ACL LOG stays empty (tests/conftest.py fails the session otherwise), so
# taskkernel, Celery, kombu and redis-py need nothing back from @dangerous (no INFO, KEYS, CLIENT
# LIST, ...; redis-py's CLIENT SETINFO is unknown to 7.0 and is not an ACL matter).
SERVICE_COMMANDS = "+@all -@dangerous"
# the users of a replicated set (taskkernel/redis_sentinel.py): replicas log in to their primary as
# REPLICA_USER, sentinels to every server as SENTINEL_USER, with the commands Redis documents for them
REPLICA_USER = "replica"
REPLICA_COMMANDS = "+psync +replconf +ping"
SENTINEL_USER = "sentinel"
SENTINEL_COMMANDS = ("allchannels +multi +slaveof +ping +exec +subscribe +config|rewrite +role +publish +info "
                     "+client|setname +client|kill +script|kill")
UNPRIVILEGED_UID = 199999  # redis-server's uid and gid when started by root: no passwd entry, no files
MIN_VERSION = (7, 0)  # the conf below uses 7.0's enable-*-command and enable-protected-configs


def redis_server_binary() -> str:
    """The path of `redis-server` on PATH; raises ConfigurationError if there is none, or too old."""
    found = shutil.which("redis-server")
    if not found:
        raise ConfigurationError("no redis-server on PATH: apt-get install redis-server")
    output = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=10).stdout
    match = re.search(r"v=(\d+)\.(\d+)", output)
    if not match or (int(match[1]), int(match[2])) < MIN_VERSION:
        raise ConfigurationError(f"{found} is not Redis 7 or newer ({output.strip()!r}): "
                                 "apt-get install redis-server")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class RedisServer:
    """One redis-server process bound to 127.0.0.1 with ACL users, a memory cap and no persistence.

    Args:
        port: TCP port on 127.0.0.1 (default: a free one).
        password: the service user's password (default: 128 random bits).
        persistent: append-only file fsynced on every write, so data survives a restart.
        maxmemory_bytes: Redis's `maxmemory` (noeviction); 0: no limit.
        run_as_uid: uid and gid of redis-server; default UNPRIVILEGED_UID when this process is
            root, else this process's own (only root can change it).
        replica_of: start as a replica of that server, with its users and passwords (any server
            of the set can be promoted and serve the same clients: taskkernel/redis_sentinel.py).
        replicated: part of a replicated set (a primary that replicas follow): adds the ACL users
            `replica` (PSYNC, REPLCONF, PING) and `sentinel` (what Sentinel documents it needs), and
            `masterauth` so that it can follow another server of the set after a failover.
    """

    def __init__(self, port: int | None = None, password: str | None = None, persistent: bool = False,
                 maxmemory_bytes: int = Settings.redis_maxmemory_bytes, run_as_uid: int | None = None,
                 replica_of: "RedisServer | None" = None, replicated: bool = False):
        self.port = port or free_port()
        self.password = password or secrets.token_hex(16)
        self.admin_password = secrets.token_hex(16)
        self.replica_of = replica_of
        self.replicated = replicated or replica_of is not None
        self.replication_password = secrets.token_hex(16)
        self.sentinel_password = secrets.token_hex(16)
        if replica_of is not None:
            self.password, self.admin_password = replica_of.password, replica_of.admin_password
            self.replication_password = replica_of.replication_password
            self.sentinel_password = replica_of.sentinel_password
        self.persistent = persistent
        self.maxmemory_bytes = maxmemory_bytes
        if run_as_uid is None:
            run_as_uid = UNPRIVILEGED_UID if os.geteuid() == 0 else os.geteuid()
        self.run_as_uid = run_as_uid
        self.dir = tempfile.mkdtemp(prefix="taskkernel-redis-")  # mode 0700
        self.conf_path = os.path.join(self.dir, "redis.conf")
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The service user's URL (database 0): what TASKKERNEL_REDIS_URL is set to."""
        return self.db_url(0)

    @property
    def admin_url(self) -> str:
        """The admin user's URL (database 0): every command, for housekeeping such as FLUSHDB."""
        return self.db_url(0, admin=True)

    def db_url(self, db: int, *, admin: bool = False) -> str:
        """The URL of database `db`, as the service user or (`admin`) the admin user."""
        user, password = (ADMIN_USER, self.admin_password) if admin else (SERVICE_USER, self.password)
        return f"redis://{user}:{password}@127.0.0.1:{self.port}/{db}"

    def config(self) -> str:
        """The text of redis.conf: settings and ACL users (passwords as SHA-256 hashes only)."""
        def hashed(password: str) -> str:
            return "#" + hashlib.sha256(password.encode()).hexdigest()

        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            "protected-mode yes",
            "daemonize no",
            f"dir {_quoted(self.dir)}",
            'save ""',
            f"appendonly {'yes' if self.persistent else 'no'}",
            "appendfsync always",
            "maxclients 10000",
            "loglevel warning",
            f"maxmemory {self.maxmemory_bytes}",
            "maxmemory-policy noeviction",
            # Redis 7's defaults, written out so that no future default can turn them on
            "enable-protected-configs no",
            "enable-debug-command no",
            "enable-module-command no",
            # Nobody can log in as `default` (off, no password). Its permissions stay +@all because
            # Redis replays the append-only file as `default` and EXEC re-checks the ACL: with -@all
            # the MULTI/EXEC that Lua scripts are logged as would be dropped on load, i.e. lost on
            # restart (redis/redis#14541, fixed after 7.0).
            "user default off resetpass ~* &* +@all",
            f"user {SERVICE_USER} on {hashed(self.password)} ~* &* {SERVICE_COMMANDS}",
            f"user {ADMIN_USER} on {hashed(self.admin_password)} ~* &* +@all",
        ]
        if self.replicated:
            lines += [
                f"user {REPLICA_USER} on {hashed(self.replication_password)} {REPLICA_COMMANDS}",
                f"user {SENTINEL_USER} on {hashed(self.sentinel_password)} {SENTINEL_COMMANDS}",
                # in plain text (Redis must send it): this file is 0600 in a 0700 directory
                f"masteruser {REPLICA_USER}",
                f"masterauth {_quoted(self.replication_password)}",
                "replica-serve-stale-data no",  # a replica cut off from its primary answers nothing stale
            ]
        if self.replica_of is not None:
            lines.append(f"replicaof 127.0.0.1 {self.replica_of.port}")
        return "\n".join(lines) + "\n"

    def start(self, timeout_s: float = 10.0) -> "RedisServer":
        self.process = launch(self.dir, self.conf_path, self.config(), self.run_as_uid)
        deadline = time.monotonic() + timeout_s
        client = redis.Redis.from_url(self.url)
        while True:
            try:
                try:
                    client.ping()
                except redis.exceptions.MasterDownError:  # a replica still syncing: up, and it says so
                    pass
                client.close()
                return self
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise ConfigurationError(f"redis-server did not start on port {self.port}")
                time.sleep(0.02)

    def stop(self, keep_data: bool = False) -> None:
        """Stop the server; its data directory is removed unless `keep_data` (for a restart)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if not keep_data:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def launch(directory, conf_path, config: str, run_as_uid: int, *args: str) -> subprocess.Popen:
    """Start redis-server (or, with `--sentinel`, a sentinel) on `config`, written 0600 into the
    0700 `directory`, as `run_as_uid` (both owned by it), with no environment: nothing of this
    process's (tokens, URLs) is handed to it."""
    os.chmod(directory, 0o700)
    fd = os.open(conf_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as conf:
        conf.write(config)
    as_other_user = {}
    if run_as_uid != os.geteuid():
        for path in (directory, conf_path):
            os.chown(path, run_as_uid, run_as_uid)
        as_other_user = {"user": run_as_uid, "group": run_as_uid, "extra_groups": []}
    return subprocess.Popen([redis_server_binary(), str(conf_path), *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, env={}, cwd=directory, start_new_session=True,
                            **as_other_user)


def _quoted(value: str) -> str:
    """A redis.conf argument in double quotes (paths may hold spaces)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
