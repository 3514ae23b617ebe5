"""The benchmark suite: taskkernel measured side by side with Jupyter, run as `python -m bench`.

Every figure is taken for taskkernel and, in the same run, for the peers a user would pick instead
(ipykernel through jupyter_client, jupyter-kernel-gateway over HTTP and its websocket) and for the
floors under our stack (a Flask JSON echo under the same gunicorn settings, Redis PING and
PUBLISH->subscriber), so every comparison is a ratio taken on the same machine at the same time.
"""
