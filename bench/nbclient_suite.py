"""nbclient's own test suite (`tests/test_client.py` of its sdist on PyPI) run on ipykernel and on taskkernel.

The suite asks for kernels by name (`python`, which jupyter_client maps to `python3`, or no name at
all, which means `python3` too). On ipykernel the name finds ipykernel's own kernelspec; for
taskkernel the bridge kernelspec is installed *under the name python3* into a private Jupyter data
directory that JUPYTER_PATH puts first, so every kernel the suite starts is a bridge kernel whose
cells run on the service. The suite's code is fetched at run time (`pip download --no-binary :all:`)
into a temporary directory and run there with its own pytest configuration: nothing of it is copied
into this repository.

`python -m bench.nbclient_suite --url URL` prints the counts side by side (URL: a running service).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import os
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

SUITE_FILE = "tests/test_client.py"
# What the suite imports beyond nbclient itself (nbclient's `test` extra, less coverage tooling)
SUITE_TOOLS = ("flaky", "pytest-asyncio", "testpath", "xmltodict", "nbconvert", "ipywidgets")
PER_TEST_TIMEOUT_S = 120


@dataclasses.dataclass
class SuiteRun:
    """The outcome of one run of the suite on one kernel."""

    kernel: str
    total: int = 0
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    seconds: float = 0.0
    failures: list[str] = dataclasses.field(default_factory=list)  # "test id: first line of the reason"
    note: str = ""

    def line(self) -> str:
        return (f"{self.kernel:32s} {self.passed:3d} passed of {self.total:3d} ({self.failed} failed, "
                f"{self.errors} errors, {self.skipped} skipped) in {self.seconds:.0f} s {self.note}").rstrip()


def missing_tools() -> str | None:
    """Why the suite cannot run in this interpreter, or None."""
    absent = []
    for tool in ("nbclient", *SUITE_TOOLS):
        try:
            importlib.metadata.version(tool)
        except importlib.metadata.PackageNotFoundError:
            absent.append(tool)
    return f"not installed: {', '.join(absent)} (pip install -e '.[bench]')" if absent else None


def fetch_suite(into: Path, version: str | None = None) -> Path:
    """Download nbclient's sdist (the installed version by default) and unpack it; its directory."""
    version = version or importlib.metadata.version("nbclient")
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
                    "--dest", str(into), f"nbclient=={version}"], check=True, timeout=300,
                   stdout=subprocess.DEVNULL)
    archive = next(into.glob(f"nbclient-{version}.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    suite = into / f"nbclient-{version}"
    if not (suite / SUITE_FILE).exists():
        raise FileNotFoundError(f"{archive.name} holds no {SUITE_FILE}")
    return suite


def install_as_python3(url: str, engine: str, data_dir: Path) -> Path:
    """The bridge kernelspec to `url` (`engine` notebooks) installed as `python3` under `data_dir`
    (a Jupyter data directory: point JUPYTER_PATH at it); returns the kernelspec directory."""
    from taskkernel.jupyter.kernelspec import install

    prefix = data_dir / "prefix"
    install(url, engine, name="python3", display_name=f"Python 3 ({engine} on taskkernel)", prefix=str(prefix))
    return prefix / "share" / "jupyter"


def run_suite(suite: Path, kernel: str, workdir: Path, jupyter_path: Path | None = None,
              timeout_s: float = 1800, select: str | None = None) -> SuiteRun:
    """Run the suite's test_client.py once, in a subprocess with its own pytest configuration.

    `jupyter_path`: a Jupyter data directory put first on JUPYTER_PATH (where a `python3` kernelspec
    replaces ipykernel's); None runs on ipykernel. `select`: a pytest -k expression (all tests by
    default). Returns the counts read from the JUnit report.
    """
    import time

    workdir.mkdir(parents=True, exist_ok=True)
    report = workdir / "junit.xml"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER_", "IPYTHONDIR", "MPLBACKEND"))}
    env.update(JUPYTER_RUNTIME_DIR=str(workdir / "runtime"), IPYTHONDIR=str(workdir / "ipython"),
               JUPYTER_CONFIG_DIR=str(workdir / "config"), JUPYTER_PLATFORM_DIRS="1")
    if jupyter_path is not None:
        env["JUPYTER_PATH"] = str(jupyter_path)
    started = time.monotonic()
    with open(workdir / "pytest.log", "wb") as log:
        try:
            subprocess.run([sys.executable, "-m", "pytest", SUITE_FILE, "-q", "-p", "no:cacheprovider",
                            f"--timeout={PER_TEST_TIMEOUT_S}", f"--junitxml={report}", "--color=no",
                            # pytest-asyncio warns when this is unset, and the suite makes warnings errors
                            "-o", "asyncio_default_fixture_loop_scope=function", *(["-k", select] if select else [])],
                           cwd=suite, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                           timeout=timeout_s, start_new_session=True)
        except subprocess.TimeoutExpired:
            return SuiteRun(kernel, seconds=time.monotonic() - started, note=f"timed out after {timeout_s:g} s")
    run = read_report(report, kernel)
    run.seconds = time.monotonic() - started
    return run


def read_report(report: Path, kernel: str) -> SuiteRun:
    """The counts of a JUnit XML report (pytest's --junitxml), one per test. A test the suite marks
    flaky is reported once per attempt, and its last report is its outcome, as flaky judges it:
    an attempt flaky reruns is written as an empty (passing) entry, so "any attempt passed" would
    count a test that failed every time as passed."""
    run = SuiteRun(kernel)
    if not report.exists():
        run.note = "pytest wrote no report"
        return run
    outcomes: dict[str, tuple[str, str]] = {}  # test id -> (passed/skipped/failure/error, reason)
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        found = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        outcome = "passed" if found is None else found.tag
        reason = "" if found is None else ((found.get("message") or "").strip().splitlines() or [found.tag])[0]
        outcomes[name] = (outcome, reason[:200])
    for name, (outcome, reason) in outcomes.items():
        run.total += 1
        if outcome == "passed":
            run.passed += 1
        elif outcome == "skipped":
            run.skipped += 1
        else:
            run.failed += outcome == "failure"
            run.errors += outcome == "error"
            run.failures.append(f"{name}: {reason}")
    return run


def compare(url: str, engines: tuple[str, ...] = ("ipython", "python"), workdir: Path | None = None,
            log=print) -> list[SuiteRun]:
    """Fetch the suite once; run it on ipykernel, then on the bridge to `url` for each engine."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="nbclient-suite-"))
    suite = fetch_suite(workdir / "sdist")
    runs = [run_suite(suite, "ipykernel", workdir / "ipykernel")]
    log(runs[-1].line())
    for engine in engines:
        data_dir = install_as_python3(url, engine, workdir / f"kernelspec-{engine}")
        runs.append(run_suite(suite, f"taskkernel ({engine} engine)", workdir / f"taskkernel-{engine}", data_dir))
        log(runs[-1].line())
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.nbclient_suite", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="a running taskkernel API")
    parser.add_argument("--engine", action="append", help="engine(s) of the bridge (default: ipython, python)")
    parser.add_argument("--workdir", type=Path, help="where the sdist and the runs' logs go (default: a temp dir)")
    args = parser.parse_args(argv)
    why = missing_tools()
    if why:
        print(why, file=sys.stderr)
        return 2
    runs = compare(args.url, tuple(args.engine or ("ipython", "python")), args.workdir)
    for run in runs[1:]:
        for failure in run.failures:
            print(f"  {run.kernel}: {failure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
