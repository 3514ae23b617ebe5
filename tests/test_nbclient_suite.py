"""bench/nbclient_suite.py: nbclient's own tests, fetched from PyPI, run on the bridge kernel by name.

The whole suite is a figure (`./dev.sh bench --only nbclient`); here a few of its notebook tests
run through the runner against the test service, so the name mapping and the counting are known
to work.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench import nbclient_suite

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    why = nbclient_suite.missing_tools()
    if why:
        pytest.skip(why)
    return nbclient_suite.fetch_suite(tmp_path_factory.mktemp("nbclient") / "sdist")


def test_the_suite_is_nbclients_sdist_of_the_installed_version(suite):
    import nbclient

    assert suite.name == f"nbclient-{nbclient.__version__}"
    assert (suite / "tests" / "test_client.py").read_text().count("def test_") > 50


def test_the_bridge_kernelspec_answers_to_python3_in_its_private_path(service, tmp_path):
    data_dir = nbclient_suite.install_as_python3(service.api_url, "ipython", tmp_path)
    found = subprocess.run([sys.executable, "-c", "from jupyter_client.kernelspec import KernelSpecManager as M; "
                            "print(M().get_kernel_spec('python3').argv)"],
                           env={**os.environ, "JUPYTER_PATH": str(data_dir)}, capture_output=True, text=True,
                           timeout=60)
    assert "taskkernel.jupyter" in found.stdout, found.stderr


def test_the_suites_notebook_tests_pass_on_the_bridge(service, suite, tmp_path):
    data_dir = nbclient_suite.install_as_python3(service.api_url, "ipython", tmp_path / "spec")
    run = nbclient_suite.run_suite(suite, "taskkernel", tmp_path / "run", data_dir, timeout_s=400,
                                   select="test_run_all_notebooks and (HelloWorld or Factorials or SVG)")
    assert (run.total, run.passed) == (3, 3), (run.failures, (tmp_path / "run" / "pytest.log").read_text()[-3000:])


def test_a_failing_test_of_the_suite_is_counted_with_its_reason(service, suite, tmp_path):
    """The kernelspec points at a port where nothing listens: the notebook's cells fail on the bridge."""
    from tests.conftest import free_port

    data_dir = nbclient_suite.install_as_python3(f"http://127.0.0.1:{free_port()}", "ipython", tmp_path / "spec")
    run = nbclient_suite.run_suite(suite, "taskkernel (down)", tmp_path / "run", data_dir, timeout_s=400,
                                   select="test_run_all_notebooks and HelloWorld")
    assert (run.total, run.passed, run.failed + run.errors) == (1, 0, 1)
    assert "HelloWorld" in run.failures[0]


def test_a_flaky_test_counts_by_its_last_attempt(tmp_path):
    """A pure function: flaky writes a rerun attempt as an empty entry, the final one with its outcome."""
    report = tmp_path / "junit.xml"
    report.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_client" name="failed_twice" time="0.01"/>'
        '<testcase classname="tests.test_client" name="failed_twice" time="3.9">'
        '<failure message="CellExecutionError: boom">tb</failure></testcase>'
        '<testcase classname="tests.test_client" name="passed_again" time="0.01"/>'
        '<testcase classname="tests.test_client" name="passed_again" time="4.0"/>'
        '<testcase classname="tests.test_client" name="skipped" time="0"><skipped message="no"/></testcase>'
        '</testsuite></testsuites>')
    run = nbclient_suite.read_report(report, "k")
    assert (run.total, run.passed, run.failed, run.skipped) == (3, 1, 1, 1)
    assert run.failures == ["test_client::failed_twice: CellExecutionError: boom"]
