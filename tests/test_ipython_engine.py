"""The ipython engine: IPython's magics, shell escapes, display system and tracebacks."""

import pytest

pytestmark = pytest.mark.timeout(120)


def test_magics_and_shell_escapes_run(ipython_notebook):
    cell = ipython_notebook.evaluate("%timeit -n 3 -r 1 sum(range(100))")
    assert cell["status"] == "ok" and "per loop" in cell["stdout"]
    cell = ipython_notebook.evaluate("!echo from-the-shell")
    assert "from-the-shell" in cell["stdout"]
    files = ipython_notebook.evaluate("files = !ls /\n'etc' in files")
    assert files["outputs"][-1]["data"]["text/plain"] == "True"


def test_values_errors_and_display_use_ipythons_machinery(ipython_notebook):
    result = ipython_notebook.evaluate("x = 21\nx * 2")
    assert result["outputs"] == [{"output_type": "execute_result", "execution_count": 1,
                                  "data": {"text/plain": "42"}, "metadata": {}}]
    shown = ipython_notebook.evaluate("from IPython.display import HTML, display\ndisplay(HTML('<i>hi</i>'))")
    assert shown["outputs"][0]["output_type"] == "display_data"
    assert shown["outputs"][0]["data"]["text/html"] == "<i>hi</i>"
    failed = ipython_notebook.evaluate("def f():\n    1/0\nf()")
    assert failed["status"] == "error" and failed["error"]["ename"] == "ZeroDivisionError"
    assert any("1/0" in line for line in failed["error"]["traceback"])
    assert not any("\x1b[" in line for line in failed["error"]["traceback"]), "no terminal colours"
    assert ipython_notebook.evaluate("In[1]")["outputs"][0]["data"]["text/plain"] == "'x = 21\\nx * 2'"


def test_interrupt_and_completion_work_as_in_the_python_engine(ipython_notebook):
    import time

    ipython_notebook.evaluate("import math")
    assert "sqrt" in ipython_notebook.complete("math.sq")["matches"]
    assert ipython_notebook.is_complete("%%time\nfor i in range(3):")["status"] == "incomplete"
    running = ipython_notebook.evaluate("import time\ntime.sleep(100)", wait=False)
    time.sleep(1)
    ipython_notebook.interrupt()
    cell = ipython_notebook.wait(running["id"], timeout=10)
    assert cell["error"]["ename"] == "KeyboardInterrupt"
    # as on ipykernel: the cell's frame is the last one (no signal handler of the engine's), no message
    assert cell["error"]["traceback"][-1] == "KeyboardInterrupt: "
    assert not any("taskkernel" in line for line in cell["error"]["traceback"]), cell["error"]["traceback"]
