"""Fan-out: one cell run on many notebooks at once, results gathered per notebook.

As ipyparallel's DirectView (and the first IPython kernel's InteractiveCluster) do, a Cluster
sends the same request to each of its notebooks in parallel and gathers the answers; unlike
`AsyncResult.get()`, which raises one CompositeError, a failure (an exception in the cell, or a
notebook that could not be reached) is reported in that notebook's result and the others are
kept, because with many notebooks some failing is the normal case.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from taskkernel.exceptions import TaskkernelError

if TYPE_CHECKING:
    from taskkernel.client import Client, Notebook

MAX_THREADS = 32  # requests in flight at once; each holds one keep-alive connection


@dataclass(frozen=True)
class NotebookResult:
    """What one notebook answered: the finished cell, or the exception that kept it from answering."""

    notebook_id: str
    cell: dict | None = None
    exception: BaseException | None = None

    @property
    def ok(self) -> bool:
        """True when the cell ran to the end without an error (or, for other calls, when they answered)."""
        if self.exception is not None or self.cell is None:
            return False
        if "notebook_id" not in self.cell or "state" not in self.cell:  # not a cell: an interrupt's answer, a record
            return True
        return self.cell["state"] == "done" and self.cell.get("status") == "ok"

    @property
    def error(self) -> dict | None:
        """`ename`/`evalue`/`traceback` of the failure (the cell's own, a request's, or a time-out), or None."""
        if self.exception is not None:
            exc = self.exception
            return {"ename": type(exc).__name__, "evalue": str(exc), "traceback": [f"{type(exc).__name__}: {exc}"]}
        if self.cell is None or self.ok:
            return None
        if self.cell.get("state") != "done":
            return {"ename": "TimeoutError", "evalue": f"the cell is still {self.cell.get('state')}",
                    "traceback": []}
        return self.cell.get("error") or {"ename": "Aborted", "evalue": f"the cell was {self.cell.get('status')}",
                                          "traceback": []}

    @property
    def value(self) -> str | None:
        """The text/plain of the cell's execute_result, if it had one."""
        for output in (self.cell or {}).get("outputs", []):
            if output["output_type"] == "execute_result":
                return output["data"].get("text/plain")
        return None

    @property
    def stdout(self) -> str:
        return (self.cell or {}).get("stdout", "")


class Cluster:
    """A set of notebooks addressed together; a context manager that deletes the ones it started."""

    def __init__(self, client: Client, notebooks: Iterable[Notebook | str] | int, *, engine: str = "python",
                 max_workers: int | None = None):
        """`notebooks`: handles, ids, or a number of new notebooks of `engine` to start (in parallel)."""
        from taskkernel.client import Notebook

        self.client = client
        self._max_workers = max_workers
        self._pool: ThreadPoolExecutor | None = None  # kept, so its threads keep their connections
        self._owned: list[Notebook] = []
        if isinstance(notebooks, int):
            started = self._each(range(notebooks), lambda _: client.start(engine))
            self.notebooks = [n for n in started if isinstance(n, Notebook)]
            self._owned = list(self.notebooks)
            failures = [n for n in started if not isinstance(n, Notebook)]
            if failures:
                self.close()
                raise failures[0]
        else:
            self.notebooks = [nb if isinstance(nb, Notebook) else Notebook(client, {"id": nb}) for nb in notebooks]

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.notebooks)

    @property
    def ids(self) -> list[str]:
        return [nb.id for nb in self.notebooks]

    def evaluate(self, code: str, timeout: float = 60.0) -> dict[str, NotebookResult]:
        """Run `code` on every notebook in parallel; {notebook id: result}, in the cluster's order.

        Never raises for one notebook's failure: look at each result's `ok` and `error`.
        """
        return self._gather(lambda nb: nb.evaluate(code, wait=True, timeout=timeout))

    def interrupt(self) -> dict[str, NotebookResult]:
        """Interrupt the running cell of every notebook (the `cell` of each result is the API's answer)."""
        return self._gather(lambda nb: nb.interrupt())

    def restart(self) -> dict[str, NotebookResult]:
        """A fresh namespace for every notebook (the `cell` of each result is the notebook record)."""
        return self._gather(lambda nb: nb.restart())

    def close(self) -> None:
        """Delete the notebooks this cluster started (the others are left alone); stop its threads."""
        self._each(self._owned, lambda nb: nb.close())
        self._owned = []
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def _gather(self, call: Callable[[Notebook], dict]) -> dict[str, NotebookResult]:
        answers = self._each(self.notebooks, call)
        results = {}
        for nb, answer in zip(self.notebooks, answers):
            if isinstance(answer, BaseException):
                results[nb.id] = NotebookResult(nb.id, exception=answer)
            else:
                results[nb.id] = NotebookResult(nb.id, cell=answer)
        return results

    def _each(self, items: Iterable, call: Callable[[Any], Any]) -> list:
        """call(item) for every item in parallel; each answer, or the exception it raised, in order."""
        items = list(items)
        if not items:
            return []

        def guarded(item):
            try:
                return call(item)
            except (TaskkernelError, OSError, ValueError) as exc:  # ValueError: a garbled answer
                return exc

        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self._max_workers or MAX_THREADS,
                                            thread_name_prefix="taskkernel-cluster")
        return list(self._pool.map(guarded, items))
