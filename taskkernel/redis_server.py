"""A private redis-server on a free loopback port, for `taskkernel up`, the tests and benchmarks."""

from __future__ import annotations

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

MIN_VERSION = (7, 0)  # what the tests and `up` are run against (Debian 12's 7.0.15)


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
    """One redis-server process bound to 127.0.0.1, with a random password and no persistence."""

    def __init__(self, port: int | None = None, password: str | None = None, persistent: bool = False):
        self.port = port or free_port()
        self.password = secrets.token_hex(16) if password is None else password
        self.persistent = persistent  # append-only file, fsync on every write: survives restarts
        self.dir = tempfile.mkdtemp(prefix="taskkernel-redis-")
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> "RedisServer":
        args = [
            redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "yes" if self.persistent else "no", "--appendfsync", "always",
            "--dir", self.dir, "--daemonize", "no",
            "--protected-mode", "yes", "--maxclients", "10000", "--loglevel", "warning",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout_s
        client = redis.Redis.from_url(self.url)
        while True:
            try:
                client.ping()
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
