"""A notebook's working directory and environment: what a client may ask for, and how it is stored.

A notebook is created with an optional `cwd` and `env` (defaults: the engine file's `cwd` and
nothing). Engines are started warm, before any notebook is pinned to them, so the engine applies
both when its worker runs the notebook's first cell (and again on the fresh worker after a
restart): it changes into the directory, created on demand, and adds the variables to its own
`os.environ`, which the cell and every process it starts then see.

The working directory is a relative path inside the notebook's private directory (the engine's
HOME): the sandbox shows nothing of the host, so a notebook never reads or writes the service's own
directories. Host directories are not bound in: a warm engine's sandbox is built before its
notebook is known, and binding a host path would put host files within reach of untrusted code.

Environment names are refused when they could carry the service's credentials (TASKKERNEL_*) or
change how the engine's interpreter and its children start (LD_* for the dynamic loader, PYTHON*
for the interpreter), or when they describe the sandbox itself (HOME, TMPDIR, PATH, USER, LOGNAME):
the engine file, read by the operator, is where those are set.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Callable, Mapping

from taskkernel.exceptions import InvalidField

MAX_CWD_CHARS = 1024
MAX_ENV_ENTRIES = 256
MAX_ENV_VALUE_CHARS = 32 * 1024
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
REFUSED_PREFIXES = ("TASKKERNEL_", "LD_", "PYTHON")
REFUSED_NAMES = frozenset({"HOME", "TMPDIR", "PATH", "USER", "LOGNAME"})
JUPYTER_CWD = "KERNEL_WORKING_DIR"  # what Jupyter (a kernel's env, a gateway's request) names the cwd
RECORD_FIELD = "workspace"  # the notebook record's field holding {"cwd", "env"} as JSON


def check_cwd(value: str) -> str:
    """The normalised relative directory `value` names; InvalidField (field "cwd") if it leaves the
    notebook's private directory or is not a plain relative path. "" means the private directory itself."""
    if len(value) > MAX_CWD_CHARS or "\x00" in value:
        raise InvalidField(f"field 'cwd' must be a path of at most {MAX_CWD_CHARS} characters", field="cwd")
    if value.startswith("/") or value.startswith("~"):
        raise InvalidField("field 'cwd' must be relative to the notebook's private directory: host "
                           "directories are not visible in the sandbox", field="cwd")
    parts = [part for part in value.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise InvalidField("field 'cwd' may not leave the notebook's private directory ('..')", field="cwd")
    return posixpath.join(*parts) if parts else ""


def check_env(value: dict) -> dict[str, str]:
    """`value` as {name: text}; InvalidField (field "env") on a refused name or a non-string value."""
    if len(value) > MAX_ENV_ENTRIES:
        raise InvalidField(f"field 'env' holds at most {MAX_ENV_ENTRIES} variables", field="env")
    env: dict[str, str] = {}
    for name, text in value.items():
        if not ENV_NAME.fullmatch(name):
            raise InvalidField(f"env name {name!r} is not a valid variable name", field="env")
        if name.upper().startswith(REFUSED_PREFIXES) or name in REFUSED_NAMES:
            raise InvalidField(f"env name {name!r} may not be set for a notebook (TASKKERNEL_*, LD_*, PYTHON*, "
                               f"{', '.join(sorted(REFUSED_NAMES))} belong to the service and its sandbox)",
                               field="env")
        if not isinstance(text, str) or len(text) > MAX_ENV_VALUE_CHARS or "\x00" in text:
            raise InvalidField(f"env value of {name!r} must be a string of at most {MAX_ENV_VALUE_CHARS} "
                               "characters", field="env")
        env[name] = text
    return env


def from_jupyter(environ: Mapping[str, str], wanted: Callable[[str], bool]) -> dict:
    """What a Jupyter kernel environment asks of a notebook, as create's {"cwd", "env"} fields: the
    `wanted` variables the service accepts (others are left out, not refused: Jupyter sends its
    own), and KERNEL_WORKING_DIR as the cwd when it is relative (an absolute one is a path on the
    Jupyter server's host, which the sandbox does not show)."""
    env = {name: value for name, value in environ.items()
           if wanted(name) and name != JUPYTER_CWD and ENV_NAME.fullmatch(name)
           and not name.upper().startswith(REFUSED_PREFIXES) and name not in REFUSED_NAMES}
    found: dict = {"env": env} if env else {}
    cwd = environ.get(JUPYTER_CWD, "")
    if isinstance(cwd, str) and cwd and not posixpath.isabs(cwd):
        found["cwd"] = cwd
    return found


def encode(cwd: str, env: dict[str, str]) -> str:
    return json.dumps({"cwd": cwd, "env": env}, separators=(",", ":"))


def decode(raw: bytes | str | None) -> tuple[str, dict[str, str]]:
    """(cwd, env) of a record's workspace field; ("", {}) when the notebook asked for none."""
    if not raw:
        return "", {}
    data = json.loads(raw)
    return data.get("cwd", ""), data.get("env", {})
