"""Scaling out: several supervisors (hosts) share notebooks; a dead host's notebooks move on."""

from pathlib import Path
import os
import signal
import subprocess
import sys
import time

import pytest

from taskkernel import keys
from tests.conftest import pid_alive, wait_for

pytestmark = pytest.mark.timeout(180)


def test_new_notebooks_go_to_the_host_with_the_most_idle_workers(private_service):
    private_service.start_supervisor("small", pool=1)
    private_service.start_supervisor("large", pool=3)
    private_service.start_api()
    client = private_service.client()
    with client.start() as first, client.start() as second:
        assert first.record["worker"]["host"] == "large"
        assert second.record["worker"]["host"] == "large"


def test_a_killed_host_is_noticed_and_its_notebooks_restart_on_another(private_service):
    doomed = private_service.start_supervisor("doomed", pool=1, host_ttl_s=2)
    private_service.start_api()
    client = private_service.client()
    nb = client.start()
    assert nb.record["worker"]["host"] == doomed
    old_pid = nb.record["worker"]["pid"]
    nb.evaluate("x = 1")
    nb.write_file("on_doomed.txt", b"on the doomed host's disk")
    assert nb.refresh()["files_lost"] is None
    running = nb.evaluate("import time; time.sleep(60)", wait=False)
    wait_for(lambda: nb.cell(running["id"])["state"] == "running", 10, "the cell to start")
    private_service.start_supervisor("survivor", pool=1, host_ttl_s=2)
    killed_at = time.monotonic()
    private_service.stop_process(private_service.supervisors[doomed], signal.SIGKILL)
    cell = nb.wait(running["id"], timeout=30)
    assert time.monotonic() - killed_at < 15, "noticed within seconds"
    assert cell["error"]["ename"] == "EngineDied" and "doomed" in cell["error"]["evalue"]
    assert not pid_alive(old_pid), "workers die with their supervisor"
    wait_for(lambda: (nb.refresh()["worker"] or {}).get("host") == "survivor", 20, "the notebook to move")
    assert nb.evaluate("'x' in globals()")["outputs"][0]["data"]["text/plain"] == "False"
    # its files were on the dead host's disk: the record says so, and the directory is empty
    lost = nb.refresh()["files_lost"]
    assert lost["host"] == doomed and lost["at"] and "empty directory" in lost["message"], lost
    assert nb.files() == []
    nb.close()


