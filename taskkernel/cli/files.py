"""`taskkernel cp`: copy a file into or out of a notebook's directory, as `kubectl cp` and `scp` do.

A notebook's side is written `<notebook id>:<path>`; the other side is a local path.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from taskkernel.cli.common import add_server_arguments, client_from, size_text, unreachable_is_an_error

REMOTE = re.compile(r"(?P<notebook>[0-9a-f]{32}):(?P<path>.*)", re.DOTALL)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "cp", help="copy a file into or out of a notebook (NOTEBOOK_ID:path)",
        description="Copy a local file into a notebook's directory, or one of its files out: "
                    "`taskkernel cp data.csv <id>:inputs/data.csv`, `taskkernel cp <id>:plot.png .`. "
                    "A notebook path ending in '/' (or empty) takes the local file's name; a local "
                    "directory takes the notebook file's name.")
    add_server_arguments(parser)
    parser.add_argument("source", help="a local file, or NOTEBOOK_ID:path")
    parser.add_argument("target", help="NOTEBOOK_ID:path, or a local path")
    parser.set_defaults(handler=cmd_cp)


@unreachable_is_an_error
def cmd_cp(args: argparse.Namespace) -> int:
    source, target = REMOTE.fullmatch(args.source), REMOTE.fullmatch(args.target)
    if bool(source) == bool(target):
        print("taskkernel cp: exactly one of SOURCE and TARGET must be NOTEBOOK_ID:path", file=sys.stderr)
        return 2
    client = client_from(args)
    if target:  # local -> notebook
        if not os.path.isfile(args.source):
            print(f"taskkernel cp: {args.source}: not a file", file=sys.stderr)
            return 2
        remote = target["path"]
        if remote == "" or remote.endswith("/"):
            remote += os.path.basename(args.source)
        notebook = client.notebook(target["notebook"])
        result = notebook.upload(args.source, remote)
        print(f"{args.source} -> {target['notebook']}:{result['path']} ({size_text(result['size'])})")
        return 0
    local = args.target  # notebook -> local
    if os.path.isdir(local):
        local = os.path.join(local, os.path.basename(source["path"].rstrip("/")))
    notebook = client.notebook(source["notebook"])
    size = notebook.download(source["path"], local)
    print(f"{source['notebook']}:{source['path']} -> {local} ({size_text(size)})")
    return 0
