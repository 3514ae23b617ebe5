"""`python -m bench --quick` runs end to end and reports every figure (speed is measured there, never here)."""

from __future__ import annotations

import importlib.util
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

REPO = Path(__file__).resolve().parent.parent
NUMBER = r"-?[\d,]+(?:\.\d+)?"

# (figure, system, metric) rows that taskkernel's side always fills, peers installed or not
OUR_ROWS = [
    ("1. round trip of `1+1`", "taskkernel (HTTP evaluate, wait)", "p50 (ms)"),
    ("1. round trip of `1+1`", "taskkernel (HTTP evaluate, wait)", "p99 (ms)"),
    ("1. round trip of `1+1`", "taskkernel (Python client)", "p50 (ms)"),
    ("1. round trip of `1+1`", "floor: Flask JSON echo (same gunicorn)", "p50 (ms)"),
    ("1. round trip of `1+1`", "floor: Redis PING", "p50 (ms)"),
    ("1. round trip of `1+1`", "floor: Redis PUBLISH -> subscriber", "p50 (ms)"),
    ("2. notebook open", "taskkernel (warm pool of 2)", "create -> first result of `1+1` (ms)"),
    ("2. notebook open", "taskkernel (pool empty: waits for a fork)", "create -> first result of `1+1` (ms)"),
    ("3. throughput", "taskkernel", "cells/s"),
    ("3. throughput", "taskkernel", "p99 latency (ms)"),
    ("4. streaming", "taskkernel", "10,000 lines: until the subscriber holds all (s)"),
    ("4. streaming", "taskkernel", "100,000 lines delivered completely (1 = yes)"),
    ("5. memory", "taskkernel", "USS, one idle notebook (MiB)"),
    ("5. memory", "taskkernel", "RSS, one idle notebook (MiB)"),
    ("6. scale", "taskkernel", "open notebooks held with p99 < 50 ms at 10 cells/s"),
    ("7. completion", "taskkernel", "p50 (ms)"),
    ("9. files", "taskkernel upload (curl -T, PUT)", "10 MiB: time (s)"),
    ("9. files", "taskkernel download (curl, GET)", "10 MiB: time (s)"),
    ("9. files", "curl of a static file (python -m http.server)", "10 MiB: time (s)"),
    ("10. Jupyter gateway: `1+1` over the kernel websocket", "taskkernel gateway (websocket, python engine)", "p50 (ms)"),
    ("11. idle gateway websockets", "taskkernel HTTP evaluate, 200 idle gateway websockets open", "p99 (ms)"),
]
BRIDGE_ROW = ("8. Jupyter bridge", "taskkernel kernel (Jupyter bridge, jupyter_client)", "p50 (ms)")
PEER_ROWS = [
    ("1. round trip of `1+1`", "A: ipykernel (jupyter_client, ZMQ)", "p50 (ms)"),
    ("1. round trip of `1+1`", "B: kernel gateway (REST + websocket)", "p50 (ms)"),
    ("4. streaming", "A: ipykernel (jupyter_client, ZMQ)", "10,000 lines: until the subscriber holds all (s)"),
    ("5. memory", "A: ipykernel (jupyter_client, ZMQ)", "USS, one idle notebook (MiB)"),
]
# which modules each peer needs (the test extra brings ipykernel; the bench extra brings the gateway)
PEER_MODULES = {"A:": ("ipykernel", "jupyter_client"), "B:": ("kernel_gateway", "websocket")}


def peer_installed(system: str) -> bool:
    modules = next(m for prefix, m in PEER_MODULES.items() if system.startswith(prefix))
    return all(importlib.util.find_spec(name) for name in modules)


def table_row(figure: str, system: str, metric: str) -> re.Pattern:
    """A terminal-table row with min, median, max and the repetition count."""
    cells = r"\s{2,}".join(re.escape(c) for c in (figure, system, metric))
    return re.compile(rf"^{cells}\s{{2,}}{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+\d+", re.M)


def markdown_row(system: str, metric: str) -> re.Pattern:
    return re.compile(rf"^\| {re.escape(system)} \| {re.escape(metric)} \| {NUMBER} \| {NUMBER} \| {NUMBER} \| \d+ \|",
                      re.M)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """Run the quick benchmark once; stop it with SIGTERM (its services go down in its finally) if it hangs."""
    output = tmp_path_factory.mktemp("bench") / "RESULTS.md"
    process = subprocess.Popen([sys.executable, "-m", "bench", "--quick", "--output", str(output)], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=330)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        try:
            stdout, stderr = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        pytest.fail(f"python -m bench --quick did not finish in 330 s\n{stderr[-3000:]}")
    return process.returncode, stdout, stderr, output


def test_quick_run_succeeds_and_writes_results(quick_run):
    code, stdout, stderr, output = quick_run
    assert code == 0, stderr[-4000:]
    assert output.exists()
    text = output.read_text()
    assert "## Machine and versions" in text and "| celery |" in text and "| redis-server |" in text


@pytest.mark.parametrize("figure,system,metric", OUR_ROWS)
def test_taskkernel_rows_hold_numbers(quick_run, figure, system, metric):
    _, stdout, _, output = quick_run
    assert table_row(figure, system, metric).search(stdout), f"no row {system} / {metric} in:\n{stdout}"
    assert markdown_row(system, metric).search(output.read_text())


def test_every_target_has_a_verdict(quick_run):
    _, stdout, _, output = quick_run
    verdicts = re.findall(r"^\s+(PASS|MISS|n/a)\s+\S", stdout.split("\ntargets\n", 1)[1], re.M)
    assert len(verdicts) == 16  # with the chaos figure's target (n/a here: not in a quick run of every figure)
    assert output.read_text().count("| **") >= 16


@pytest.mark.parametrize("figure,system,metric", PEER_ROWS)
def test_peer_rows_hold_numbers_or_say_they_are_missing(quick_run, figure, system, metric):
    _, stdout, _, _ = quick_run
    if peer_installed(system):
        assert table_row(figure, system, metric).search(stdout), f"no row {system} / {metric} in:\n{stdout}"
    else:
        line = next(li for li in stdout.splitlines() if system in li and metric in li)
        assert "peer not installed" in line


def test_the_bridge_row_holds_a_number_when_ipykernel_is_there(quick_run):
    _, stdout, _, _ = quick_run
    if peer_installed("A:"):
        assert table_row(*BRIDGE_ROW).search(stdout), f"no bridge row in:\n{stdout}"
    else:
        assert "peer not installed" in next(li for li in stdout.splitlines() if BRIDGE_ROW[1] in li)
