"""How an engine process is launched: the sandbox around one notebook's code.

With `TASKKERNEL_SANDBOX=bubblewrap` (the default) every engine runs under Debian's `bwrap` in
its own pid, ipc, uts, mount and (unless its engine file says `network = "host"`) network
namespace: the system and the Python installation read-only, taskkernel's own package read-only,
nothing else of the host's file system, and a private writable directory (HOME, the working
directory, /tmp) that is removed with the worker. When the service runs as root each worker
slot has its own uid (`sandbox_uid_base + slot`, as SageMathCell gives each kernel an account),
dropped to with `setpriv` inside the sandbox after bwrap has built it; otherwise bwrap makes an
unprivileged user namespace. Processes a cell starts live in the engine's pid namespace and die
with it. `TASKKERNEL_SANDBOX=none` runs engines as plain child processes: an explicit choice for
trusted single-user set-ups, announced as such, never a fallback.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import taskkernel
from taskkernel.exceptions import ConfigurationError
from taskkernel.settings import Settings
from taskkernel.workers import cgroups

NONE = "none"  # TASKKERNEL_SANDBOX=none: engines as plain child processes
NETWORKS = ("none", "outbound", "host")
SLIRP_DNS = "10.0.2.3"  # slirp4netns's DNS forwarder, inside the engine's network namespace
HOME = "/home/notebook"  # the engine's HOME and working directory, inside the sandbox
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
BASE_PATH = "/usr/local/bin:/usr/bin:/bin"
# per engine unless its file's [limits] says otherwise (memory_bytes and file_bytes: none by default)
DEFAULT_LIMITS = {"processes": 512, "open_files": 4096}
SOCKET_FD_ARG = "{socket_fd}"  # replaced by the number of the engine's end of the socketpair
INFO_FD_ARG = "{info_fd}"  # replaced by the pipe on which bubblewrap reports its child's pid


@dataclass(frozen=True)
class EngineLaunch:
    """Everything needed to start one engine process."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    sys_path: list[str]  # extra import paths the engine adds (plug-in engine modules)
    nested: bool  # the engine is a grandchild of the launched process (bwrap's init sits between)
    network: str = "none"  # "outbound": the launcher attaches slirp4netns to the engine's namespace


def check(settings: Settings) -> str:
    """Verify the configured sandbox works here; return how it isolates, for `up` to print."""
    if settings.sandbox == NONE:
        return "sandbox: NONE (TASKKERNEL_SANDBOX=none): cells run as the service's user, unisolated"
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise ConfigurationError("the engine sandbox needs bubblewrap: apt-get install bubblewrap "
                                 "(or set TASKKERNEL_SANDBOX=none to run cells unisolated)")
    probe = [bwrap, *_namespaces(network="none"), "--ro-bind", "/", "/", "--proc", "/proc", "--", "true"]
    result = subprocess.run(probe, capture_output=True, timeout=30)
    if result.returncode != 0:
        raise ConfigurationError("bubblewrap cannot create namespaces here: "
                                 f"{result.stderr.decode(errors='replace').strip()}")
    who = f"uid {settings.sandbox_uid_base}+slot per worker" if os.geteuid() == 0 else "user namespace"
    limits = ", memory+pids cgroup per notebook" if cgroups.available() else ", no cgroups (rlimits only)"
    return f"sandbox: bubblewrap, {who}, own pid/ipc/mount namespaces{limits}"


def slot_uid(settings: Settings, slot: int) -> int | None:
    """The uid a worker slot's engine runs as (None: the service's own, in a user namespace)."""
    if settings.sandbox == NONE or os.geteuid() != 0:
        return None
    return settings.sandbox_uid_base + slot


def prepare_directory(root: Path, worker_id: str, uid: int | None) -> Path:
    """Create the worker's private directory (home/ and tmp/), owned by the engine's uid."""
    base = root / worker_id
    for sub in ("", "home", "tmp"):
        (base / sub).mkdir(mode=0o700, exist_ok=True)
        if uid is not None:
            os.chown(base / sub, uid, uid)
    return base


