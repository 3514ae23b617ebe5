"""The package as a newcomer installs it: a built wheel in a fresh virtualenv, outside the checkout.

`pip install 'taskkernel[server]'` runs the service (`taskkernel up` runs cells, the engine files
come with the wheel); `pip install taskkernel` is the client alone, with none of the server's
dependencies, and `taskkernel up` there says what to install.
"""

import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.conftest import descendants
from tests.conftest import pid_alive

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CHECKOUT = Path(__file__).resolve().parent.parent


def clean_env(**extra) -> dict[str, str]:
    """The environment of a newcomer's shell: no TASKKERNEL_* settings, no path into the checkout."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TASKKERNEL_", "PYTHON", "VIRTUAL_ENV"))}
    return {**env, **extra}


def run(args: list, timeout: float, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=clean_env(), capture_output=True, text=True,
                          timeout=timeout, **kwargs)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # built from a copy: setuptools' build/ in the checkout would keep files deleted since
    source = shutil.copytree(CHECKOUT, tmp_path_factory.mktemp("source") / "taskkernel", ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "artifacts", ".pytest_cache"))
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, source], 300, out)
    assert built.returncode == 0, built.stderr[-3000:]
    [path] = out.glob("taskkernel-*.whl")
    return path


def make_venv(where: Path, requirement: str) -> Path:
    """A fresh virtualenv with `requirement` installed (pip may use its cache); returns its bin/."""
    created = run([sys.executable, "-m", "venv", where], 120, where.parent)
    assert created.returncode == 0, created.stderr
    installed = run([where / "bin" / "pip", "install", "-q", requirement], 400, where.parent)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return where / "bin"


@pytest.fixture(scope="module")
def server_venv(wheel, tmp_path_factory) -> Path:
    return make_venv(tmp_path_factory.mktemp("server") / "venv", f"{wheel}[server]")


@pytest.fixture(scope="module")
def client_venv(wheel, tmp_path_factory) -> Path:
    return make_venv(tmp_path_factory.mktemp("client") / "venv", str(wheel))


def test_the_wheel_carries_the_engine_files_license_and_typing_marker(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert {"taskkernel/config/engines/python.toml", "taskkernel/config/engines/ipython.toml",
            "taskkernel/py.typed", "taskkernel/api/static/index.html"} <= names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: MIT" in metadata
    assert 'Requires-Dist: celery[redis]<6,>=5.5; extra == "server"' in metadata
    assert not [n for n in names if n.startswith(("tests/", "bench/", "config/"))], "nothing outside the package"


def test_a_wheel_in_a_fresh_virtualenv_runs_cells_with_taskkernel_up(server_venv, tmp_path):
    port = free_port()
    up = subprocess.Popen([server_venv / "taskkernel", "up", "--port", str(port), "--pool", "1"], cwd=tmp_path,
                          env=clean_env(TASKKERNEL_LOG_LEVEL="WARNING"), stdout=subprocess.PIPE, text=True,
                          start_new_session=True)
    tree: set[int] = set()
    script = ("from taskkernel import Client\n"
              f"client = Client('http://127.0.0.1:{port}')\n"
              "print(sorted((e['name'], e['source']) for e in client.engines()))\n"
              "with client.start('python') as nb:\n"
              "    print(nb.evaluate('6 * 7')['outputs'][0]['data']['text/plain'])\n")
    try:
        banner = up.stdout.readline()
        assert f"taskkernel API on http://127.0.0.1:{port}" in banner, banner
        assert "1 idle python workers" in banner
        tree = descendants(up.pid)
        answer = run([server_venv / "python", "-c", script], 60, tmp_path)
        assert answer.returncode == 0, answer.stderr
        engines, result = answer.stdout.splitlines()
        assert result == "42"
        site = str(server_venv.parent / "lib")
        assert engines.count(site) == 2 and "'ipython'" in engines, "the engine files the wheel installed"
    finally:
        if up.poll() is None:
            os.kill(up.pid, signal.SIGTERM)
            try:
                up.wait(30)
            except subprocess.TimeoutExpired:
                up.kill()
                up.wait(10)
        for pid in tree:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_the_client_installs_without_the_server_and_up_says_what_to_install(client_venv, tmp_path):
    python = client_venv / "python"
    absent = run([python, "-c", "import importlib.util as u; print([m for m in ('celery', 'kombu', 'flask', "
                  "'gunicorn', 'redis', 'IPython', 'jedi') if u.find_spec(m)])"], 30, tmp_path)
    assert absent.stdout.strip() == "[]", "none of the server's dependencies"
    up = run([client_venv / "taskkernel", "up"], 30, tmp_path)
    assert up.returncode == 2
    assert "pip install 'taskkernel[server]'" in up.stderr, up.stderr
    assert "Traceback" not in up.stderr


def test_the_client_only_install_runs_cells_against_a_service(client_venv, service, tmp_path):
    cells = tmp_path / "cells.py"
    cells.write_text("x = 20\n# %%\nprint(x + 22)\n")
    ran = run([client_venv / "taskkernel", "run", cells, "--url", service.api_url], 60, tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "42"
    status = run([client_venv / "taskkernel", "status", "--url", service.api_url, "--json"], 60, tmp_path)
    assert status.returncode == 0, status.stderr
    assert '"hosts"' in status.stdout
