"""JupyterLab on taskkernel's gateway, in headless Chromium: `jupyter lab --gateway-url=<gateway>`
opens a notebook, its kernel starts on taskkernel, a cell runs and its output shows in the page.
A screenshot is saved to tests/artifacts/jupyterlab_gateway.png.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

pytest.importorskip("jupyterlab")

from tests.conftest import free_port  # noqa: E402
from tests.conftest import _stop, wait_for  # noqa: E402
from tests.test_gateway import call  # noqa: E402
from tests.test_web_console import ARTIFACTS, browser  # noqa: E402,F401  (the headless Chromium fixture)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

TOKEN = uuid.uuid4().hex
NOTEBOOK = {
    "nbformat": 4, "nbformat_minor": 5,
    "metadata": {"kernelspec": {"name": "python", "display_name": "Python 3", "language": "python"}},
    "cells": [{"cell_type": "code", "id": "c1", "metadata": {}, "execution_count": None, "outputs": [],
               "source": "import os\nprint('hello from taskkernel')\nos.getcwd(), 6 * 7"}],
}


@pytest.fixture
def jupyterlab(gateway_url, tmp_path):
    """JupyterLab on a free loopback port with its kernels on the gateway; stopped by PID."""
    root = tmp_path / "lab"
    (root / "notebooks").mkdir(parents=True)
    (root / "notebooks" / "taskkernel.ipynb").write_text(json.dumps(NOTEBOOK))
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(root / "config"), "JUPYTER_DATA_DIR": str(root / "data"),
           "JUPYTER_RUNTIME_DIR": str(root / "runtime"), "JUPYTER_PLATFORM_DIRS": "1"}
    port = free_port()
    log = open(root / "jupyterlab.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", f"--gateway-url={gateway_url}", "--ip=127.0.0.1", f"--port={port}",
         "--no-browser", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root / 'notebooks'}",
         "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=", "--LabApp.check_for_updates_class="
         "jupyterlab.NeverCheckForUpdate", *(["--allow-root"] if os.geteuid() == 0 else [])],
        env=env, stdout=log, stderr=log, start_new_session=True)
    log.close()
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return call("GET", url + "/api/status", headers={"Authorization": f"token {TOKEN}"})[0] == 200
        except OSError:
            return False

    try:
        wait_for(up, 90, f"jupyter lab on {url}", process)
        yield url
    finally:
        _stop(process)


def test_jupyterlab_runs_a_cell_on_taskkernel_and_shows_its_output(jupyterlab, gateway_url, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 120, poll_frequency=0.2)
    browser.get(f"{jupyterlab}/lab/tree/taskkernel.ipynb?token={TOKEN}")
    # the notebook's kernel is up (JupyterLab shows its status as Idle) and is a taskkernel notebook
    wait.until(lambda b: b.execute_script(
        "const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
        "const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;"
        "return k ? k.status : null;") == "idle")
    kernel_id = browser.execute_script("return window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.id;")
    assert call("GET", f"{gateway_url}/api/kernels/{kernel_id}")[0] == 200
    browser.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells');")
    wait.until(lambda b: "42" in " ".join(e.text for e in b.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output")))
    shown = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output")]
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "jupyterlab_gateway.png"))
    assert shown[0].strip() == "hello from taskkernel"
    assert shown[1].strip() == "('/home/notebook', 42)"  # the notebook's private working directory
    prompt = browser.find_element(By.CSS_SELECTOR, ".jp-InputArea-prompt").text
    assert "[1]" in prompt
