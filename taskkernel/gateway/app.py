"""The gateway's tornado application: its services, the request checks and errors, and `serve`.

One process runs one event loop. Websockets and the feed live on it (redis.asyncio pub/sub, no
thread per connection); the shared synchronous code (NotebookStore's Lua scripts, the worker side
channel) runs on a small thread pool, so it is the same code the Flask API runs. All state is in
Redis: any number of gateway processes can serve the same notebooks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hmac
import ipaddress
import json
import logging
import time
import uuid
from dataclasses import dataclass, field

import redis
import redis.asyncio
import tornado.web

from taskkernel import connections, keys
from taskkernel.api.auth import _origin_host, authorization_token, host_name, token_digest
from taskkernel.api.errors import from_redis_error
from taskkernel.celery_wire import TaskMessages
from taskkernel.cells import SUBMIT_LUA
from taskkernel.exceptions import (CrossSiteRequest, Forbidden, HostNotAllowed, InvalidJSON, NotFound,
                                   TaskkernelError, Unauthorized)
from taskkernel.notebooks import NotebookStore
from taskkernel.settings import Settings, comma_list, is_loopback, networks

log = logging.getLogger("taskkernel.gateway")

REGISTRATION_TTL_S = 30.0  # a gateway process that stops renewing is forgotten after this long
STATE_CHANGING_METHODS = frozenset({"POST", "PUT", "DELETE", "PATCH"})


@dataclass
class Gateway:
    """What the handlers share in one gateway process; built by make_app."""

    settings: Settings
    redis: redis.Redis  # synchronous, for the shared store code (run on `pool`)
    aredis: redis.asyncio.Redis  # the event loop's own: pub/sub, connection counts
    store: NotebookStore
    messages: TaskMessages  # the Celery task messages its cells are queued as
    pool: concurrent.futures.ThreadPoolExecutor
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    hub: object = None  # hub.FeedHub, set by make_app
    submit_script: object = None  # NotebookStore's submit script on `aredis`

    async def run(self, fn, *args, **kwargs):
        """Run a blocking call of the shared code off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, functools.partial(fn, *args, **kwargs))


def notebook_id_of(kernel_id: str) -> str:
    """The notebook behind a kernel id (the dashed UUID form of its 32 hex digits); NotFound otherwise."""
    try:
        return uuid.UUID(kernel_id).hex
    except ValueError:
        raise NotFound(f"no kernel {kernel_id!r}") from None


def kernel_id_of(notebook_id: str) -> str:
    return str(uuid.UUID(hex=notebook_id))


class BaseHandler(tornado.web.RequestHandler):
    """JSON in and out, errors as {"error", "message"}, and api/auth.py's rules on every request."""

    gateway: Gateway

    def initialize(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def prepare(self) -> None:
        await check_request(self.gateway, self.request, self.path_kwargs.get("kernel_id"))

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")

    def json_body(self) -> dict:
        """The request's JSON object ({} when empty); unknown fields are the caller's business."""
        if not self.request.body:
            return {}
        try:
            body = json.loads(self.request.body)
        except ValueError as exc:
            raise InvalidJSON(f"the body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise InvalidJSON("the body must be a JSON object")
        return body

    def send_json(self, value, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(value))

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        body, status = error_body(exc, status_code, self._reason)
        self.set_status(status)
        self.finish(json.dumps(body))

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, (TaskkernelError, tornado.web.HTTPError)):
            return
        log.error("unexpected error in %s %s", self.request.method, self.request.path, exc_info=(typ, value, tb))


def error_body(exc: BaseException | None, status_code: int, reason: str = "") -> tuple[dict, int]:
    """The JSON error and status for an exception, as api/errors.py answers it."""
    if isinstance(exc, redis.RedisError):
        exc = from_redis_error(exc)
    if isinstance(exc, TaskkernelError):
        return exc.to_dict(), exc.status
    if isinstance(exc, tornado.web.HTTPError):
        codes = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 413: "request_too_large"}
        return {"error": codes.get(exc.status_code, "http_error"), "message": exc.log_message or reason}, exc.status_code
    if exc is None and status_code < 500:
        return {"error": "http_error", "message": reason}, status_code
    return {"error": "internal_error", "message": f"{type(exc).__name__}: {exc}"}, 500


async def check_request(gateway: Gateway, request, kernel_id: str | None) -> None:
    """api/auth.py's rules on a tornado request: networks, Host names, cross-site writes, tokens.

    The token comes as `Authorization: token <t>` (Jupyter Server's GatewayClient) or `Bearer <t>`;
    a notebook's own token opens that notebook's kernel routes.
    """
    settings = gateway.settings
    allowed, denied = networks(settings.allow_networks), networks(settings.deny_networks)
    if allowed or denied:
        address = ipaddress.ip_address((request.remote_ip or "0.0.0.0").split("%")[0])
        if any(address in net for net in denied) or (allowed and not any(address in net for net in allowed)):
            raise Forbidden(f"clients from {address} are not allowed")
    if not settings.token:
        name = host_name(request.host)
        if not (is_loopback(name) or name in {n.lower() for n in comma_list(settings.allowed_hosts)}):
            raise HostNotAllowed(f"Host {request.host!r} is not served without a token: call the gateway on a "
                                 "loopback address, list the name in TASKKERNEL_ALLOWED_HOSTS, or set TASKKERNEL_TOKEN")
    origin = request.headers.get("Origin", "")
    if request.method in STATE_CHANGING_METHODS and not origin_allowed(settings, origin, request.host):
        raise CrossSiteRequest(f"{request.method} from {origin} is refused: only the gateway's own origin and "
                               "TASKKERNEL_CORS_ORIGINS may send it")
    if request.method in STATE_CHANGING_METHODS and request.headers.get("Sec-Fetch-Site") == "cross-site" \
            and not origin:
        raise CrossSiteRequest(f"{request.method} from another site is refused")
    if not settings.token:
        return
    given = authorization_token(request.headers.get("Authorization", ""))
    if not given and request.headers.get("Upgrade", "").lower() == "websocket":
        given = request.query_arguments.get("token", [b""])[0].decode()  # browsers cannot set headers there
    if given and hmac.compare_digest(given.encode(), settings.token.encode()):
        return
    if given and kernel_id:
        try:
            notebook_id = notebook_id_of(kernel_id)
        except NotFound:
            notebook_id = ""
        stored = await gateway.aredis.hget(keys.notebook(notebook_id), "token_sha256") if notebook_id else None
        if stored and hmac.compare_digest(stored.decode(), token_digest(given)):
            return
    raise Unauthorized("a valid token is required: send Authorization: token <token> (or Bearer)")


