"""GET /api/kernelspecs[/<name>]: one Jupyter kernelspec per taskkernel engine (engines/registry.py)."""

from __future__ import annotations

from taskkernel.engines import registry
from taskkernel.exceptions import NotFound
from taskkernel.gateway.app import BaseHandler
from taskkernel.jupyter.kernelspec import DEFAULT_ENGINE


def kernelspec_model(spec: dict) -> dict:
    """The REST model Jupyter Server reads: {name, spec, resources}. There is no argv: the kernel
    runs on taskkernel, never on the Jupyter server's host."""
    return {
        "name": spec["name"],
        "spec": {
            "argv": [],
            "display_name": spec.get("display_name", spec["name"]),
            "language": spec.get("language", "python"),
            "interrupt_mode": "message",
            "env": {},
            "metadata": {"taskkernel": {"engine": spec["name"]}, "debugger": False},
        },
        "resources": {},
    }


def default_name(specs: dict[str, dict]) -> str:
    """The engine a kernel without a name gets: ipython (what Jupyter users expect) when defined."""
    if DEFAULT_ENGINE in specs:
        return DEFAULT_ENGINE
    return "python" if "python" in specs or not specs else sorted(specs)[0]


class KernelSpecsHandler(BaseHandler):
    def get(self) -> None:
        specs, _ = registry.load_specs(self.gateway.settings.config_dir)
        self.send_json({"default": default_name(specs),
                        "kernelspecs": {name: kernelspec_model(spec) for name, spec in sorted(specs.items())}})


class KernelSpecHandler(BaseHandler):
    def get(self, name: str) -> None:
        specs, _ = registry.load_specs(self.gateway.settings.config_dir)
        if name not in specs:
            raise NotFound(f"no kernelspec {name!r}: the engines are {', '.join(sorted(specs))}")
        self.send_json(kernelspec_model(specs[name]))
