"""Log set-up shared by the supervisor, the workers and the API: text or one JSON object a line.

Records about a notebook or a cell carry `notebook_id` / `cell_id` (pass them with
`extra={...}`), so a log pipeline can follow one notebook across processes and hosts.
`redact` is the one place that hides secrets (URL passwords) from logs and banners; both
formatters apply it to every line, so a URL logged anywhere shows no password.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import TextIO

CONTEXT_FIELDS = ("notebook_id", "cell_id", "worker_id", "host")

# scheme://user:password@host (user may be empty), and a password=... query parameter
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s/:@]*:)[^\s@/]+@", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"([?&][a-z_]*password=)[^&\s]+", re.IGNORECASE)  # sentinel_password= too


def redact(text: str) -> str:
    """`text` with the password of every URL in it replaced by ***.

    `redis://taskkernel:s3cret@127.0.0.1:6379/0` becomes `redis://taskkernel:***@127.0.0.1:6379/0`;
    use it on anything that prints a URL (logs, banners, error messages).
    """
    return _QUERY_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", text))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: getattr(record, k) for k in CONTEXT_FIELDS if getattr(record, k, None)})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = " ".join(f"{k}={getattr(record, k)}" for k in CONTEXT_FIELDS if getattr(record, k, None))
        return redact(f"{text} [{context}]" if context else text)


def configure(level: str, as_json: bool, stream: TextIO, **context) -> None:
    """Send the root logger to `stream`; `context` (e.g. worker_id) is added to every record."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if as_json else
                         TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if context:
        handler.addFilter(_ContextFilter(context))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class _ContextFilter(logging.Filter):
    def __init__(self, context: dict):
        super().__init__()
        self.context = context

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in self.context.items():
            if not getattr(record, key, None):
                setattr(record, key, value)
        return True
