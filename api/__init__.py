"""The HTTP API (installed as taskkernel.api): validates, routes to Redis and Celery, answers."""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass

import redis
from flask import Flask
from werkzeug.routing import BaseConverter

from taskkernel import connections
from taskkernel.celery_wire import TaskMessages
from taskkernel.deadlines import deadline_connection_class, set_deadline
from taskkernel.notebooks import NotebookStore
from taskkernel.settings import Settings


class HexIdConverter(BaseConverter):
    """Notebook and cell ids are 32 hex digits; anything else is a 404 without touching Redis."""

    regex = "[0-9a-f]{32}"


@dataclass
class Services:
    """What the request handlers use; built once per API process by create_app."""

    settings: Settings
    redis: redis.Redis
    store: NotebookStore
    messages: TaskMessages  # the Celery task messages cells and namespace operations are queued as
    feed_slots: threading.BoundedSemaphore  # one per SSE stream, so streams never starve other calls
    # set when the API process is told to stop: feed streams end (followers resume elsewhere with
    # Last-Event-ID) and waiting evaluates answer 202 at once, so a restart takes a second, not 30
    stopping: threading.Event = dataclasses.field(default_factory=threading.Event)


def create_app(settings: Settings, client: redis.Redis | None = None) -> Flask:
    """The Flask app for `settings`; pass `client` to share a Redis connection pool."""
    from taskkernel.api import auth, cells, engines, errors, feed, notebooks, openapi, pools, variables
    from taskkernel.celery_wire import make_celery

    app = Flask("taskkernel.api", static_folder=None)  # the console serves api/static/, with its headers
    app.url_map.converters["hexid"] = HexIdConverter
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.sort_keys = False
    if client is None:
        client = connections.connect(settings.redis_url, max_connections=max(16, settings.api_threads * 2),
                                     timeout_s=10, health_check_interval=30,
                                     connection_class=deadline_connection_class(settings.redis_url))
    app.extensions["taskkernel"] = Services(
        settings=settings,
        redis=client,
        store=NotebookStore(client, stream_maxlen=settings.feed_stream_maxlen,
                            durability=connections.Durability.from_settings(settings)),
        messages=TaskMessages(make_celery(settings)),
        feed_slots=threading.BoundedSemaphore(settings.feed_subscriber_limit),
    )
    errors.register(app)
    app.before_request(lambda: set_deadline(settings.request_deadline_s))  # views may set their own
    app.teardown_request(lambda exc: set_deadline(None))
    auth.register(app, settings)
    app.register_blueprint(engines.blueprint, url_prefix="/api")
    app.register_blueprint(notebooks.blueprint, url_prefix="/api")
    app.register_blueprint(cells.blueprint, url_prefix="/api")
    app.register_blueprint(feed.blueprint, url_prefix="/api")
    app.register_blueprint(openapi.blueprint, url_prefix="/api")
    app.register_blueprint(pools.blueprint, url_prefix="/api")
    app.register_blueprint(variables.blueprint, url_prefix="/api")
    from taskkernel.api import files as files_api  # a notebook's files: PUT/GET/DELETE .../files/<path>
    app.register_blueprint(files_api.blueprint, url_prefix="/api")
    from taskkernel.api import comms, stdin  # the front end's channels to a running engine
    app.register_blueprint(comms.blueprint, url_prefix="/api")
    app.register_blueprint(stdin.blueprint, url_prefix="/api")
    from taskkernel.api import console, metrics as metrics_api  # /metrics, /api/status, the page at /
    app.register_blueprint(metrics_api.blueprint)
    metrics_api.register(app)  # its registry, and the request latency of every route
    app.register_blueprint(console.blueprint)
    return app
