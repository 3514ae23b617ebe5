"""The one source of configuration: a frozen Settings object read from TASKKERNEL_* variables."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
from collections.abc import Mapping
from pathlib import Path

from taskkernel.exceptions import ConfigurationError

PREFIX = "TASKKERNEL_"
# A wheel installs config/ as taskkernel/config (package data); a checkout has it beside the package.
_INSTALLED_CONFIG_DIR = Path(__file__).resolve().parent / "config"
SOURCE_CONFIG_DIR = (_INSTALLED_CONFIG_DIR if (_INSTALLED_CONFIG_DIR / "engines").is_dir()
                     else Path(__file__).resolve().parent.parent / "config")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a taskkernel process may be configured with; units are in the names."""

    redis_url: str = ""  # empty: `taskkernel up` starts a private redis-server
    # maxmemory of that private Redis (noeviction: when full, writes fail with 507 and nothing is
    # evicted). Measured: a feed message takes ~0.75 KB, a small cell record ~1.7 KB, so 1 GiB is
    # ~130 notebooks whose capped feed is full (10,000 messages, ~7.5 MB) or far more typical ones.
    # Fixed rather than a share of RAM, which would follow the host's RAM and not a container's
    # limit; raise it for many busy notebooks, or move checkpoints out with checkpoint_dir.
    redis_maxmemory_bytes: int = 1024 * 1024 * 1024
    # a submitted or finished cell is acknowledged once this many replicas have it (Redis's WAIT), so a
    # Sentinel failover loses no accepted cell; -1: 1 with a redis+sentinel:// URL, 0 otherwise
    redis_wait_replicas: int = -1
    redis_wait_timeout_ms: int = 500  # then the write is acknowledged anyway (a replica down), with a warning
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_threads: int = 64
    # the Jupyter gateway (taskkernel/gateway): Jupyter Server's --gateway-url, on its own port
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8001
    gateway_threads: int = 16  # threads for the synchronous store calls; websockets hold none
    token: str = ""  # the service token; empty: no authentication (loopback only)
    allow_networks: str = ""  # comma-separated CIDRs allowed to call the API (empty: all)
    deny_networks: str = ""  # comma-separated CIDRs refused (403), checked before allow
    cors_origins: str = ""  # comma-separated origins allowed by CORS ("*" for any)
    allowed_hosts: str = ""  # comma-separated Host names a tokenless API answers besides loopback ones
    max_feed_subscribers: int = 0  # SSE streams one API process serves at once (0: api_threads - 8)
    sandbox: str = "bubblewrap"  # how engines are isolated: "bubblewrap" (or "required"), or "none" (unisolated)
    sandbox_uid_base: int = 200_000  # as root, worker slot n's engine runs as uid sandbox_uid_base + n
    sandbox_dir: str = ""  # where each worker's private directory goes; empty: a fresh temporary one
    config_dir: str = str(SOURCE_CONFIG_DIR)
    host_name: str = dataclasses.field(default_factory=lambda: _safe_name(socket.gethostname()))
    pool_size: int = 2  # idle workers kept warm per engine on this host
    max_workers: int = 256  # workers (idle + pinned) one supervisor may run
    max_notebooks: int = 0  # open notebooks in total, all hosts (0: no quota); engines may set their own
    cull_idle_s: float = 0.0  # shut down notebooks idle this long (0: never)
    checkpoint_dir: str = ""  # where checkpoints go; empty: in Redis
    assign_timeout_s: float = 10.0  # how long a create waits for an idle worker
    rpc_timeout_s: float = 10.0  # complete/inspect/is_complete answers
    wait_timeout_s: float = 30.0  # default `timeout` of evaluate with wait
    # an API call's Redis work ends by this, even with Redis frozen (evaluate with wait: by its
    # `timeout` + REPLY_MARGIN_S); above assign_timeout_s and rpc_timeout_s, which it bounds
    request_deadline_s: float = 15.0
    max_wait_timeout_s: float = 3600.0
    idempotency_ttl_s: float = 24 * 3600.0  # how long an evaluate's Idempotency-Key returns the same cell
    cell_timeout_s: float = 0.0  # 0: no wall-time limit per cell
    interrupt_grace_s: float = 5.0  # after an unheeded interrupt, kill and restart
    max_output_bytes: int = 4 * 1024 * 1024
    max_request_bytes: int = 1024 * 1024
    max_file_bytes: int = 1024 * 1024 * 1024  # one file uploaded to a notebook (413 beyond)
    max_notebook_files_bytes: int = 4 * 1024 * 1024 * 1024  # all files of a notebook's directory, at upload
    # how file bytes reach a notebook's worker: "auto" (through the worker's local socket when the
    # API runs on its host, else through Redis) or "redis" (always; what an API on another host does)
    file_transfer: str = "auto"
    ack_emulation: int = 0  # 1: kombu keeps delivered messages in an unacked hash and redelivers them
    visibility_timeout_s: int = 30 * 24 * 3600  # with ack_emulation: far longer than any cell
    unacked_restore_interval_s: int = 60  # how often kombu sweeps for messages to redeliver
    feed_stream_maxlen: int = 10_000
    heartbeat_interval_s: float = 1.0
    host_ttl_s: float = 6.0
    log_level: str = "INFO"
    log_json: int = 0  # 1: one JSON object per log line, with notebook_id / cell_id fields
    task_events: int = 0  # 1: workers send Celery task events (for Flower); costs a publish per event

    def validate(self) -> "Settings":
        """Reject settings that cannot work; return self so it chains."""
        if self.pool_size < 0 or self.max_workers < 1:
            raise ConfigurationError("pool_size must be >= 0 and max_workers >= 1")
        if self.file_transfer not in ("auto", "redis"):
            raise ConfigurationError(f"{PREFIX}FILE_TRANSFER={self.file_transfer!r}: use 'auto' or 'redis'")
        if self.sandbox not in ("bubblewrap", "none"):
            raise ConfigurationError(f"{PREFIX}SANDBOX={self.sandbox!r}: use 'bubblewrap' or 'none'")
        if not 0 < self.sandbox_uid_base < 2**31 - 100_000:
            raise ConfigurationError(f"{PREFIX}SANDBOX_UID_BASE={self.sandbox_uid_base} is not a usable uid")
        if self.redis_maxmemory_bytes != 0 and self.redis_maxmemory_bytes < 1024 * 1024:
            raise ConfigurationError("redis_maxmemory_bytes must be 0 (no limit) or at least 1 MiB (1048576)")
        if self.redis_url.lower().startswith("redis+sentinel:"):
            from taskkernel.connections import parse_sentinel_url

            parse_sentinel_url(self.redis_url)  # raises ConfigurationError, naming no password
        if self.redis_wait_timeout_ms < 1:
            raise ConfigurationError("redis_wait_timeout_ms must be at least 1")
        if not 0 < self.api_port < 65536:
            raise ConfigurationError(f"api_port {self.api_port} is not a TCP port")
        if not self.token and not is_loopback(self.api_host):
            raise ConfigurationError(
                f"refusing to bind the API to {self.api_host} without a token: "
                "set TASKKERNEL_TOKEN, or bind to 127.0.0.1"
            )
        if not 0 < self.gateway_port < 65536 or self.gateway_threads < 1:
            raise ConfigurationError(f"gateway_port {self.gateway_port} / gateway_threads {self.gateway_threads}")
        if not self.token and not is_loopback(self.gateway_host):
            raise ConfigurationError(f"refusing to bind the gateway to {self.gateway_host} without a token: "
                                     "set TASKKERNEL_TOKEN, or bind to 127.0.0.1")
        for name in ("allow_networks", "deny_networks"):
            try:
                networks(getattr(self, name))
            except ValueError as exc:
                raise ConfigurationError(f"{PREFIX}{name.upper()}: {exc}") from None
        return self

    @property
    def feed_subscriber_limit(self) -> int:
        return self.max_feed_subscribers or max(1, self.api_threads - 8)

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def comma_list(spec: str) -> list[str]:
    """The non-empty, stripped items of a comma-separated setting."""
    return [part.strip() for part in spec.split(",") if part.strip()]


