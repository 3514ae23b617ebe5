"""The `taskkernel` command: up, api, gateway, worker, scale; its other commands are modules of this package."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from taskkernel.logs import redact
from taskkernel.settings import Settings, load_settings, settings_environ


# Modules that add subcommands of their own: each has `register(subparsers)`, which adds its
# parsers and sets `handler=<function(args) -> exit code>` on them with set_defaults.
PLUGIN_COMMANDS: list[str] = ["taskkernel.jupyter.kernelspec", "taskkernel.cli.status", "taskkernel.cli.run",
                              "taskkernel.cli.console", "taskkernel.cli.files"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taskkernel", description="A notebook code-execution backend.")
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="run Redis (if none is configured), a worker supervisor and the API")
    up.add_argument("--host", help="API bind address (default 127.0.0.1)")
    up.add_argument("--port", type=int, help="API port (default 8000)")
    up.add_argument("--pool", type=int, help="idle workers kept warm per engine (default 2)")
    up.add_argument("--gateway-port", type=int, help="the Jupyter gateway's port (default 8001)")
    up.set_defaults(handler=lambda a: cmd_up(load_settings(api_host=a.host, api_port=a.port, pool_size=a.pool,
                                                           gateway_port=a.gateway_port)))

    api = commands.add_parser("api", help="run the HTTP API (gunicorn, threads)")
    api.add_argument("--host", help="bind address (default 127.0.0.1)")
    api.add_argument("--port", type=int, help="port (default 8000)")
    api.add_argument("--threads", type=int, help="request threads (default 32)")
    api.set_defaults(handler=lambda a: cmd_api(load_settings(api_host=a.host, api_port=a.port,
                                                            api_threads=a.threads)))

    gateway = commands.add_parser("gateway", help="serve Jupyter's gateway protocol (jupyter lab --gateway-url)")
    gateway.add_argument("--host", help="bind address (default 127.0.0.1)")
    gateway.add_argument("--port", type=int, help="port (default 8001)")
    gateway.set_defaults(handler=lambda a: cmd_gateway(load_settings(gateway_host=a.host, gateway_port=a.port)))

    worker = commands.add_parser("worker", help="run this host's worker supervisor")
    worker.add_argument("--pool", type=int, help="idle workers kept warm per engine (default 2)")
    worker.add_argument("--host-name", help="name of this host in Redis (default: the machine's)")
    worker.set_defaults(handler=lambda a: cmd_worker(load_settings(pool_size=a.pool, host_name=a.host_name)))

    scale = commands.add_parser("scale", help="resize warm pools at run time, e.g. `taskkernel scale python=8`")
    scale.add_argument("sizes", nargs="+", metavar="ENGINE=N", help="idle workers to keep warm per engine")
    scale.add_argument("--host", help="only this host (default: every live host)")
    scale.add_argument("--url", default="http://127.0.0.1:8000", help="the API (default %(default)s)")
    scale.add_argument("--token", help="the service token, if the API requires one")
    scale.set_defaults(handler=cmd_scale)

    import importlib

    for module_name in PLUGIN_COMMANDS:
        importlib.import_module(module_name).register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except Exception as exc:
        from taskkernel.exceptions import TaskkernelError

        if isinstance(exc, TaskkernelError):
            print(f"taskkernel: {exc.message}", file=sys.stderr)
            return 2
        raise


def cmd_scale(args) -> int:
    from taskkernel.client import Client

    client = Client(args.url, token=args.token)
    for item in args.sizes:
        engine, _, size = item.partition("=")
        if not size.isdigit():
            print(f"taskkernel scale: expected ENGINE=N, got {item!r}", file=sys.stderr)
            return 2
        body = {"size": int(size), **({"host": args.host} if args.host else {})}
        result = client.request("PUT", f"/pools/{engine}", body)[1]
        print(f"{engine}: {result['size']} idle workers on {', '.join(result['hosts']) or 'no live host'}")
    return 0


# What the service imports that a client-only install (`pip install taskkernel`) lacks
SERVER_MODULES = ("celery", "kombu", "redis", "flask", "gunicorn", "IPython", "jedi", "prometheus_client",
                  "fastjsonschema")


def require_server(command: str) -> None:
    """ConfigurationError naming the extra to install when the server's dependencies are missing."""
    import importlib.util

    missing = [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        from taskkernel.exceptions import ConfigurationError

        raise ConfigurationError(
            f"`taskkernel {command}` runs the service, whose dependencies are not installed "
            f"(no {', '.join(missing)}): pip install 'taskkernel[server]'")


def _require_redis(settings: Settings) -> None:
    if not settings.redis_url:
        from taskkernel.exceptions import ConfigurationError

        raise ConfigurationError("TASKKERNEL_REDIS_URL is not set (`taskkernel up` starts a private Redis)")


def cmd_worker(settings: Settings) -> int:
    require_server("worker")
    _require_redis(settings)
    from taskkernel.workers import supervisor

    supervisor.main(settings)
    return 0


def cmd_api(settings: Settings) -> int:
    require_server("api")
    _require_redis(settings)
    from gunicorn.app.base import BaseApplication

    from taskkernel.api import create_app, server

    server.configure_logging(settings)

    class _Server(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", f"{settings.api_host}:{settings.api_port}")
            self.cfg.set("workers", 1)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("threads", settings.api_threads)
            self.cfg.set("timeout", 0)  # evaluate with wait may hold a request open for long
            self.cfg.set("keepalive", 30)
            # a replacement binds while this one drains, and draining is short: feed streams and
            # waiting evaluates end when the worker is told to stop (_stop_streams_on_sigterm)
            self.cfg.set("reuse_port", True)
            self.cfg.set("graceful_timeout", API_GRACEFUL_S)
            self.cfg.set("post_worker_init", _stop_streams_on_sigterm)
            self.cfg.set("accesslog", None)
            self.cfg.set("loglevel", settings.log_level.lower())
            self.cfg.set("logger_class", server.GunicornLogger)
            if "control_socket_disable" in self.cfg.settings:  # gunicorn >= 26: one ~/.gunicorn/gunicorn.ctl
                self.cfg.set("control_socket_disable", True)  # shared by every API process on the machine

        def load(self):
            app = create_app(settings)
            server.log.info("API on http://%s:%s, redis %s, %d threads", settings.api_host, settings.api_port,
                            settings.redis_url, settings.api_threads)
            return app

    _Server().run()
    return 0


def cmd_gateway(settings: Settings) -> int:
    _require_redis(settings)
    import asyncio

    from taskkernel import logs
    from taskkernel.gateway.app import serve

    logs.configure(settings.log_level, bool(settings.log_json), sys.stderr, component="gateway")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as Ctrl-C does: cleanly
    try:
        asyncio.run(serve(settings))
    except KeyboardInterrupt:
        pass
    return 0


API_GRACEFUL_S = 3  # seconds after SIGTERM at which requests still running are cut (gunicorn: an int)


def _stop_streams_on_sigterm(worker) -> None:
    """gunicorn's post_worker_init hook: SIGTERM also sets the app's `stopping`, which ends its
    feed streams and its waits for cells within a second (see api.Services.stopping)."""
    stopping = worker.wsgi.extensions["taskkernel"].stopping
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        stopping.set()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)


def cmd_up(settings: Settings) -> int:
    """Run everything in the foreground; Ctrl-C or SIGTERM stops all of it."""
    require_server("up")
    from taskkernel.redis_server import RedisServer

    redis_server = None
    children: list[subprocess.Popen] = []
    stopping = []

    def stop(signum, frame):
        stopping.append(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    from taskkernel.workers import sandbox

    isolation = sandbox.check(settings)  # refuse at once, before starting anything, without a sandbox
    try:
        if not settings.redis_url:
            redis_server = RedisServer(maxmemory_bytes=settings.redis_maxmemory_bytes).start()
            settings = settings.replace(redis_url=redis_server.url)
        env = {**os.environ, **settings_environ(settings)}
        for command in ("worker", "api", "gateway"):
            children.append(subprocess.Popen([sys.executable, "-m", "taskkernel", command], env=env,
                                             start_new_session=True))
        url = f"http://{settings.api_host}:{settings.api_port}"
        if _wait_until_up(url, children, stopping):
            idle = _wait_for_pool(settings, children, stopping)
            pools = ", ".join(f"{n} idle {engine} workers" for engine, n in sorted(idle.items()))
            print(f"taskkernel API on {url}  (redis {redact(settings.redis_url)}, {pools or 'no workers'})\n"
                  f"taskkernel {isolation}\n"
                  f"taskkernel gateway on http://{settings.gateway_host}:{settings.gateway_port}  "
                  f"(jupyter lab --gateway-url=http://{settings.gateway_host}:{settings.gateway_port})", flush=True)
        while not stopping and all(c.poll() is None for c in children):
            time.sleep(0.2)
        failed = [c for c in children if c.poll() not in (None, 0)]
        return 1 if failed and not stopping else 0
    finally:
        for child in reversed(children):
            _stop_process(child)
        if redis_server is not None:
            redis_server.stop()


def _wait_until_up(url: str, children, stopping, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not stopping and all(c.poll() is None for c in children):
        try:
            with urllib.request.urlopen(url + "/api/engines", timeout=2):
                return True
        except urllib.error.HTTPError:  # it answered (401 with a token set): it is up
            return True
        except OSError:
            time.sleep(0.1)
    return False


def _wait_for_pool(settings: Settings, children, stopping, timeout_s: float = 60.0) -> dict[str, int]:
    """Wait until this host's supervisor has filled its pools; return {engine: idle workers}."""
    from taskkernel import connections, hosts, keys

    client = connections.connect(settings.redis_url)
    deadline = time.monotonic() + timeout_s
    idle: dict[str, int] = {}
    try:
        while time.monotonic() < deadline and not stopping and all(c.poll() is None for c in children):
            pools = hosts.host_from_redis(settings.host_name, client.hgetall(keys.host(settings.host_name)))["pools"]
            idle = {engine: client.scard(keys.idle_workers(engine, settings.host_name)) for engine in pools}
            if pools and all(idle[engine] >= size for engine, size in pools.items()):
                break
            time.sleep(0.1)
    finally:
        client.close()
    return idle


def _stop_process(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


if __name__ == "__main__":
    sys.exit(main())
