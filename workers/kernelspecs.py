"""Finding the Jupyter kernelspec an engine file names (`kernelspec = "bash"`), on the trusted side.

The worker looks the name up with jupyter_client's KernelSpecManager in the service's own Jupyter
path (JUPYTER_PATH, JUPYTER_DATA_DIR, the environment's and the system's share/jupyter: what the
operator installed) and hands the engine process the resolved spec in its `init` frame. The
engine never searches a path itself: its HOME and /tmp are the notebook's and writable by cells,
so a kernel.json a cell wrote there is never found, not even by the fresh worker of a restart.
"""

from __future__ import annotations

from taskkernel.exceptions import ConfigurationError

# what the engine process takes from a kernelspec
FIELDS = ("argv", "env", "interrupt_mode", "language", "display_name", "metadata")


def resolve(spec: dict) -> dict:
    """`spec` with its kernelspec resolved into `kernel` ({argv, env, interrupt_mode, language,
    display_name, metadata, resource_dir}); an engine without a kernelspec is returned as it is."""
    name = spec.get("kernelspec")
    if not name:
        return spec
    try:
        from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    except ImportError as exc:
        raise ConfigurationError(f"engine {spec['name']!r} runs the Jupyter kernel {name!r} and needs jupyter_client "
                                 "(pip install 'taskkernel[kernels]')") from exc
    try:
        found = KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        raise ConfigurationError(f"engine {spec['name']!r}: no kernelspec {name!r} is installed "
                                 "(`jupyter kernelspec list` shows the ones there are)") from None
    kernel = {field: getattr(found, field) for field in FIELDS}
    kernel["interrupt_mode"] = kernel["interrupt_mode"] or "signal"
    if kernel["interrupt_mode"] not in ("signal", "message"):
        raise ConfigurationError(f"kernelspec {name!r}: interrupt_mode must be signal or message")
    if not kernel["argv"]:
        raise ConfigurationError(f"kernelspec {name!r} has no argv")
    kernel["resource_dir"] = found.resource_dir
    return {**spec, "kernel": kernel}


def check(spec: dict) -> None:
    """ConfigurationError unless the engine's kernelspec (if it names one) can be found here."""
    resolve(spec)
