"""Engine types: found in TOML files under config/engines/ and in the `taskkernel.engines`
entry-point group, and turned into engine objects in a worker.

An engine file looks like:

    name = "python"
    display_name = "Python 3"
    language = "python"
    class = "taskkernel.engines.python:PythonEngine"
    pool_size = 2            # optional: idle workers kept warm on each host
    startup_code = ""        # optional: run once in every new namespace
    python = "/path/python"  # optional: the engine's own interpreter (taskkernel must be importable there)
    kernelspec = "bash"      # optional: run this installed Jupyter kernel (class then defaults to
                             #   engines/jupyter_kernel.py's KernelEngine; see workers/kernelspecs.py)
    read_only_paths = []     # optional: host directories the sandbox shows read-only (a kernel's installation)
    network = "none"         # optional: "none" (default), "outbound" (slirp4netns), "host" (needs a token)
    [env]                    # optional: environment of the engine process
    [limits]                 # optional: memory_bytes, processes, open_files, file_bytes,
                             #   notebook_memory_bytes, notebook_processes, cell_timeout_s, output_bytes

A file that cannot be read is reported (in `errors`) and does not hide the other engines.
"""

from __future__ import annotations

import importlib
import importlib.util
import tomllib
from pathlib import Path

from taskkernel.engines.base import Engine
from taskkernel.exceptions import ConfigurationError, UnknownEngine

ENTRY_POINT_GROUP = "taskkernel.engines"
REQUIRED = ("name", "class")
KERNEL_ENGINE_CLASS = "taskkernel.engines.jupyter_kernel:KernelEngine"


def load_specs(config_dir: str | Path) -> tuple[dict[str, dict], dict[str, str]]:
    """Read every engine spec; return ({name: spec}, {source: error message})."""
    from importlib.metadata import entry_points  # not at import: engine processes never scan plug-ins

    specs: dict[str, dict] = {}
    errors: dict[str, str] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            spec = dict(ep.load()())
            _check(spec)
            specs[spec["name"]] = {**spec, "source": f"entry point {ep.value}"}
        except Exception as exc:  # a broken plug-in must not hide the others
            errors[f"entry point {ep.name}"] = f"{type(exc).__name__}: {exc}"
    engine_dir = Path(config_dir) / "engines"
    for path in sorted(engine_dir.glob("*.toml")) if engine_dir.is_dir() else []:
        try:
            spec = tomllib.loads(path.read_text())
            _check(spec)
            specs[spec["name"]] = {**spec, "source": str(path)}
        except Exception as exc:
            errors[str(path)] = f"{type(exc).__name__}: {exc}"
    return specs, errors


def _check(spec: dict) -> None:
    if spec.get("kernelspec"):
        if not isinstance(spec["kernelspec"], str):
            raise ConfigurationError("engine spec's kernelspec must be the name of an installed kernelspec")
        spec.setdefault("class", KERNEL_ENGINE_CLASS)
    paths = spec.get("read_only_paths", [])
    if not isinstance(paths, list) or not all(isinstance(p, str) and p.startswith("/") for p in paths):
        raise ConfigurationError("engine spec's read_only_paths must be a list of absolute paths")
    missing = [k for k in REQUIRED if not spec.get(k)]
    if missing:
        raise ConfigurationError(f"engine spec lacks {', '.join(missing)}")
    if not str(spec["name"]).replace("-", "").replace("_", "").isalnum():
        raise ConfigurationError(f"engine name {spec['name']!r} must be letters, digits, - and _")


def describe(spec: dict) -> dict:
    """What the API shows of an engine spec."""
    return {
        "name": spec["name"],
        "display_name": spec.get("display_name", spec["name"]),
        "language": spec.get("language", "python"),
        "class": spec["class"],
        "kernelspec": spec.get("kernelspec"),
        "pool_size": spec.get("pool_size"),
        "limits": spec.get("limits", {}),
        "source": spec.get("source"),
    }


def engine_class(spec: dict) -> type[Engine]:
    """Import the class an engine spec names; ConfigurationError says what to install if missing."""
    module_name, _, attr = spec["class"].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"engine {spec['name']!r} needs module {module_name!r}, which is not installed "
            f"({exc}); install the package that provides it"
        ) from exc
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Engine)):
        raise ConfigurationError(f"engine {spec['name']!r}: {spec['class']} is not an Engine subclass")
    return cls


def check_class(spec: dict) -> None:
    """ConfigurationError unless the module an engine spec names can be found (without importing it:
    the engine process imports it, in its sandbox). An engine with its own `python` is not checked."""
    if spec.get("python"):
        return
    module_name = spec["class"].partition(":")[0]
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        found = None
    if found is None:
        raise ConfigurationError(f"engine {spec['name']!r} needs module {module_name!r}, which is not installed; "
                                 "install the package that provides it")


def get_spec(config_dir: str | Path, name: str) -> dict:
    specs, _ = load_specs(config_dir)
    if name not in specs:
        raise UnknownEngine(f"no engine {name!r}; known: {', '.join(sorted(specs)) or 'none'}", engine=name)
    return specs[name]
