"""How the API runs under gunicorn: its logs go through taskkernel's one log set-up, and a WSGI
entry point for running gunicorn by hand (`gunicorn taskkernel.api.server:app`)."""

from __future__ import annotations

import logging
import sys

from gunicorn.glogging import Logger

from taskkernel import logs
from taskkernel.settings import Settings, load_settings

log = logging.getLogger("taskkernel.api")


class GunicornLogger(Logger):
    """gunicorn's error (and access) log sent to the root logger, so its lines are formatted, JSON
    with TASKKERNEL_LOG_JSON=1 and redacted like every other taskkernel line."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        configure_logging(load_settings())  # a hand-run gunicorn's master logs before any app exists
        for logger in (self.error_log, self.access_log):
            logger.handlers.clear()
            logger.propagate = True


def configure_logging(settings: Settings) -> None:
    """The API process's log set-up (call before gunicorn starts, or in the WSGI module)."""
    logs.configure(settings.log_level, bool(settings.log_json), sys.stderr)


def __getattr__(name: str):
    # `gunicorn taskkernel.api.server:app` (with `--logger-class taskkernel.api.server.GunicornLogger`):
    # the app is built on first access, from TASKKERNEL_* settings, after logging is set up
    if name == "app":
        from taskkernel.api import create_app

        settings = load_settings()
        configure_logging(settings)
        app = globals()["app"] = create_app(settings)
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
