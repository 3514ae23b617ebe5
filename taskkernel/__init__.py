"""taskkernel: a notebook code-execution backend on Celery workers, a Flask API and a Redis feed."""

__version__ = "0.1.0"

from taskkernel.client import Client, Notebook  # noqa: E402
from taskkernel.exceptions import TaskkernelError  # noqa: E402

__all__ = ["Client", "Notebook", "TaskkernelError", "__version__"]