def remove_directory(root: Path, worker_id: str) -> None:
    """Remove a worker's directory, whatever its engine did to the permissions inside."""
    base = root / worker_id
    if not base.is_dir() or base.is_symlink():
        return

    def make_writable(function, path, _exc):
        try:
            # chmod follows links: never through one an engine planted (to /etc/shadow, say)
            for target in (os.path.dirname(path), path):
                if not os.path.islink(target):
                    os.chmod(target, 0o700)
            function(path)
        except OSError:
            pass

    shutil.rmtree(base, onerror=make_writable)


def engine_limits(spec: dict, uid: int | None) -> dict:
    """The rlimits the engine sets on itself: the engine file's [limits], over the sandbox's defaults.

    A process limit counts every process of the uid, so it applies only when the engine has a uid
    of its own (as root); in a user namespace it would count the service's processes too.
    """
    limits = {**DEFAULT_LIMITS, **{k: v for k, v in spec.get("limits", {}).items() if k in DEFAULT_LIMITS
                                   or k in ("memory_bytes", "file_bytes")}}
    if uid is None:
        limits.pop("processes", None)
    return limits


def engine_launch(settings: Settings, spec: dict, *, directory: Path, uid: int | None,
                  cgroup_procs: list[str] = ()) -> EngineLaunch:
    """The command line, environment and import paths of one engine process (joining `cgroup_procs`)."""
    python = os.path.expanduser(spec.get("python") or sys.executable)
    network = spec.get("network", "none")
    if network not in NETWORKS:
        raise ConfigurationError(f"engine {spec['name']!r}: network must be one of {', '.join(NETWORKS)}")
    if network == "outbound" and settings.sandbox != NONE and shutil.which("slirp4netns") is None:
        raise ConfigurationError(f"engine {spec['name']!r}: network = \"outbound\" needs slirp4netns "
                                 "(apt-get install slirp4netns)")
    if network == "host" and not settings.token and settings.sandbox != NONE:
        raise ConfigurationError(f"engine {spec['name']!r}: network = \"host\" lets cells reach the host's "
                                 "loopback, allowed only when the API requires a token (TASKKERNEL_TOKEN)")
    module_dirs = _module_dirs(spec)
    engine_argv = [python, "-I", "-m", "taskkernel.engines.process", "--socket-fd", SOCKET_FD_ARG]
    home = str(directory / "home") if settings.sandbox == NONE else HOME
    env = {
        "HOME": home, "PATH": f"{Path(python).parent}:{BASE_PATH}", "LANG": "C.UTF-8", "TMPDIR":
        str(directory / "tmp") if settings.sandbox == NONE else "/tmp", "USER": "notebook", "LOGNAME": "notebook",
        **{str(k): str(v) for k, v in spec.get("env", {}).items()},
    }
    if settings.sandbox == NONE:
        return EngineLaunch(cgroups.enter_command(list(cgroup_procs), engine_argv), env, home, module_dirs,
                            nested=False)
    argv = [shutil.which("bwrap") or "bwrap", *_namespaces(network), "--die-with-parent", "--new-session",
            "--hostname", "notebook"]
    # the private directories first: a read-only path beneath /tmp (a plug-in's module in a temporary
    # directory, say) is then mounted over the notebook's /tmp instead of being hidden by it
    argv += ["--proc", "/proc", "--dev", "/dev"]
    for parent in _ancestors([HOME]):
        argv += ["--perms", "0755", "--dir", parent]
    argv += ["--bind", str(directory / "home"), HOME, "--bind", str(directory / "tmp"), "/tmp"]
    readable = _readable_paths(python, module_dirs + _kernel_paths(spec))
    for parent in _ancestors(readable):  # traversable, whatever the host's modes (/root is 0700)
        argv += ["--perms", "0755", "--dir", parent]
    for path in readable:
        argv += ["--ro-bind", path, path]
    for link in SYSTEM_DIRS:  # merged-/usr systems: /bin -> usr/bin and the like
        if os.path.islink(link):
            argv += ["--symlink", os.readlink(link), link]
    if network == "outbound":  # names resolve through slirp4netns, not the host's (loopback) resolver
        resolv = directory / "resolv.conf"
        resolv.write_text(f"nameserver {SLIRP_DNS}\n")
        argv += ["--ro-bind", str(resolv), "/etc/resolv.conf", "--info-fd", INFO_FD_ARG]
    argv += ["--chdir", HOME]
    if uid is None:
        argv += ["--unshare-user", "--cap-drop", "ALL", "--"]
    else:
        argv += ["--", shutil.which("setpriv") or "/usr/bin/setpriv", f"--reuid={uid}", f"--regid={uid}",
                 "--clear-groups", "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--"]
    return EngineLaunch(cgroups.enter_command(list(cgroup_procs), argv + engine_argv), env, "/", module_dirs,
                        nested=True, network=network)