def networks(spec: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Parse a comma-separated list of CIDRs ("127.0.0.0/8, ::1")."""
    return [ipaddress.ip_network(part, strict=False) for part in comma_list(spec)]


def _safe_name(name: str) -> str:
    """Host names become parts of Redis keys and queue names: keep them plain."""
    cleaned = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)
    return cleaned[:40] or "host"


def _convert(field: dataclasses.Field, raw: str):
    kind = field.type if isinstance(field.type, str) else field.type.__name__
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise ConfigurationError(f"{PREFIX}{field.name.upper()}={raw!r} is not a number") from None
    return raw


def load_settings(environ: Mapping[str, str] | None = None, **overrides) -> Settings:
    """Build Settings from TASKKERNEL_<FIELD> variables, then keyword overrides; validate."""
    environ = os.environ if environ is None else environ
    values = {}
    for field in dataclasses.fields(Settings):
        raw = environ.get(PREFIX + field.name.upper())
        if raw is not None and raw != "":
            values[field.name] = _convert(field, raw)
    values.update({k: v for k, v in overrides.items() if v is not None})
    if values.get("sandbox") == "required":  # the spelling: the sandbox is required (bubblewrap)
        values["sandbox"] = "bubblewrap"
    if "host_name" in values:
        values["host_name"] = _safe_name(values["host_name"])
    return Settings(**values).validate()


def settings_environ(settings: Settings) -> dict[str, str]:
    """The TASKKERNEL_* variables that reproduce `settings` in a child process."""
    return {
        PREFIX + f.name.upper(): str(getattr(settings, f.name)) for f in dataclasses.fields(Settings)
    }