def origin_allowed(settings: Settings, origin: str, host: str) -> bool:
    """A request without Origin, from the gateway's own origin, or from a configured CORS origin."""
    origins = set(comma_list(settings.cors_origins))
    return not origin or "*" in origins or origin in origins or _origin_host(origin) == host.lower()


class NotFoundHandler(BaseHandler):
    async def prepare(self) -> None:
        await super().prepare()
        raise NotFound(f"no route {self.request.path}")


def make_app(settings: Settings) -> tornado.web.Application:
    """The gateway application for `settings` (call inside the event loop that will serve it)."""
    from taskkernel.gateway import channels, hub, kernels, kernelspecs
    from taskkernel.celery_wire import make_celery

    client = connections.connect(settings.redis_url, max_connections=settings.gateway_threads * 2, timeout_s=10,
                                 health_check_interval=30)
    gateway = Gateway(settings=settings, redis=client, aredis=connections.connect_async(settings.redis_url),
                      store=NotebookStore(client, stream_maxlen=settings.feed_stream_maxlen,
                                        durability=connections.Durability.from_settings(settings)),
                      messages=TaskMessages(make_celery(settings)),
                      pool=concurrent.futures.ThreadPoolExecutor(settings.gateway_threads,
                                                                 thread_name_prefix="gateway"))
    gateway.hub = hub.FeedHub(gateway)
    gateway.submit_script = gateway.aredis.register_script(SUBMIT_LUA)
    args = {"gateway": gateway}
    kernel = r"(?P<kernel_id>[0-9a-fA-F-]{32,36})"
    routes = [
        (r"/api/kernelspecs/?", kernelspecs.KernelSpecsHandler, args),
        (r"/api/kernelspecs/(?P<name>[^/]+)/?", kernelspecs.KernelSpecHandler, args),
        (r"/api/kernels/?", kernels.KernelsHandler, args),
        (rf"/api/kernels/{kernel}/?", kernels.KernelHandler, args),
        (rf"/api/kernels/{kernel}/restart/?", kernels.RestartHandler, args),
        (rf"/api/kernels/{kernel}/interrupt/?", kernels.InterruptHandler, args),
        (rf"/api/kernels/{kernel}/channels", channels.ChannelsHandler, args),
        (r"/api/?", kernels.InfoHandler, args),
    ]
    app = tornado.web.Application(routes, default_handler_class=NotFoundHandler, default_handler_args=args,
                                  # no server pings: a client that reads only when it expects an
                                  # answer (websocket-client, scripts) would miss the pong deadline
                                  # and be cut off; as Kernel Gateway, a dead peer is found by TCP
                                  websocket_ping_interval=0, max_body_size=settings.max_request_bytes,
                                  log_function=log_request)
    app.settings["taskkernel_gateway"] = gateway
    return app


def log_request(handler: tornado.web.RequestHandler) -> None:
    """One line per request, with its path only: a websocket's ?token= never reaches a log."""
    status = handler.get_status()
    level = logging.DEBUG if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    log.log(level, "%d %s %s %.1f ms", status, handler.request.method, handler.request.path,
            1000 * handler.request.request_time())


async def keep_registered(gateway: Gateway) -> None:
    """Say this gateway process is alive, so other processes count its connections (see kernels.py)."""
    while True:
        try:
            await gateway.aredis.zadd(keys.GATEWAYS, {gateway.id: time.time() + REGISTRATION_TTL_S})
            await gateway.aredis.expire(keys.gateway_connections(gateway.id), int(REGISTRATION_TTL_S))
        except redis.RedisError as exc:
            log.warning("gateway registration: %r", exc)
        await asyncio.sleep(REGISTRATION_TTL_S / 3)


async def serve(settings: Settings) -> None:
    """Serve the gateway on settings.gateway_host:gateway_port until cancelled."""
    app = make_app(settings)
    gateway: Gateway = app.settings["taskkernel_gateway"]
    server = app.listen(settings.gateway_port, settings.gateway_host, xheaders=False)
    registration = asyncio.create_task(keep_registered(gateway))
    log.info("taskkernel gateway on http://%s:%s", settings.gateway_host, settings.gateway_port)
    try:
        await asyncio.Event().wait()
    finally:
        registration.cancel()
        server.stop()
        await gateway.hub.close()
        try:
            await gateway.aredis.zrem(keys.GATEWAYS, gateway.id)
            await gateway.aredis.delete(keys.gateway_connections(gateway.id))
        except redis.RedisError:
            pass
        gateway.pool.shutdown(wait=False, cancel_futures=True)
