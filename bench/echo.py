"""The HTTP floor: a Flask JSON echo under gunicorn with the API's settings (`python -m bench.echo`).

It parses the request body as JSON and answers it back with `jsonify`, which is the least any
Flask JSON endpoint does; the gunicorn configuration is the one `taskkernel api` uses
(taskkernel/cli/__init__.py, cmd_api): one process, the gthread worker, the same thread count, no
timeout, 30 s keep-alive, no access log. The difference between this and an evaluate round trip
is what taskkernel itself adds.
"""

from __future__ import annotations

import argparse

from flask import Flask, jsonify, request


def create_app() -> Flask:
    app = Flask("bench.echo")
    app.json.sort_keys = False

    @app.post("/echo")
    def echo():
        return jsonify(request.get_json())

    @app.get("/ping")
    def ping():
        return jsonify({"ok": True})

    return app


def serve(host: str, port: int, threads: int) -> None:
    from gunicorn.app.base import BaseApplication

    class _Server(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", 1)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("threads", threads)
            self.cfg.set("timeout", 0)
            self.cfg.set("keepalive", 30)
            self.cfg.set("accesslog", None)
            self.cfg.set("loglevel", "warning")

        def load(self):
            return create_app()

    _Server().run()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.echo")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=32)
    args = parser.parse_args()
    serve(args.host, args.port, args.threads)


if __name__ == "__main__":
    main()
