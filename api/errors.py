"""The one place where exceptions become HTTP responses: JSON {"error", "message"} and a status."""

from __future__ import annotations

import logging

import redis
from flask import Flask, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from taskkernel.exceptions import FileTooLarge, RedisOutOfMemory, RedisUnavailable, RequestTooLarge, TaskkernelError

log = logging.getLogger("taskkernel.api")

HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
}


def from_redis_error(exc: redis.RedisError) -> TaskkernelError:
    """What a failed Redis call means to a caller (the gateway answers with it too)."""
    if isinstance(exc, redis.exceptions.OutOfMemoryError):  # maxmemory with noeviction
        return RedisOutOfMemory(f"Redis is out of memory, nothing was written: {exc}")
    return RedisUnavailable(f"Redis is unavailable: {exc}")


def register(app: Flask) -> None:
    @app.errorhandler(TaskkernelError)
    def taskkernel_error(exc: TaskkernelError):
        return jsonify(exc.to_dict()), exc.status

    @app.errorhandler(RequestEntityTooLarge)
    def body_too_large(exc: RequestEntityTooLarge):
        # werkzeug's own text names no limit; this one says which, and how the body was counted
        limit = request.max_content_length
        length = request.content_length
        if request.endpoint == "files.put_file":  # an upload (multipart) past the file's cap
            cap = current_app.extensions["taskkernel"].settings.max_file_bytes
            return taskkernel_error(FileTooLarge(f"the file is larger than the cap of {cap} bytes",
                                                 max_file_bytes=cap))
        return taskkernel_error(RequestTooLarge(
            f"the request body{f' ({length} bytes)' if length is not None else ''} is larger than the "
            f"API's limit of {limit} bytes (TASKKERNEL_MAX_REQUEST_BYTES); the limit counts the JSON as "
            "sent, where a cell's newline or quote takes 2 bytes and a non-ASCII character up to 12; "
            "files go in with PUT /api/notebooks/<id>/files/<path>, which has caps of its own",
            max_request_bytes=limit, content_length=length))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code = HTTP_CODES.get(exc.code, "http_error")
        response = jsonify({"error": code, "message": exc.description})
        for name, value in exc.get_headers():  # 405's Allow, as RFC 9110 requires
            if name.lower() != "content-type":
                response.headers[name] = value
        return response, exc.code

    @app.errorhandler(redis.RedisError)
    def redis_error(exc: redis.RedisError):
        log.warning("redis error: %r", exc)
        return taskkernel_error(from_redis_error(exc))

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unexpected error")
        return jsonify({"error": "internal_error", "message": f"{type(exc).__name__}: {exc}"}), 500