def outbound_network(engine_pid: int, exit_fd: int, ready_fd: int) -> list[str]:
    """slirp4netns for a sandbox of `network = "outbound"`: user-mode NAT to the outside world, with
    the host's loopback (the API, Redis) refused; it exits when `exit_fd` closes (the worker died)."""
    return [shutil.which("slirp4netns") or "slirp4netns", "--configure", "--mtu=65520", "--disable-host-loopback",
            "--exit-fd", str(exit_fd), "--ready-fd", str(ready_fd), str(engine_pid), "tap0"]


def _namespaces(network: str) -> list[str]:
    flags = ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if network in ("none", "outbound"):
        flags.append("--unshare-net")
    if os.geteuid() != 0:
        flags.append("--unshare-user")
    return flags


def _readable_paths(python: str, module_dirs: list[str]) -> list[str]:
    """System directories, the interpreter's installation and taskkernel's package, read-only."""
    paths = [p for p in SYSTEM_DIRS if os.path.isdir(p) and not os.path.islink(p)]
    candidates = [sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.dirname(python)),
                  os.path.dirname(os.path.dirname(os.path.realpath(python))),
                  os.path.dirname(os.path.abspath(taskkernel.__file__)), *module_dirs]
    venv_cfg = Path(os.path.dirname(os.path.dirname(python))) / "pyvenv.cfg"
    if venv_cfg.is_file():  # a virtualenv's base interpreter lives where `home` says
        for line in venv_cfg.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "home" and value.strip():
                candidates.append(os.path.dirname(value.strip()))
    for candidate in candidates:
        real = os.path.realpath(candidate)
        for path in (os.path.abspath(candidate), real):
            if os.path.isdir(path) and not any(_within(path, p) for p in paths):
                paths = [p for p in paths if not _within(p, path)] + [path]
    return paths


def _kernel_paths(spec: dict) -> list[str]:
    """What a Jupyter-kernel engine reads besides the system: its kernelspec's directory (kernel.json,
    files its argv names as {resource_dir}) and the engine file's `read_only_paths` (the kernel's
    installation when it is not under /usr or the Python installation: /opt/julia, say)."""
    kernel = spec.get("kernel") or {}
    paths = [kernel["resource_dir"]] if kernel.get("resource_dir") else []
    return paths + [str(p) for p in spec.get("read_only_paths", [])]


def _module_dirs(spec: dict) -> list[str]:
    """Directories the engine must import its class from, when they are not on its own path."""
    top = spec["class"].partition(":")[0].split(".")[0]
    found = importlib.util.find_spec(top)
    if found is None or not found.origin:
        return []
    origin = Path(found.origin).resolve()
    parent = origin.parent.parent if origin.name == "__init__.py" else origin.parent
    inside = [sys.prefix, sys.base_prefix, os.path.dirname(os.path.abspath(taskkernel.__file__))]
    if any(_within(str(origin), os.path.realpath(p)) for p in inside):
        return []
    return [str(parent)]


def _ancestors(paths: list[str]) -> list[str]:
    """Every directory above `paths` (not "/"), parents first."""
    found: list[str] = []
    for path in paths:
        parts = Path(path).parts[1:-1]
        for depth in range(1, len(parts) + 1):
            ancestor = "/" + "/".join(parts[:depth])
            if ancestor not in found:
                found.append(ancestor)
    return found


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")
