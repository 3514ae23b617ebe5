"""`taskkernel console`: an interactive remote console on a notebook, in the manner of IPython's.

At a terminal, cells are edited with prompt_toolkit, as IPython's terminal edits them: a whole
cell at a time over several lines (Enter runs it when the notebook's is_complete endpoint says it
is complete, else opens the next line with the indent it suggests; a blank line ends a block), a
completion menu on Tab answered by the notebook's live namespace (the complete endpoint, given the
whole cell), and history of whole cells in ~/.taskkernel_history. Output is printed as the cell
produces it (the notebook's feed over SSE), and Ctrl-C while a cell runs sends an interrupt and
keeps following the cell, so its KeyboardInterrupt traceback is shown as IPython does. Without a
terminal (stdin a pipe) lines are read plainly, with the same rules for where a cell ends.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from taskkernel.cli.common import (OutputPrinter, add_notebook_arguments, add_server_arguments, client_from,
                                   open_notebook, unreachable_is_an_error)
from taskkernel.client import ApiError, Client, Notebook

HISTORY_FILE = Path("~/.taskkernel_history")
INDENT = "    "


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "console", help="an interactive console on a notebook (history, Tab completion, Ctrl-C interrupts)",
        description="An interactive console on a remote notebook: Tab completes from the live namespace, "
                    "'name?' shows help, Ctrl-C interrupts a running cell, Ctrl-D leaves. Without "
                    "--notebook a new notebook is started and deleted on leaving (unless --keep).")
    add_server_arguments(parser)
    add_notebook_arguments(parser, "attach to")
    parser.set_defaults(handler=cmd_console)


@unreachable_is_an_error
def cmd_console(args: argparse.Namespace) -> int:
    client = client_from(args)
    notebook, owned = open_notebook(client, args)
    console = RemoteConsole(client, notebook)
    try:
        console.banner(owned and not args.keep)
        console.loop()
    finally:
        if owned and not args.keep:
            notebook.close()
        elif owned:
            print(f"notebook {notebook.id} kept", file=sys.stderr)
    return 0


def cell_ends(notebook: Notebook, code: str) -> tuple[bool, str]:
    """Whether `code` is a whole cell to run now, and else the indent of its next line.

    Console commands (`%restart`) and help (`name?`) run at once; a blank last line ends a block;
    otherwise the notebook's is_complete decides (`invalid` runs too, to show the SyntaxError).
    """
    lines = code.split("\n")
    if not code.strip() or code.strip().endswith("?") or code.lstrip().startswith("%"):
        return True, ""
    if len(lines) > 1 and not lines[-1].strip():
        return True, ""
    answer = notebook.is_complete(code)
    if answer.get("status") != "incomplete":
        return True, ""
    return False, answer.get("indent", "")


def notebook_completer(notebook: Notebook):
    """A prompt_toolkit Completer answered by the notebook's live namespace, given the whole cell."""
    from prompt_toolkit.completion import Completer, Completion

    class _NotebookCompleter(Completer):
        def get_completions(self, document, complete_event):
            try:
                reply = notebook.complete(document.text, document.cursor_position)
            except Exception:  # a completer must never break the prompt (the server may be away)
                return
            start = reply.get("cursor_start", document.cursor_position) - document.cursor_position
            for match in reply.get("matches", []):
                yield Completion(match, start_position=start)

    return _NotebookCompleter()


class CellEditor:
    """A prompt_toolkit session that edits one whole cell per prompt."""

    def __init__(self, notebook: Notebook, color: bool):
        from prompt_toolkit import PromptSession
        from prompt_toolkit.filters import Condition
        from prompt_toolkit.history import FileHistory
        from prompt_toolkit.key_binding import KeyBindings

        self.notebook = notebook
        bindings = KeyBindings()

        @Condition
        def at_indentation() -> bool:
            return not self.session.default_buffer.document.current_line_before_cursor.strip()

        @bindings.add("enter")
        def _enter(event) -> None:
            buffer = event.current_buffer
            if buffer.complete_state is not None and buffer.complete_state.current_completion is not None:
                buffer.apply_completion(buffer.complete_state.current_completion)  # Enter picks from the menu
                return
            if not buffer.document.on_last_line:  # editing an earlier line of the cell: a new line there
                buffer.newline()
                return
            text = buffer.document.text
            try:
                ends, indent = cell_ends(self.notebook, text)
            except Exception:  # the server did not answer: run it, and let the run say why
                ends, indent = True, ""
            if ends:
                buffer.text = text.rstrip()
                buffer.validate_and_handle()
            else:
                buffer.insert_text("\n" + indent)

        @bindings.add("tab", filter=at_indentation)
        def _indent(event) -> None:
            event.current_buffer.insert_text(INDENT)

        style = "ansigreen" if color else ""
        self.session = PromptSession(
            multiline=True, key_bindings=bindings, completer=notebook_completer(notebook),
            complete_while_typing=False, complete_in_thread=True, history=FileHistory(str(HISTORY_FILE.expanduser())),
            prompt_continuation=lambda width, line_number, wrap_count: [(style, "...: ".rjust(width))],
            enable_history_search=False)
        self._style = style

    def read(self, count: int) -> str:
        """One cell, or EOFError (Ctrl-D) / KeyboardInterrupt (Ctrl-C, the cell is dropped)."""
        return self.session.prompt([(self._style, f"In [{count}]: ")])


