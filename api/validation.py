"""Request bodies: JSON objects with known fields of known types, or a 400 naming the field."""

from __future__ import annotations

from flask import request

from taskkernel.exceptions import InvalidField, InvalidJSON, UnsupportedMediaType

_TYPES = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", dict: "an object"}


def json_body(fields: dict[str, type], required: tuple[str, ...] = ()) -> dict:
    """The request's JSON object, checked against `fields` ({name: type}); unknown fields are refused."""
    if not request.get_data(cache=True):
        body = {}
    elif not request.is_json:
        raise UnsupportedMediaType(
            f"request bodies must be JSON; got Content-Type {request.mimetype or 'none'!r}")
    else:
        body = request.get_json(force=True, silent=True)
        if body is None:
            raise InvalidJSON("the request body is not valid JSON")
    if not isinstance(body, dict):
        raise InvalidJSON("the request body must be a JSON object")
    for name in body:
        if name not in fields:
            raise InvalidField(f"unknown field {name!r}; allowed: {', '.join(fields)}", field=name)
    for name in required:
        if name not in body:
            raise InvalidField(f"missing field {name!r}", field=name)
    for name, value in body.items():
        expected = fields[name]
        if expected is object:  # any JSON value
            continue
        ok = isinstance(value, expected) and not (expected in (int, float) and isinstance(value, bool))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise InvalidField(f"field {name!r} must be {_TYPES.get(expected, expected.__name__)}", field=name)
    return body