def test_scale_grows_and_shrinks_the_warm_pool_without_touching_pinned_workers(private_service):
    host = private_service.start_supervisor(pool=1)
    private_service.start_api()
    client = private_service.client()
    with client.start() as pinned:
        pinned.evaluate("kept = 1")
        result = subprocess.run([sys.executable, "-m", "taskkernel", "scale", "python=4", "--url",
                                 private_service.api_url], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0 and "python: 4 idle workers" in result.stdout
        private_service.wait_idle(host, "python", 4, timeout_s=30)
        client.request("PUT", "/pools/python", {"size": 1, "host": host})
        wait_for(lambda: private_service.redis.scard(keys.idle_workers("python", host)) == 1, 30,
                 "the pool to shrink to 1")
        assert pinned.evaluate("kept")["status"] == "ok", "the pinned worker was not touched"


def test_an_engine_file_dropped_into_a_running_service_appears_and_runs(private_service):
    host = private_service.start_supervisor(pool=1)
    private_service.start_api()
    client = private_service.client()
    assert "late" not in {e["name"] for e in client.engines()}
    (private_service.config_dir / "engines" / "late.toml").write_text(
        'name = "late"\nclass = "taskkernel.engines.python:PythonEngine"\npool_size = 1\n'
        'startup_code = "greeting = \'hello from late\'"\n')
    (private_service.config_dir / "engines" / "broken.toml").write_text('name = "broken"\nclass = [oops\n')
    engines = {e["name"] for e in client.engines()}
    assert "late" in engines
    errors = client.request("GET", "/engines")[1]["errors"]
    assert any(source.endswith("broken.toml") for source in errors), "a broken file is reported"
    private_service.wait_idle(host, "late", 1, timeout_s=20)
    with client.start("late") as nb:
        assert nb.evaluate("greeting")["outputs"][0]["data"]["text/plain"] == "'hello from late'"
    assert client.start("python").close() is None, "the broken file broke nothing else"


def test_an_engine_whose_class_is_missing_is_reported_not_forked_forever(private_service):
    (private_service.config_dir / "engines" / "ghost.toml").write_text(
        'name = "ghost"\nclass = "no_such_package.engine:Engine"\n')
    private_service.start_supervisor(pool=1)
    private_service.start_api()
    hosts = private_service.client().request("GET", "/hosts")[1]["hosts"]
    errors = " ".join(hosts[0]["engine_errors"].values())
    assert "no_such_package" in errors and "install" in errors


def test_idle_notebooks_are_culled(private_service):
    private_service.start_supervisor(pool=2, cull_idle_s=2)
    private_service.start_api()
    client = private_service.client()
    idle = client.start()
    busy = client.start()
    running = busy.evaluate("import time; time.sleep(6)", wait=False)
    last_activity = idle.refresh()["last_activity"]
    assert last_activity is not None
    wait_for(lambda: idle.id not in {n["id"] for n in client.notebooks()}, 15, "the idle notebook to be culled")
    assert busy.cell(running["id"])["state"] in ("running", "done"), "a busy notebook is not culled"
    busy.close()


def test_an_engine_can_run_with_its_own_interpreter(private_service, tmp_path):
    """`python = ...` in an engine file: the engine process runs that interpreter (a virtualenv
    that can import taskkernel), the worker stays the supervisor's fork."""
    import subprocess
    import sys as _sys
    import sysconfig

    import taskkernel

    own = tmp_path / "own-venv"
    subprocess.run([_sys._base_executable, "-m", "venv", "--without-pip", str(own)], check=True, timeout=60)
    site = own / Path(sysconfig.get_path("purelib")).relative_to(sysconfig.get_path("data"))
    (site / "taskkernel-here.pth").write_text(str(Path(taskkernel.__file__).parent.parent) + "\n")
    python = own / "bin" / "python"
    (private_service.config_dir / "engines" / "own.toml").write_text(
        f'name = "own"\nclass = "taskkernel.engines.python:PythonEngine"\npython = "{python}"\n'
        'pool_size = 1\n[env]\nOWN_ENGINE = "yes"\n')
    host = private_service.start_supervisor(pool=1)
    private_service.start_api()
    private_service.wait_idle(host, "own", 1, timeout_s=60)
    with private_service.client().start("own") as nb:
        cell = nb.evaluate("import os, sys\n(sys.executable, sys.prefix, os.environ['OWN_ENGINE'])")
        assert cell["outputs"][0]["data"]["text/plain"] == repr((str(python), str(own), "yes"))
        supervisor = private_service.supervisors[host].pid
        assert nb.record["worker"]["pid"] != supervisor
        assert nb.evaluate("1/0")["error"]["ename"] == "ZeroDivisionError"


def test_an_installed_package_can_provide_an_engine_through_the_entry_point_group(private_service, tmp_path):
    """A distribution on the path that declares `taskkernel.engines` shows up as an engine type."""
    site = tmp_path / "site"
    (site / "acme_engine").mkdir(parents=True)
    (site / "acme_engine" / "__init__.py").write_text(
        "from taskkernel.engines.python import PythonEngine\n\n"
        "class AcmeEngine(PythonEngine):\n"
        "    def start(self):\n"
        "        super().start()\n"
        "        self.namespace['vendor'] = 'acme'\n\n"
        "def spec():\n"
        "    return {'name': 'acme', 'display_name': 'ACME Python', 'class': 'acme_engine:AcmeEngine',\n"
        "            'pool_size': 1}\n")
    dist = site / "acme_engine-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-engine\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[taskkernel.engines]\nacme = acme_engine:spec\n")
    private_service.env["PYTHONPATH"] = str(site)
    host = private_service.start_supervisor(pool=1)
    private_service.start_api()
    engines = {e["name"]: e for e in private_service.client().engines()}
    assert engines["acme"]["display_name"] == "ACME Python"
    assert engines["acme"]["source"].startswith("entry point")
    private_service.wait_idle(host, "acme", 1, timeout_s=30)
    with private_service.client().start("acme") as nb:
        assert nb.evaluate("vendor")["outputs"][0]["data"]["text/plain"] == "'acme'"
