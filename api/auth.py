"""Who may call the API: network allow/deny lists, Host names, the service token, per-notebook tokens,
cross-site requests, CORS.

With TASKKERNEL_TOKEN set, every call needs `Authorization: Bearer <token>`; a notebook's own
token (returned once when it is created) is also accepted on that notebook's routes, so a front
end can hand one notebook to one user without the service token. EventSource cannot send
headers, so the feed also accepts `?token=`. Tokens are compared in constant time, and only a
hash of a notebook token is stored.

Without a service token (loopback only) the Host header must name a loopback host: otherwise any
web page could rebind its own DNS name to 127.0.0.1 and call the API as "same-origin". Whatever
the token, a browser page of another origin may not send state-changing requests unless it is a
configured CORS origin, so a visited site cannot create or drive notebooks.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import urllib.parse

from flask import Flask, Response, current_app, request

from taskkernel import keys
from taskkernel.exceptions import CrossSiteRequest, Forbidden, HostNotAllowed, Unauthorized
from taskkernel.settings import Settings, comma_list, is_loopback, networks

STATE_CHANGING_METHODS = frozenset({"POST", "PUT", "DELETE", "PATCH"})
HOST_HEADER = re.compile(r"(\[[0-9a-f:.]+\]|[^:\[\]]+)(:[0-9]*)?")


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def register(app: Flask, settings: Settings) -> None:
    allowed, denied = networks(settings.allow_networks), networks(settings.deny_networks)
    origins = set(comma_list(settings.cors_origins))

    if allowed or denied:
        @app.before_request
        def check_network():
            address = ipaddress.ip_address((request.remote_addr or "0.0.0.0").split("%")[0])
            if any(address in net for net in denied) or (allowed and not any(address in net for net in allowed)):
                raise Forbidden(f"clients from {address} are not allowed")

    if not settings.token:
        extra_hosts = {name.lower() for name in comma_list(settings.allowed_hosts)}

        @app.before_request
        def check_host():
            name = host_name(request.host)
            if not (is_loopback(name) or name in extra_hosts):
                raise HostNotAllowed(
                    f"Host {request.host!r} is not served without a token: call the API on a loopback "
                    "address, list the name in TASKKERNEL_ALLOWED_HOSTS, or set TASKKERNEL_TOKEN"
                )

    @app.before_request
    def refuse_cross_site():
        if request.method not in STATE_CHANGING_METHODS:
            return None
        origin = request.headers.get("Origin", "")
        if origin and ("*" in origins or origin in origins):
            return None
        foreign_origin = origin and _origin_host(origin) != request.host.lower()
        if foreign_origin or request.headers.get("Sec-Fetch-Site") == "cross-site":
            raise CrossSiteRequest(f"{request.method} from {origin or 'another site'} is refused: only the "
                                   "API's own origin and TASKKERNEL_CORS_ORIGINS may send it")
        return None

    if origins:
        @app.before_request
        def cors_preflight():
            if request.method == "OPTIONS" and request.headers.get("Access-Control-Request-Method"):
                return Response(status=204)

        @app.after_request
        def cors_headers(response: Response) -> Response:
            origin = request.headers.get("Origin", "")
            if origin and ("*" in origins or origin in origins):
                response.headers["Access-Control-Allow-Origin"] = origin
                response.headers["Vary"] = "Origin"
                response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, Last-Event-ID"
                response.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, DELETE, OPTIONS"
            return response

    if settings.token:
        expected = settings.token.encode()

        @app.before_request
        def require_token():
            if request.method == "OPTIONS" or request.endpoint in PUBLIC_ENDPOINTS:
                return None
            given = _presented_token()
            if given and hmac.compare_digest(given.encode(), expected):
                return None
            notebook_id = (request.view_args or {}).get("notebook_id")
            if given and notebook_id and _notebook_token_matches(notebook_id, given):
                return None
            raise Unauthorized("a valid token is required: send Authorization: Bearer <token>")


PUBLIC_ENDPOINTS = {"openapi.openapi", "console.index", "console.static"}  # no secrets in these


def host_name(host: str) -> str:
    """The name in a Host header, lower-cased, without port or brackets ("[::1]:80" -> "::1"); "" if malformed."""
    match = HOST_HEADER.fullmatch(host.strip().lower())
    return match.group(1).strip("[]") if match else ""


def _origin_host(origin: str) -> str:
    """host[:port] of an Origin header ("null" from sandboxed frames and files: "")."""
    try:
        return urllib.parse.urlsplit(origin).netloc.lower()
    except ValueError:
        return ""


def _presented_token() -> str:
    given = authorization_token(request.headers.get("Authorization", ""))
    if given:
        return given
    if request.method == "GET" and request.endpoint == "feed.notebook_feed":
        return request.args.get("token", "")
    return ""


def authorization_token(header: str) -> str:
    """The token of an Authorization header: `Bearer <t>`, or `token <t>` as Jupyter Server sends it."""
    scheme, _, given = header.partition(" ")
    return given.strip() if scheme.lower() in ("bearer", "token") else ""


def _notebook_token_matches(notebook_id: str, token: str) -> bool:
    svc = current_app.extensions["taskkernel"]
    stored = svc.redis.hget(keys.notebook(notebook_id), "token_sha256")
    return bool(stored) and hmac.compare_digest(stored.decode(), token_digest(token))
