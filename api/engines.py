"""GET /api/engines: the engine types defined by files in config/engines/ and plug-ins."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from taskkernel.engines import registry

blueprint = Blueprint("engines", __name__)


@blueprint.get("/engines")
def list_engines():
    settings = current_app.extensions["taskkernel"].settings
    specs, errors = registry.load_specs(settings.config_dir)
    return jsonify({
        "engines": [registry.describe(spec) for _, spec in sorted(specs.items())],
        "errors": errors,
    })
