"""JupyterLab's own client library, `@jupyterlab/services` from the npm registry, on taskkernel's
gateway: it starts a kernel, runs a cell and gets its output, completes, interrupts a running cell
and shuts the kernel down (tests/node/gateway_client.js)."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.test_gateway import call

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

NODE_DIR = Path(__file__).resolve().parent / "node"


@pytest.fixture(scope="module")
def node_client(tmp_path_factory) -> Path:
    """tests/node with its packages installed by npm from the registry (skipped without node/npm)."""
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("node and npm are needed (Node 20: apt-get install nodejs npm)")
    target = tmp_path_factory.mktemp("node")
    for name in ("package.json", "gateway_client.js"):
        shutil.copy(NODE_DIR / name, target / name)
    done = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=target,
                          capture_output=True, text=True, timeout=240)
    if done.returncode != 0:
        pytest.skip(f"npm could not install @jupyterlab/services: {done.stderr[-500:]}")
    return target


def test_jupyterlab_services_runs_completes_and_interrupts_on_the_gateway(gateway_url, node_client):
    done = subprocess.run(["node", "gateway_client.js", gateway_url + "/"], cwd=node_client,
                          capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert str(uuid.UUID(out["id"])) == out["id"] and out["name"] == "python" and out["language"] == "python"
    assert out["reply"]["status"] == "ok" and out["reply"]["execution_count"] == 1
    assert out["outputs"] == ["hello from node\n", "result:42"]
    assert "sqrt" in out["matches"]
    assert out["interrupted"]["status"] == "error"
    assert out["interrupted_outputs"] == ["napping\n", "error:KeyboardInterrupt"]
    assert out["id"] in out["listed"]
    assert call("GET", f"{gateway_url}/api/kernels/{out['id']}")[0] == 404  # shut down
