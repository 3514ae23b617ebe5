"""Worker pools: GET /api/hosts shows each host's pools, PUT /api/pools/<engine> resizes them."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from taskkernel import hosts
from taskkernel.api.validation import request_body
from taskkernel.engines import registry
from taskkernel.exceptions import InvalidField, NotFound

blueprint = Blueprint("pools", __name__)


# what GET /api/hosts shows of each live host's record
SHOWN = ("name", "pid", "workers", "max_workers", "pools", "engine_errors")


def live_hosts(client) -> list[dict]:
    return [{k: host[k] for k in SHOWN} for host in hosts.live_hosts(client)]


@blueprint.get("/hosts")
def list_hosts():
    return jsonify({"hosts": live_hosts(current_app.extensions["taskkernel"].redis)})


@blueprint.put("/pools/<engine>")
def resize_pool(engine: str):
    """Change how many idle workers of `engine` are kept warm, on one host or all; pinned workers stay."""
    svc = current_app.extensions["taskkernel"]
    body = request_body()
    registry.get_spec(svc.settings.config_dir, engine)
    names = [h["name"] for h in live_hosts(svc.redis)]
    if "host" in body:
        if body["host"] not in names:
            raise NotFound(f"no live host {body['host']!r}", host=body["host"])
        names = [body["host"]]
    for host in names:
        hosts.send_command(svc.redis, host, hosts.SCALE, engine=engine, size=body["size"])
    return jsonify({"engine": engine, "size": body["size"], "hosts": names})
