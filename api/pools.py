"""Worker pools: GET /api/hosts shows each host's pools, PUT /api/pools/<engine> resizes them."""

from __future__ import annotations

import json

from flask import Blueprint, current_app, jsonify

from taskkernel import keys
from taskkernel.api.validation import request_body
from taskkernel.engines import registry
from taskkernel.exceptions import InvalidField, NotFound

blueprint = Blueprint("pools", __name__)


def live_hosts(client) -> list[dict]:
    hosts = []
    for raw in sorted(client.smembers(keys.HOSTS)):
        record = {k.decode(): v.decode() for k, v in client.hgetall(keys.host(raw.decode())).items()}
        if record:
            hosts.append({"name": record["name"], "pid": int(record["pid"]), "workers": int(record["workers"]),
                          "max_workers": int(record["max_workers"]), "pools": json.loads(record["pools"]),
                          "engine_errors": json.loads(record.get("engine_errors") or "{}")})
    return hosts


@blueprint.get("/hosts")
def list_hosts():
    return jsonify({"hosts": live_hosts(current_app.extensions["taskkernel"].redis)})


@blueprint.put("/pools/<engine>")
def resize_pool(engine: str):
    """Change how many idle workers of `engine` are kept warm, on one host or all; pinned workers stay."""
    svc = current_app.extensions["taskkernel"]
    body = request_body()
    registry.get_spec(svc.settings.config_dir, engine)
    hosts = [h["name"] for h in live_hosts(svc.redis)]
    if "host" in body:
        if body["host"] not in hosts:
            raise NotFound(f"no live host {body['host']!r}", host=body["host"])
        hosts = [body["host"]]
    command = json.dumps({"op": "scale", "engine": engine, "size": body["size"]})
    for host in hosts:
        svc.redis.rpush(keys.host_commands(host), command)
    return jsonify({"engine": engine, "size": body["size"], "hosts": hosts})
