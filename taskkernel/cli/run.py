"""`taskkernel run FILE`: run a .py file or the code cells of an .ipynb on a server, cell by cell.

Like nbclient/papermill: cells run in order on one notebook (a fresh one unless --notebook is
given), output is printed as it streams, the first failing cell stops the run (unless
--allow-errors) and the exit code says whether every cell succeeded. With --output, the notebook
is written back with each cell's outputs and execution count (nbformat v4; the cell objects'
`outputs` already are nbformat outputs), also when the run stopped early.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from taskkernel import messages
from taskkernel.cli.common import (OutputPrinter, add_notebook_arguments, add_server_arguments, client_from,
                                   one_line, open_notebook, unreachable_is_an_error)

CELL_MARKER = re.compile(r"^# ?%%(.*)$")  # the "percent" format of Jupytext, VS Code and Spyder
INTERRUPT_GRACE_S = 15.0  # after --timeout, how long the interrupted cell may take to answer


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "run", help="run a .py file or an .ipynb's code cells on a server, cell by cell",
        description="Run FILE on a taskkernel server: an .ipynb's code cells, or a .py file (split "
                    "into cells at '# %%' lines; one cell without them). Output is printed as it "
                    "streams; progress ('[cell 2/5]') goes to stderr. Exits 1 if a cell failed.")
    parser.add_argument("file", metavar="FILE", help="a .py or .ipynb file")
    add_server_arguments(parser)
    add_notebook_arguments(parser, "run on")
    parser.add_argument("--output", "-o", metavar="OUT.ipynb", help="write the executed notebook, with outputs")
    parser.add_argument("--timeout", type=float, default=0, metavar="S",
                        help="seconds one cell may run before it is interrupted and counted failed (default: none)")
    parser.add_argument("--allow-errors", action="store_true",
                        help="run every cell even after one fails, and exit 0")
    parser.add_argument("--quiet", "-q", action="store_true", help="print no cell output, only progress")
    parser.set_defaults(handler=cmd_run)


def read_cells(path: Path):
    """The file as an nbformat v4 notebook (a .py file is converted, markdown cells included)."""
    import nbformat

    if path.suffix == ".ipynb":
        return nbformat.read(str(path), as_version=4)
    return notebook_from_script(path.read_text())


def notebook_from_script(text: str):
    """Split a script into cells at '# %%' lines ('# %% [markdown]' starts a markdown cell)."""
    import nbformat.v4 as v4

    cells, kind, lines = [], "code", []

    def flush():
        source = "\n".join(lines).strip("\n")
        if kind == "markdown":
            source = "\n".join(re.sub(r"^# ?", "", line) for line in source.splitlines())
            if source.strip():
                cells.append(v4.new_markdown_cell(source))
        elif source.strip():
            cells.append(v4.new_code_cell(source))

    for line in text.splitlines():
        marker = CELL_MARKER.match(line)
        if marker:
            flush()
            kind, lines = ("markdown" if "[markdown]" in marker.group(1) else "code"), []
        else:
            lines.append(line)
    flush()
    notebook = v4.new_notebook(cells=cells)
    notebook.metadata["language_info"] = {"name": "python"}
    return notebook


@unreachable_is_an_error
def cmd_run(args: argparse.Namespace) -> int:
    import nbformat

    path = Path(args.file)
    if not path.is_file():
        print(f"taskkernel run: no such file: {path}", file=sys.stderr)
        return 2
    try:
        notebook = read_cells(path)
    except Exception as exc:  # nbformat raises several kinds for an unreadable notebook
        print(f"taskkernel run: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code" and cell.source.strip()]
    client = client_from(args)
    nb, owned = open_notebook(client, args)
    progress = sys.stderr
    printer = OutputPrinter(enabled=not args.quiet)
    failed: list[tuple[int, str]] = []
    interrupted = False
    started = time.monotonic()
    ran = 0
    print(f"taskkernel run: {path.name}: {_cells(len(code_cells))} on notebook {nb.id} ({client.url})",
          file=progress, flush=True)
    try:
        position = "0-0"
        for number, cell in enumerate(code_cells, 1):
            print(f"[cell {number}/{len(code_cells)}] {one_line(cell.source)}", file=progress, flush=True)
            try:
                record, position = run_cell(nb, cell.source, position, printer, args.timeout)
            except KeyboardInterrupt:
                interrupted = True
                nb.interrupt()
                print(f"[cell {number}/{len(code_cells)}] interrupted (Ctrl-C)", file=progress, flush=True)
                break
            ran += 1
            cell.outputs = [nbformat.from_dict(output) for output in record["outputs"]]
            cell.execution_count = record["execution_count"]
            printer.finish_line()
            if record["status"] != "ok":
                error = record.get("error") or {}
                reason = f"{error.get('ename', record['status'])}: {error.get('evalue', '')}".rstrip(": ")
                failed.append((number, reason))
                print(f"[cell {number}/{len(code_cells)}] failed: {reason}", file=progress, flush=True)
                if not args.allow_errors:
                    break
    finally:
        if args.output:
            nbformat.validate(notebook)
            nbformat.write(notebook, args.output)
            print(f"taskkernel run: wrote {args.output}", file=progress, flush=True)
        if owned and not args.keep:
            nb.close()
    elapsed = time.monotonic() - started
    summary = f"taskkernel run: {ran} of {_cells(len(code_cells))} ran in {elapsed:.1f} s"
    if failed:
        summary += f"; {len(failed)} failed (first: cell {failed[0][0]}, {failed[0][1]})"
    print(summary, file=progress, flush=True)
    if interrupted:
        return 130
    return 1 if failed and not args.allow_errors else 0


def _cells(n: int) -> str:
    return f"{n} cell" if n == 1 else f"{n} cells"


def run_cell(nb, code: str, position: str, printer: OutputPrinter, timeout_s: float) -> tuple[dict, str]:
    """Queue one cell, print its messages as they arrive; return the finished cell and the feed position.

    A cell still running after `timeout_s` (0: no limit) is interrupted; KeyboardInterrupt
    propagates to the caller, which interrupts the cell.
    """
    queued = nb.evaluate(code, wait=False)
    cell_id = queued["id"]
    replied = False
    for msg in nb.follow(cell_id, after=position, timeout=timeout_s or None):
        position = msg["position"] or position
        printer.message(msg)
        replied = msg["header"]["msg_type"] == "execute_reply"
    if not replied and timeout_s:
        nb.interrupt()
        printer.finish_line()
        print(f"[taskkernel run: the cell ran for more than {timeout_s:g} s: interrupted]", file=sys.stderr,
              flush=True)
        for msg in nb.follow(cell_id, after=position, timeout=INTERRUPT_GRACE_S):
            position = msg["position"] or position
            printer.message(msg)
    record = nb.cell(cell_id)
    if record["state"] != "done":
        record = {**record, "status": "error", "error": messages.error_content(
            "TimeoutError", f"the cell did not finish within {timeout_s:g} s", [])}
    return record, position
