"""Who may call the API: with TASKKERNEL_TOKEN set, every request needs `Authorization: Bearer <token>`."""

from __future__ import annotations

import hmac

from flask import Flask, request

from taskkernel.exceptions import Unauthorized
from taskkernel.settings import Settings


def register(app: Flask, settings: Settings) -> None:
    if not settings.token:
        return
    expected = settings.token.encode()

    @app.before_request
    def require_token():
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            raise Unauthorized("a valid token is required: send Authorization: Bearer <token>")
