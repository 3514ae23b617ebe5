"""The client-side commands against a live service: status, run (a .py and an .ipynb), console."""

import os
import subprocess
import sys
import time

import pytest

from tests.conftest import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def taskkernel(*args, env=None, timeout=60):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TASKKERNEL_")}
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "taskkernel", *args], env=environ, capture_output=True,
                          text=True, timeout=timeout)


# --- status ------------------------------------------------------------------------------------

def test_status_shows_the_host_and_the_notebooks_with_their_states(service, notebook):
    notebook.evaluate("x = 1")
    result = taskkernel("status", "--url", service.api_url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    host_row = next(line.split() for line in lines if line.startswith("main "))
    assert host_row[1] == "up"
    assert "python:" in result.stdout
    notebook_row = next(line.split() for line in lines if line.startswith(notebook.id))
    assert notebook_row[1:5] == ["python", "idle", "main", str(notebook.record["worker"]["pid"])]
    assert notebook_row[5] == "1", "execution count"


def test_status_reads_redis_directly_when_no_url_is_given(service, notebook):
    result = taskkernel("status", "--json", env={"TASKKERNEL_REDIS_URL": service.redis_url})
    assert result.returncode == 0, result.stderr
    import json

    status = json.loads(result.stdout)
    assert "main" in [h["name"] for h in status["hosts"] if h["alive"]]
    assert notebook.id in [nb["id"] for nb in status["notebooks"]]


# --- run ---------------------------------------------------------------------------------------

def small_notebook():
    import nbformat.v4 as v4  # nbformat is imported where used (see test_run_executes_...)

    return v4.new_notebook(cells=[
        v4.new_markdown_cell("# A small notebook"),
        v4.new_code_cell("import time\nprint('first', flush=True)\ntime.sleep(1.5)\nprint('second')"),
        v4.new_code_cell("class Bold:\n    def _repr_html_(self):\n        return '<b>bold</b>'\n\ndisplay(Bold())\n6 * 7"),
        v4.new_code_cell(""),
        v4.new_code_cell("import sys\nprint('to stderr', file=sys.stderr)\nsum(range(10))"),
    ])


def test_run_executes_an_ipynb_cell_by_cell_and_writes_its_outputs(service, client, tmp_path):
    # imported here, not by the module: nbformat imports jsonschema, whose format checkers take
    # ~2 s of CPU to import (rfc3987-syntax builds a grammar), in every xdist worker that collects this
    import nbformat

    source, executed = tmp_path / "small.ipynb", tmp_path / "executed.ipynb"
    nbformat.write(small_notebook(), str(source))
    before = {nb["id"] for nb in client.notebooks()}
    process = subprocess.Popen([sys.executable, "-m", "taskkernel", "run", str(source), "--url", service.api_url,
                                "--output", str(executed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        arrivals = {}
        for line in process.stdout:
            arrivals[line.strip()] = time.monotonic()
        stderr = process.stderr.read()
        assert process.wait(30) == 0, stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert arrivals["second"] - arrivals["first"] > 1.0, "output is printed while the cell runs"
    assert "Out[2]: 42" in arrivals and "Out[3]: 45" in arrivals
    assert "[cell 1/3] import time" in stderr and "[cell 3/3] import sys" in stderr
    assert "to stderr" in stderr

    result = nbformat.read(str(executed), as_version=4)
    nbformat.validate(result)
    cells = result.cells
    assert cells[0].cell_type == "markdown" and cells[0].source == "# A small notebook"
    assert [c.execution_count for c in cells[1:]] == [1, 2, None, 3]
    assert cells[1].outputs == [{"output_type": "stream", "name": "stdout", "text": "first\nsecond\n"}]
    display, value = cells[2].outputs
    assert display["output_type"] == "display_data" and display["data"]["text/html"] == "<b>bold</b>"
    assert value["output_type"] == "execute_result" and value["data"]["text/plain"] == "42"
    assert [o["output_type"] for o in cells[4].outputs] == ["stream", "execute_result"]
    assert {nb["id"] for nb in client.notebooks()} == before, "the run's notebook is deleted at the end"


SCRIPT = """\
# %% [markdown]
# Cells are separated by percent markers.
# %%
value = 10
print('value is', value)
# %%
value / 0
# %%
print('after the error')
"""


def test_run_stops_at_a_failing_cell_and_exits_nonzero(service, tmp_path):
    import nbformat

    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    result = taskkernel("run", str(script), "--url", service.api_url, "--output", str(tmp_path / "out.ipynb"))
    assert result.returncode == 1
    assert "value is 10" in result.stdout and "after the error" not in result.stdout
    assert "ZeroDivisionError" in result.stderr and "[cell 2/3] failed" in result.stderr
    written = nbformat.read(str(tmp_path / "out.ipynb"), as_version=4)
    assert [c.cell_type for c in written.cells] == ["markdown", "code", "code", "code"]
    assert written.cells[2].outputs[0]["ename"] == "ZeroDivisionError"
    assert written.cells[3].outputs == [] and written.cells[3].execution_count is None

    allowed = taskkernel("run", str(script), "--url", service.api_url, "--allow-errors")
    assert allowed.returncode == 0
    assert "after the error" in allowed.stdout


def test_run_interrupts_a_cell_past_its_timeout(service, tmp_path):
    script = tmp_path / "slow.py"
    script.write_text("import time\ntime.sleep(60)")
    started = time.monotonic()
    result = taskkernel("run", str(script), "--url", service.api_url, "--timeout", "1")
    assert result.returncode == 1
    assert "KeyboardInterrupt" in result.stderr
    assert time.monotonic() - started < 30


def test_a_killed_run_leaves_no_notebook_behind_and_keep_keeps_one(service, client, tmp_path):
    """The run's notebook has a lease the command renews; SIGKILL stops the renewals."""
    script = tmp_path / "long.py"
    script.write_text("import time\ntime.sleep(60)")
    before = {nb["id"] for nb in client.notebooks()}
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TASKKERNEL_")}
    process = subprocess.Popen([sys.executable, "-m", "taskkernel", "run", str(script), "--url", service.api_url,
                                "--lease", "2"], env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: {nb["id"] for nb in client.notebooks()} - before, 30, "the run's notebook")
        (notebook_id,) = {nb["id"] for nb in client.notebooks()} - before
        time.sleep(4)  # two leases: the command's renewals keep the notebook
        assert client.notebook(notebook_id).record["lease_s"] == 2
        process.kill()
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    wait_for(lambda: notebook_id not in {nb["id"] for nb in client.notebooks()}, 15,
             "the killed run's notebook to be deleted")

    quick = tmp_path / "quick.py"
    quick.write_text("1")
    kept = taskkernel("run", str(quick), "--url", service.api_url, "--keep")
    assert kept.returncode == 0, kept.stderr
    (kept_id,) = {nb["id"] for nb in client.notebooks()} - before
    assert client.notebook(kept_id).record["lease_s"] is None, "a kept notebook has no lease to run out"
    client.notebook(kept_id).close()


# --- console -----------------------------------------------------------------------------------

def spawn_console(service, home):
    """`taskkernel console` in a pty. A pty does not answer prompt_toolkit's cursor position
    requests as a terminal does: PROMPT_TOOLKIT_NO_CPR keeps it from waiting for the answer."""
    pexpect = pytest.importorskip("pexpect")
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TERM": "xterm",
           "PROMPT_TOOLKIT_NO_CPR": "1"}
    return pexpect.spawn(sys.executable, ["-m", "taskkernel", "console", "--url", service.api_url], env=env,
                         encoding="utf-8", timeout=20, dimensions=(40, 200))


def test_console_completes_runs_blocks_and_interrupts(service, client, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    before = {nb["id"] for nb in client.notebooks()}
    console = spawn_console(service, tmp_path)
    try:
        console.expect(r"In \[1\]: ")
        console.sendline("import math")
        console.expect(r"In \[2\]: ")
        console.send("math.sq\t")  # Tab: the notebook's namespace completes it (one match: inserted)
        console.expect("rt")  # the completion drawn after the cursor
        console.send("(16)\r")
        console.expect(r"Out\[2\]: \S*4\.0")

        console.expect(r"In \[3\]: ")
        console.sendline("for i in range(2):")  # incomplete: a continuation line, indented
        console.expect(r"\.\.\.: ")
        console.sendline("print('line', i)")
        console.expect(r"\.\.\.: ")
        console.sendline("")
        console.expect("line 0")
        console.expect("line 1")

        console.expect(r"In \[4\]: ")
        console.sendline("import time; print('sleeping', flush=True); time.sleep(60)")
        console.expect("sleeping\r\n")  # printed by the running cell (in the echo, 'sleeping' is in quotes)
        time.sleep(0.3)
        console.sendintr()  # Ctrl-C: an interrupt for the running cell
        console.expect("KeyboardInterrupt")
        console.expect(r"In \[5\]: ")
        console.sendline("math.floor(2.5)")  # the namespace survived the interrupt
        console.expect(r"Out\[5\]: \S*2")
        console.expect(r"In \[6\]: ")
        console.sendeof()
        console.expect(pexpect.EOF)
    finally:
        console.close(force=True)
    assert console.exitstatus == 0
    history = (tmp_path / ".taskkernel_history").read_text()
    assert "import math" in history and "math.sqrt(16)" in history
    assert {nb["id"] for nb in client.notebooks()} == before, "leaving deletes the console's notebook"


def test_console_edits_whole_cells_with_a_completion_menu_and_cell_history(service, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    console = spawn_console(service, tmp_path)
    try:
        console.expect(r"In \[1\]: ")
        console.send("import math\r")
        console.expect(r"In \[2\]: ")
        console.send("math.is\t")  # several matches: a menu of them, from the live namespace
        for name in ("isclose", "isfinite", "isqrt"):
            console.expect(name)
        console.send("qrt(17)\r")
        console.expect(r"Out\[2\]: \S*4")

        console.expect(r"In \[3\]: ")
        console.send("total = 0\r")
        console.expect(r"In \[4\]: ")
        console.send("for i in range(3):\r")  # one cell over three lines, edited as one buffer
        console.expect(r"\.\.\.: ")
        console.send("total += i\r")
        console.expect(r"\.\.\.: ")
        console.send("\r")
        console.expect(r"In \[5\]: ")
        console.send("\x1b[A")  # Up: the whole for-cell comes back from history, not one line of it
        console.expect("total")
        console.send("\r")
        console.expect(r"\.\.\.: ")
        console.send("\r")
        console.expect(r"In \[6\]: ")
        console.send("total\r")
        console.expect(r"Out\[6\]: \S*6")  # the recalled cell ran again: 0+1+2, twice
        console.expect(r"In \[7\]: ")
        console.sendeof()
        console.expect(pexpect.EOF)
    finally:
        console.close(force=True)
    assert console.exitstatus == 0


def test_every_command_has_help():
    for command in ("status", "run", "console"):
        result = taskkernel(command, "--help")
        assert result.returncode == 0
        assert "--url" in result.stdout
