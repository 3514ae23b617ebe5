"""taskkernel: a notebook code-execution backend on Celery workers, a Flask API and a Redis feed."""

__version__ = "0.1.0"

from taskkernel.exceptions import TaskkernelError  # noqa: E402

__all__ = ["ApiError", "Client", "Notebook", "TaskkernelError", "__version__"]


def __getattr__(name: str):
    # The client is imported on first use: an engine process imports this package too, and should
    # not pay for http.client and ssl (~2 MiB per notebook) that it never uses.
    if name in ("ApiError", "Client", "Notebook"):
        from taskkernel import client

        return getattr(client, name)
    raise AttributeError(f"module 'taskkernel' has no attribute {name!r}")
