"""What the client-side commands (status, run, console) share: which server, and how output prints.

A cell's feed messages are printed in a terminal the way IPython's terminal does: streams as they
come, `Out[n]:` for a result, the text form of a display (with a note for images), and an error's
traceback on stderr.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import re
import sys
from collections.abc import Callable
from typing import TextIO

from taskkernel.client import Client, Notebook
from taskkernel.settings import load_settings

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="the API's address (default: http://<TASKKERNEL_API_HOST>:<TASKKERNEL_API_PORT>, "
                                      "i.e. http://127.0.0.1:8000)")
    parser.add_argument("--token", help="API token (default: TASKKERNEL_TOKEN)")
    parser.add_argument("--ca-bundle", metavar="PEM", help="CA certificates to check an https:// server against "
                                                           "(default: the system's)")


def default_url() -> str:
    settings = load_settings()
    host = settings.api_host
    if host in ("0.0.0.0", "::", ""):  # the API listens everywhere: talk to it on loopback
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.api_port}"


def client_from(args: argparse.Namespace) -> Client:
    token = args.token if args.token is not None else (load_settings().token or None)
    return Client(args.url or default_url(), token=token, ca_bundle=getattr(args, "ca_bundle", None))


def add_notebook_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    """--notebook, --engine, --keep and --lease, as `run` and `console` take them."""
    parser.add_argument("--notebook", metavar="ID", help=f"{verb} this existing notebook instead of a new one")
    parser.add_argument("--engine", default="python", help="engine of a new notebook (default: python)")
    parser.add_argument("--keep", action="store_true", help="do not delete the new notebook at the end")
    parser.add_argument("--lease", type=float, default=60.0, metavar="S",
                        help="a new notebook (without --keep) is opened with this lease and renewed while "
                             "the command runs, so a killed command leaves nothing behind (default: 60)")


def open_notebook(client: Client, args: argparse.Namespace) -> tuple[Notebook, bool]:
    """The notebook a command works on, and whether the command owns it (started it)."""
    if args.notebook is not None:
        return client.notebook(args.notebook), False
    if args.keep:
        return client.start(args.engine), True
    notebook = client.start(args.engine, lease_s=args.lease)
    notebook.keep_alive()
    return notebook, True


def unreachable_is_an_error(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Wrap a command so that a server that does not answer is one line on stderr and exit code 2."""

    @functools.wraps(handler)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (OSError, http.client.HTTPException) as exc:
            print(f"taskkernel {args.command}: cannot reach the server at {args.url or default_url()}: {exc}",
                  file=sys.stderr)
            return 2

    return wrapper


def one_line(code: str, width: int = 60) -> str:
    """The first non-blank line of a cell, cut to `width` characters, for progress lines."""
    for line in code.splitlines():
        if line.strip():
            return line.strip() if len(line.strip()) <= width else line.strip()[: width - 1] + "…"
    return ""


def size_text(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 1048576:.1f} MiB"


class OutputPrinter:
    """Prints one notebook's feed messages to a terminal (or any pair of text streams)."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None, color: bool | None = None,
                 results: bool = True, enabled: bool = True):
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.color = self.out.isatty() if color is None else color
        self.results = results
        self.enabled = enabled
        self._at_line_start = True

    def _write(self, stream: TextIO, text: str) -> None:
        if not text:
            return
        if not self.color:
            text = ANSI.sub("", text)
        stream.write(text)
        stream.flush()
        self._at_line_start = text.endswith("\n")

    def _paint(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def finish_line(self) -> None:
        """End a line the cell left open, so the next prompt starts at the left edge."""
        if not self._at_line_start:
            self._write(self.out, "\n")

    def message(self, msg: dict) -> None:
        if not self.enabled:
            return
        msg_type, content = msg["header"]["msg_type"], msg["content"]
        if msg_type == "stream":
            self._write(self.out if content["name"] == "stdout" else self.err, content["text"])
        elif msg_type == "execute_result" and self.results:
            self.finish_line()
            text = bundle_text(content["data"])
            prompt = self._paint(f"Out[{content['execution_count']}]: ", "31")
            self._write(self.out, prompt + ("\n" if "\n" in text else "") + text + "\n")
        elif msg_type == "display_data" and self.results:
            self.finish_line()
            self._write(self.out, bundle_text(content["data"]) + "\n")
        elif msg_type == "error":
            self.finish_line()
            lines = content.get("traceback") or [f"{content['ename']}: {content['evalue']}"]
            self._write(self.err, self._paint("\n".join(lines), "31") + "\n")
        elif msg_type == "execute_reply" and content.get("status") == "aborted":
            self.finish_line()
            self._write(self.err, f"[aborted: {content.get('reason') or 'not run'}]\n")


def bundle_text(data: dict) -> str:
    """What a terminal can show of a mime bundle: its text/plain, with a note for richer parts."""
    notes = []
    for mime in ("image/png", "image/jpeg", "image/svg+xml"):
        if mime in data:
            size = len(data[mime]) * 3 // 4 if mime != "image/svg+xml" else len(data[mime])  # base64
            notes.append(f"[{mime}, {size_text(size)}]")
    if "text/html" in data and "text/plain" not in data:
        notes.append("[text/html]")
    text = data.get("text/plain", "")
    return " ".join(notes + ([text] if text else [])) if notes else text