class RemoteConsole:
    """The read-run-print loop on one notebook."""

    def __init__(self, client: Client, notebook: Notebook):
        self.client = client
        self.notebook = notebook
        self.printer = OutputPrinter()
        self.color = sys.stdout.isatty()
        self.position = "0-0"  # feed position of the last message shown
        self.count = notebook.record.get("execution_count", 0) + 1
        self.editor = CellEditor(notebook, self.color) if sys.stdin.isatty() and sys.stdout.isatty() else None

    # --- the loop ------------------------------------------------------------------------------

    def banner(self, deletes: bool) -> None:
        record = self.notebook.record
        leaving = "Ctrl-D leaves" + (" and deletes the notebook" if deletes else "")
        print(f"taskkernel console: notebook {self.notebook.id} ({record.get('engine', '?')}) "
              f"on {self.client.url}\nTab completes, name? shows help, Ctrl-C interrupts a running cell, "
              f"{leaving}.\n", flush=True)

    def read_cell(self) -> str:
        """The next cell: edited at a terminal, else read line by line until it is whole."""
        if self.editor is not None:
            return self.editor.read(self.count)
        lines: list[str] = []
        while True:
            prompt = f"In [{self.count}]: " if not lines else " " * (len(f"In [{self.count}]: ") - 5) + "...: "
            line = input(prompt)
            if lines and not line.strip():
                break  # a blank line ends a block, as in IPython
            lines.append(line)
            if cell_ends(self.notebook, "\n".join(lines))[0]:
                break
        return "\n".join(lines)

    def loop(self) -> None:
        while True:
            try:
                code = self.read_cell()
            except EOFError:
                print()
                return
            except KeyboardInterrupt:
                print("\nKeyboardInterrupt")
                continue
            if not code.strip():
                continue
            try:
                if not self.command(code):
                    self.execute(code)
            except KeyboardInterrupt:
                print("\nKeyboardInterrupt")
            except ApiError as exc:
                print(f"taskkernel: {exc.message}", file=sys.stderr)
                if exc.status == 404:
                    return
            except OSError as exc:
                print(f"taskkernel: the server did not answer: {exc}", file=sys.stderr)

    def command(self, code: str) -> bool:
        """Console commands (%restart, %interrupt, %exit) and `name?` help; True when handled."""
        stripped = code.strip()
        if stripped in ("%exit", "%quit"):
            raise EOFError
        if stripped == "%restart":
            self.notebook.restart()
            self.count = 1
            print("notebook restarted: a fresh namespace on a fresh worker")
            return True
        if stripped == "%interrupt":
            print(self.notebook.interrupt())
            return True
        if stripped.endswith("?") and "\n" not in stripped:
            name = stripped.rstrip("?").strip()
            reply = self.notebook.inspect(name, len(name))
            text = reply.get("data", {}).get("text/plain") if reply.get("found") else None
            print(text or f"Object `{name}` not found.")
            return True
        return False

    def execute(self, code: str) -> None:
        """Run a cell, printing its messages as they come; Ctrl-C interrupts it (again and again)."""
        cell = self.notebook.evaluate(code, wait=False)
        while True:
            try:
                for msg in self.notebook.follow(cell["id"], after=self.position):
                    self.position = msg["position"] or self.position
                    self.printer.message(msg)
                    if msg["header"]["msg_type"] == "execute_reply":
                        count = msg["content"].get("execution_count")
                        self.count = (count or self.count - 1) + 1
                        self.printer.finish_line()
                        print()
                        return
                return  # the feed ended: the notebook was deleted
            except KeyboardInterrupt:
                if self.color:
                    print(flush=True)  # past the ^C the terminal echoed
                else:
                    self.printer.finish_line()
                self.notebook.interrupt()
