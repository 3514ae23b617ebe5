"""Request bodies: JSON objects checked against the request schemas of the OpenAPI document
(api/openapi.py), so the document and the validation are one thing; errors are a 400 naming the
field (`invalid_field`).

An endpoint calls `request_body()`: the schema is the one the document gives its route and
method, so describing a body in the document is what makes it checked.
"""

from __future__ import annotations

import re

import fastjsonschema
from flask import current_app, request

from taskkernel.exceptions import InvalidField, InvalidJSON, UnsupportedMediaType

_SCHEMA_TYPES = {"string": "a string", "boolean": "a boolean", "integer": "an integer", "number": "a number",
                 "object": "an object", "array": "an array"}
_RULE_PARAMETER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


def openapi_path(rule: str) -> str:
    """The OpenAPI path of a Flask rule: /api/notebooks/<hexid:notebook_id> -> /api/notebooks/{notebook_id}."""
    return _RULE_PARAMETER.sub(r"{\1}", rule)


def _parsed_body() -> dict:
    """The request's JSON object ({} for an empty body); 415 or 400 for anything else."""
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
    return body


class _Validator:
    """One operation's compiled request schema, and how its failures read."""

    def __init__(self, schema: dict):
        self.schema = schema
        self.check = fastjsonschema.compile(schema)
        self.integers = [n for n, p in schema.get("properties", {}).items() if p.get("type") == "integer"]

    def __call__(self, body: dict) -> dict:
        try:
            self.check(body)
        except fastjsonschema.JsonSchemaValueException as exc:
            raise self._invalid(exc, body) from None
        for name in self.integers:  # JSON Schema counts 2.0 as an integer; the handlers want an int
            if isinstance(body.get(name), float):
                body[name] = int(body[name])
        return body

    def _invalid(self, exc: fastjsonschema.JsonSchemaValueException, body: dict) -> InvalidField:
        properties = self.schema.get("properties", {})
        if exc.rule == "additionalProperties" and len(exc.path) == 1:
            name = next(n for n in body if n not in properties)
            return InvalidField(f"unknown field {name!r}; allowed: {', '.join(properties)}", field=name)
        if exc.rule == "required" and len(exc.path) == 1:
            name = next(n for n in self.schema["required"] if n not in body)
            return InvalidField(f"missing field {name!r}", field=name)
        name = str(exc.path[1]) if len(exc.path) > 1 else ""
        if exc.rule == "type" and len(exc.path) == 2:
            expected = properties.get(name, {}).get("type")
            return InvalidField(f"field {name!r} must be {_SCHEMA_TYPES.get(expected, expected)}", field=name)
        detail = exc.message.removeprefix(exc.name).strip()
        return InvalidField(f"field {name!r} {detail}" if name else f"the request body {detail}", field=name)


def _validators() -> dict[tuple[str, str], _Validator]:
    """{(OpenAPI path, METHOD): validator} for every operation with a JSON request body, compiled
    once per app from the document as this app's settings shape it."""
    validators = current_app.extensions.get("taskkernel.validators")
    if validators is None:
        from taskkernel.api import openapi

        validators = {}
        document = openapi.document(current_app.extensions["taskkernel"].settings)
        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                content = operation.get("requestBody", {}).get("content", {})
                if "application/json" in content:
                    validators[(path, method.upper())] = _Validator(content["application/json"]["schema"])
        current_app.extensions["taskkernel.validators"] = validators
    return validators


def request_body() -> dict:
    """The request's JSON object, valid against the requestBody schema the OpenAPI document gives
    this route and method; InvalidField (400, with `field`) otherwise."""
    body = _parsed_body()
    validator = _validators().get((openapi_path(request.url_rule.rule), request.method))
    if validator is None:
        raise LookupError(f"the OpenAPI document gives {request.method} {request.url_rule.rule} no request body")
    return validator(body)
