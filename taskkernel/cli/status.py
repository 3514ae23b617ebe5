"""`taskkernel status`: a table of hosts, their workers and the notebooks, from the API or Redis."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys

from taskkernel.cli.common import add_server_arguments, client_from, unreachable_is_an_error


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "status", help="show hosts, workers and notebooks with their states",
        description="Show the hosts (supervisors), their worker pools and the notebooks with their "
                    "states. Asks the API (GET /api/status) when --url is given or no Redis is "
                    "configured; otherwise reads TASKKERNEL_REDIS_URL directly.")
    add_server_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the status as JSON instead of tables")
    parser.set_defaults(handler=cmd_status)


@unreachable_is_an_error
def cmd_status(args: argparse.Namespace) -> int:
    status = read_status(args)
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        sys.stdout.write(format_status(status))
    return 0


def read_status(args: argparse.Namespace) -> dict:
    """From the API when asked for (or when there is no Redis to read), else from Redis."""
    from taskkernel.settings import load_settings

    settings = load_settings()
    if args.url or not settings.redis_url:
        return client_from(args).status()
    from taskkernel import connections, metrics

    client = connections.connect(settings.redis_url)
    try:
        return metrics.snapshot(client).to_dict()
    finally:
        client.close()


def format_status(status: dict) -> str:
    """The hosts table, the notebooks table and a line of totals."""
    now = status.get("time") or dt.datetime.now(dt.timezone.utc).timestamp()
    hosts = [[
        h["name"],
        "up" if h["alive"] else "gone",
        f"{h['heartbeat_age_s']:.1f}s ago" if h.get("heartbeat_age_s") is not None else "-",
        f"{h['workers']}/{h['max_workers']}" if h.get("max_workers") else str(h["workers"]),
        ", ".join(f"{engine}:{n}/{h['pools'].get(engine, '?')}" for engine, n in sorted(h["idle"].items())) or "-",
        str(h["notebooks"]),
        str(h["pid"] or "-"),
    ] for h in status["hosts"]]
    notebooks = [[
        nb["id"],
        nb["engine"],
        nb["state"],
        nb["worker"]["host"] if nb.get("worker") else "-",
        str(nb["worker"]["pid"]) if nb.get("worker") else "-",
        str(nb["execution_count"]),
        str(nb["pending"]),
        _ago(nb.get("last_activity"), now),
    ] for nb in status["notebooks"]]
    parts = [
        f"HOSTS ({len(hosts)})\n",
        table(["HOST", "STATE", "HEARTBEAT", "WORKERS", "IDLE/POOL", "NOTEBOOKS", "PID"], hosts)
        if hosts else "  no host has a supervisor running (start one with `taskkernel worker`)\n",
        f"\nNOTEBOOKS ({len(notebooks)})\n",
        table(["ID", "ENGINE", "STATE", "HOST", "PID", "EXEC", "QUEUED", "LAST ACTIVITY"], notebooks)
        if notebooks else "  none\n",
    ]
    cells = status.get("cells") or {}
    counts = ", ".join(f"{n} {state}" for state, n in sorted(cells.items())) or "none"
    parts.append(f"\ncells run: {counts}; queued now: {status.get('queue_depth', 0)}\n")
    return "".join(parts)


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in [header, *rows]]
    return "\n".join(lines) + "\n"


def _ago(iso: str | None, now: float) -> str:
    if not iso:
        return "-"
    when = dt.datetime.fromisoformat(iso)
    seconds = max(0.0, now - when.timestamp())
    if seconds < 90:
        age = f"{seconds:.0f}s ago"
    elif seconds < 5400:
        age = f"{seconds / 60:.0f}m ago"
    else:
        age = f"{seconds / 3600:.1f}h ago"
    return f"{when.astimezone().strftime('%H:%M:%S')} ({age})"
