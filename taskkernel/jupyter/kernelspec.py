"""`taskkernel kernelspec install`: register the bridge kernel with Jupyter (a kernel.json).

The kernelspec's argv starts `python -m taskkernel.jupyter` with this interpreter; its env tells the
kernel where the service is (TASKKERNEL_URL) and which engine to open (TASKKERNEL_ENGINE); its
interrupt_mode is "message", so Jupyter's interrupt button sends interrupt_request on the control
channel, which the kernel turns into the notebook's interrupt.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

from taskkernel.client import ApiError, Client
from taskkernel.exceptions import ConfigurationError
from taskkernel.settings import load_settings

KERNEL_MODULE = "taskkernel.jupyter"
# Jupyter users expect ipykernel: the ipython engine runs cells as it does (magics, matplotlib
# inline, the pager, display ids); `--engine python` picks the plain engine
DEFAULT_ENGINE = "ipython"


def kernel_json(url: str, engine: str = DEFAULT_ENGINE, display_name: str | None = None, language: str = "python",
                token: str | None = None, python: str = sys.executable) -> dict:
    """The kernel.json of a bridge kernel to `url` running `engine` notebooks."""
    env = {"TASKKERNEL_URL": url, "TASKKERNEL_ENGINE": engine}
    if token:
        env["TASKKERNEL_TOKEN"] = token
    return {
        "argv": [python, "-m", KERNEL_MODULE, "-f", "{connection_file}"],
        "display_name": display_name or f"{engine} on taskkernel",
        "language": language,
        "interrupt_mode": "message",
        "env": env,
        "metadata": {"debugger": False},
    }


def install(url: str, engine: str = DEFAULT_ENGINE, name: str | None = None, display_name: str | None = None,
            user: bool = False, prefix: str | None = None, token: str | None = None,
            language: str = "python") -> str:
    """Write the kernelspec and install it with jupyter_client; returns the installed directory.

    Without `user` or `prefix` it goes to the system-wide (or virtualenv's) Jupyter data directory,
    as `jupyter kernelspec install` does.
    """
    from jupyter_client.kernelspec import KernelSpecManager

    name = name or f"taskkernel-{engine}"
    if not re.fullmatch(r"[a-zA-Z0-9._-]+", name):
        raise ConfigurationError(f"kernel name {name!r} may only hold letters, digits, '.', '_' and '-'")
    spec = kernel_json(url, engine, display_name, language, token)
    with tempfile.TemporaryDirectory() as staging:
        (Path(staging) / "kernel.json").write_text(json.dumps(spec, indent=2) + "\n")
        return KernelSpecManager().install_kernel_spec(staging, kernel_name=name, user=user, prefix=prefix)


def _engine_description(url: str, token: str | None, engine: str) -> dict | None:
    """The service's description of `engine`, or None when the service does not answer.

    Raises ConfigurationError when the service answers but has no such engine.
    """
    try:
        engines = Client(url, token=token, timeout_s=3).engines()
    except (OSError, ApiError, ValueError):
        return None
    for description in engines:
        if description["name"] == engine:
            return description
    names = ", ".join(sorted(e["name"] for e in engines)) or "none"
    raise ConfigurationError(f"the service at {url} has no engine {engine!r} (it has: {names})")


def cmd_install(args: argparse.Namespace) -> int:
    settings = load_settings()
    url = (args.url or f"http://{settings.api_host}:{settings.api_port}").rstrip("/")
    token = settings.token if args.store_token else None
    description = _engine_description(url, settings.token or None, args.engine)
    if description is None:
        print(f"taskkernel: {url} did not answer; installing anyway", file=sys.stderr)
        description = {}
    display_name = args.display_name or f"{description.get('display_name', args.engine)} (taskkernel)"
    path = install(url, args.engine, args.name, display_name, user=args.user, prefix=args.prefix, token=token,
                   language=description.get("language", "python"))
    print(f"installed kernelspec {Path(path).name} in {path}")
    return 0


def register(subparsers) -> None:
    """Add `kernelspec install` to the taskkernel command."""
    kernelspec = subparsers.add_parser("kernelspec", help="Jupyter kernelspecs that run cells on taskkernel")
    actions = kernelspec.add_subparsers(dest="kernelspec_command", required=True)
    install_parser = actions.add_parser("install", help="install a Jupyter kernel that runs its cells on taskkernel")
    install_parser.add_argument("--url", help="the taskkernel API (default: TASKKERNEL_API_HOST/_PORT, "
                                              "http://127.0.0.1:8000)")
    install_parser.add_argument("--engine", default=DEFAULT_ENGINE,
                                help=f"engine of the notebooks (default {DEFAULT_ENGINE})")
    install_parser.add_argument("--name", help="kernelspec name (default taskkernel-<engine>)")
    install_parser.add_argument("--display-name", help="name shown in Jupyter (default '<engine> (taskkernel)')")
    where = install_parser.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for the current user only")
    where.add_argument("--prefix", help="install under PREFIX/share/jupyter/kernels (e.g. a virtualenv)")
    install_parser.add_argument("--store-token", action="store_true",
                                help="copy TASKKERNEL_TOKEN into kernel.json (readable by whoever can "
                                     "read the file); without it the kernel takes TASKKERNEL_TOKEN from "
                                     "the environment of the Jupyter server")
    install_parser.set_defaults(handler=cmd_install)
