"""`taskkernel console`: an interactive remote console on a notebook, in the manner of IPython's.

Lines are read with readline (history in ~/.taskkernel_history, Tab completion answered by the
notebook's live namespace through the complete endpoint); a cell goes on over several lines while
the is_complete endpoint says it is incomplete, with the indent it suggests. Output is printed as
the cell produces it (the notebook's feed over SSE), and Ctrl-C while a cell runs sends an
interrupt and keeps following the cell, so its KeyboardInterrupt traceback is shown as IPython does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from taskkernel.cli_common import (OutputPrinter, add_notebook_arguments, add_server_arguments, client_from,
                                   open_notebook, unreachable_is_an_error)
from taskkernel.client import ApiError, Client, Notebook

HISTORY_FILE = Path("~/.taskkernel_history")
HISTORY_LENGTH = 2000
# Word breaks for completion: '.' is not one, so 'math.sq' is completed as a whole.
COMPLETER_DELIMS = " \t\n`~!@#$%^&*()-=+[{]}\\|;:'\",<>/?"


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
        console.save_history()
        if owned and not args.keep:
            notebook.close()
        elif owned:
            print(f"notebook {notebook.id} kept", file=sys.stderr)
    return 0


class RemoteConsole:
    """The read-run-print loop on one notebook."""

    def __init__(self, client: Client, notebook: Notebook):
        self.client = client
        self.notebook = notebook
        self.printer = OutputPrinter()
        self.color = sys.stdout.isatty()
        self.position = "0-0"  # feed position of the last message shown
        self.count = notebook.record.get("execution_count", 0) + 1
        self._lines: list[str] = []  # the lines of the cell being typed, before the current one
        self._indent = ""
        self._readline = None
        self._setup_readline()

    # --- readline ------------------------------------------------------------------------------

    def _setup_readline(self) -> None:
        try:
            import readline
        except ImportError:  # no readline on this Python: plain input(), no history or completion
            return
        self._readline = readline
        if "libedit" in (readline.__doc__ or ""):
            readline.parse_and_bind("bind ^I rl_complete")
        else:
            readline.parse_and_bind("tab: complete")
        readline.set_completer_delims(COMPLETER_DELIMS)
        readline.set_completer(self._complete)
        readline.set_pre_input_hook(self._insert_indent)
        readline.set_history_length(HISTORY_LENGTH)
        try:
            readline.read_history_file(HISTORY_FILE.expanduser())
        except OSError:  # no history yet
            pass

    def save_history(self) -> None:
        if self._readline is not None:
            try:
                self._readline.write_history_file(HISTORY_FILE.expanduser())
            except OSError as exc:
                print(f"cannot save history: {exc}", file=sys.stderr)

    def _insert_indent(self) -> None:
        if self._indent:
            self._readline.insert_text(self._indent)
            self._readline.redisplay()

    def _complete(self, text: str, state: int) -> str | None:
        """readline's completer: ask the notebook once per Tab (state 0), then hand out the matches."""
        if state == 0:
            try:
                self._matches = self._completions()
            except Exception:  # a completer must never raise into readline
                self._matches = []
        return self._matches[state] if state < len(self._matches) else None

    def _completions(self) -> list[str]:
        readline = self._readline
        line = readline.get_line_buffer()
        begin, end = readline.get_begidx(), readline.get_endidx()
        if not line[:end].strip():  # Tab at the start of a line indents
            return ["    "]
        before = "\n".join(self._lines + [""])
        code = before + line
        reply = self.notebook.complete(code, len(before) + end)
        start = reply["cursor_start"] - len(before)  # where the notebook's matches start, in this line
        candidates = []
        for match in reply.get("matches", []):
            # readline replaces line[begin:end]; the notebook replaces line[start:end]
            if start >= begin:
                candidates.append(line[begin:start] + match)
            elif match.startswith(line[start:begin]):
                candidates.append(match[begin - start:])
        return candidates

    # --- the loop ------------------------------------------------------------------------------

    def banner(self, deletes: bool) -> None:
        record = self.notebook.record
        leaving = "Ctrl-D leaves" + (" and deletes the notebook" if deletes else "")
        print(f"taskkernel console: notebook {self.notebook.id} ({record.get('engine', '?')}) "
              f"on {self.client.url}\nTab completes, name? shows help, Ctrl-C interrupts a running cell, "
              f"{leaving}.\n", flush=True)

    def prompt(self, continuation: bool) -> str:
        text = f"In [{self.count}]: "
        if continuation:
            text = " " * (len(text) - 5) + "...: "
        if not self.color:
            return text
        return f"\001\x1b[32m\002{text}\001\x1b[0m\002"  # \001 \002: readline ignores the width

    def read_cell(self) -> str:
        """Read lines until they form a complete cell (or a blank line ends an indented block)."""
        self._lines, self._indent = [], ""
        try:
            while True:
                line = input(self.prompt(continuation=bool(self._lines)))
                self._indent = ""
                if self._lines and not line.strip():
                    break  # a blank line ends a block, as in IPython
                self._lines.append(line)
                code = "\n".join(self._lines)
                if code.strip().endswith("?") or code.lstrip().startswith("%"):
                    break
                answer = self.notebook.is_complete(code)
                if answer.get("status") != "incomplete":
                    break
                self._indent = answer.get("indent", "")
            return "\n".join(self._lines)
        finally:
            self._lines, self._indent = [], ""

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
