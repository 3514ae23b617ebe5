"""Jupyter fidelity (issue 14): what a notebook does on ipykernel, it does on taskkernel's engines.

Every test runs cells on real sandboxed engines behind real Celery workers; a cell's kept
`outputs` must be what nbclient would save for the same messages, and the feed must carry the
messages ipykernel would send.
"""

import base64

import pytest

from taskkernel.workers.runtime import CellRun
from taskkernel import messages

pytestmark = pytest.mark.timeout(120)

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def python_notebook(service, client):
    nb = client.start("python")
    try:
        yield nb
    finally:
        nb.close()


def run(nb, code: str) -> tuple[dict, list[dict]]:
    """Run a cell; (its record, its feed messages up to and including execute_reply)."""
    feed = list(nb.stream(code, timeout=60))
    assert feed and feed[-1]["header"]["msg_type"] == "execute_reply", feed
    cell = nb.cell(feed[-1]["parent_header"]["msg_id"])
    return cell, feed


def of_type(feed: list[dict], msg_type: str) -> list[dict]:
    return [m["content"] for m in feed if m["header"]["msg_type"] == msg_type]


def pngs(outputs: list[dict]) -> list[bytes]:
    return [base64.b64decode(o["data"]["image/png"]) for o in outputs if "image/png" in o.get("data", {})]


# --- 1. matplotlib inline, through matplotlib-inline's backend -----------------------------------

def test_matplotlib_inline_shows_figures_at_cell_end_on_plt_show_and_again_on_request(ipython_notebook):
    nb = ipython_notebook
    cell = nb.evaluate("%matplotlib inline\nimport matplotlib\nmatplotlib.get_backend()")
    assert cell["status"] == "ok", cell["error"]
    assert "inline" in cell["outputs"][-1]["data"]["text/plain"]  # no NotImplementedError
    drawn = nb.evaluate("import matplotlib.pyplot as plt\nfig, ax = plt.subplots(figsize=(2, 2))\n_ = ax.plot([1, 3])")
    assert [o["output_type"] for o in drawn["outputs"]] == ["display_data"]  # shown once, at the cell's end
    assert pngs(drawn["outputs"])[0].startswith(PNG)
    shown = nb.evaluate("plt.plot([2, 1])\nplt.show()\nprint('after show')")
    assert [o["output_type"] for o in shown["outputs"]] == ["display_data", "stream"]  # show() drew it then
    again = nb.evaluate("fig")  # closed after it was shown, and still displayable as a value
    assert again["outputs"][0]["output_type"] == "execute_result"
    assert pngs(again["outputs"])[0].startswith(PNG)
    refused = nb.evaluate("%matplotlib tk")  # a GUI backend: refused (by matplotlib: there is no display)
    assert refused["status"] == "error" and refused["error"]["ename"] != "NotImplementedError"


def test_matplotlib_shows_inline_without_the_magic_as_on_ipykernel(ipython_notebook):
    cell = ipython_notebook.evaluate("import matplotlib.pyplot as plt\nplt.plot([1, 2])\n"
                                     "import matplotlib; print(matplotlib.get_backend())")
    assert "inline" in cell["stdout"]
    assert len(pngs(cell["outputs"])) == 1


# --- 2. display ids and clear_output, kept as nbclient keeps them ----------------------------------

def test_a_display_updated_by_its_id_is_replaced_not_appended(any_notebook):
    cell, feed = run(any_notebook, "from IPython.display import display\n"
                                   "h = display('first', display_id=True)\nprint('between')\nh.update('second')")
    assert cell["status"] == "ok", cell["error"]
    shown, = of_type(feed, "display_data")
    updated, = of_type(feed, "update_display_data")
    assert updated["transient"] == shown["transient"] and shown["transient"]["display_id"]
    assert cell["outputs"] == [
        {"output_type": "display_data", "data": {"text/plain": "'second'"}, "metadata": {}},
        {"output_type": "stream", "name": "stdout", "text": "between\n"},
    ]


def test_the_python_engines_own_display_has_display_ids(python_notebook):
    cell, feed = run(python_notebook, "h = display('a', display_id='bar')\nh.update('b')\n"
                                      "again = display('c', display_id='bar')")
    assert [m["header"]["msg_type"] for m in feed if "transient" in m["content"]] == [
        "display_data", "update_display_data", "display_data"]
    # a second display with the same id shows it twice, and updates the first (as nbclient does)
    assert [o["data"]["text/plain"] for o in cell["outputs"]] == ["'c'", "'c'"]


def test_messages_sent_on_the_kernels_iopub_socket_are_the_cells_outputs(any_notebook):
    """Code that publishes itself, as nbclient's update-display-id notebook does:
    session.send(kernel.iopub_socket, msg_type, content, parent=ip.parent_header), numbering its
    execute_result from get_ipython().execution_count."""
    import IPython

    cell, feed = run(any_notebook, "ip = get_ipython()\nk = ip.kernel\n"
                                       "def send(t, c): k.session.send(k.iopub_socket, t, c, parent=ip.parent_header)\n"
                                       "send('display_data', {'data': {'text/plain': '1'}, 'metadata': {}, "
                                       "'transient': {'display_id': 'here'}})\n"
                                       "send('update_display_data', {'data': {'text/plain': '2'}, 'metadata': {}, "
                                       "'transient': {'display_id': 'here'}})\n"
                                       "sent = k.session.send(object(), 'display_data', {'data': {'text/plain': 'no'}})")
    assert cell["status"] == "ok", cell["error"]
    assert [m["header"]["msg_type"] for m in feed if "transient" in m["content"]] == [
        "display_data", "update_display_data"]
    assert cell["outputs"] == [{"output_type": "display_data", "data": {"text/plain": "2"}, "metadata": {}}]
    counted = any_notebook.evaluate("get_ipython().execution_count")
    ahead = 1 if IPython.version_info >= (9, 8) else 0  # IPython 9.8 counts a cell before running it
    assert counted["outputs"][0]["data"]["text/plain"] == str(counted["execution_count"] + ahead)


def test_clear_output_clears_at_once_or_at_the_next_output_without_escape_codes(any_notebook):
    cell, feed = run(any_notebook, "from IPython.display import clear_output\n"
                                   "print('gone')\nclear_output()\nprint('kept')")
    assert of_type(feed, "clear_output") == [{"wait": False}]
    assert cell["outputs"] == [{"output_type": "stream", "name": "stdout", "text": "kept\n"}]
    assert "\x1b" not in cell["stdout"]
    cell, feed = run(any_notebook, "import time\nfor i in range(3):\n    clear_output(wait=True)\n    print(i)")
    assert of_type(feed, "clear_output") == [{"wait": True}] * 3
    assert cell["outputs"] == [{"output_type": "stream", "name": "stdout", "text": "2\n"}]


def test_cellrun_keeps_outputs_as_nbclient_does():
    """The worker's side on its own: the same message sequence nbclient's tests use."""
    run_ = CellRun("nb", "c", 1 << 20, 0.0)

    def add(msg_type, **content):
        run_.add_output(messages.make_message(msg_type, content, notebook_id="nb", cell_id="c"))

    add("display_data", data={"text/plain": "1"}, metadata={}, transient={"display_id": "d"})
    add("stream", name="stdout", text="x\n")
    add("update_display_data", data={"text/plain": "2"}, metadata={"m": 1}, transient={"display_id": "d"})
    assert run_.outputs[0] == {"output_type": "display_data", "data": {"text/plain": "2"}, "metadata": {"m": 1}}
    add("clear_output", wait=True)
    assert len(run_.outputs) == 2  # kept until the next output
    add("update_display_data", data={"text/plain": "3"}, metadata={}, transient={"display_id": "d"})
    assert len(run_.outputs) == 2  # an update is not an output: the clear still waits
    add("stream", name="stdout", text="y\n")
    assert run_.outputs == [{"output_type": "stream", "name": "stdout", "text": "y\n"}]
    add("update_display_data", data={"text/plain": "4"}, metadata={}, transient={"display_id": "d"})
    assert run_.outputs == [{"output_type": "stream", "name": "stdout", "text": "y\n"}]  # its display is gone
    msg = messages.make_message("update_display_data", {"data": {}, "metadata": {}, "transient": {}},
                                notebook_id="nb", cell_id="c")
    assert messages.validate_message(msg) == []


# --- 3. warnings and logging reach stderr ------------------------------------------------------

def test_warnings_and_logging_reach_the_cells_stderr(any_notebook):
    cell = any_notebook.evaluate("import warnings\nwarnings.warn('careful now')")
    assert "UserWarning: careful now" in cell["stderr"]
    assert cell["outputs"][0]["name"] == "stderr"
    cell = any_notebook.evaluate("import logging\nlogging.warning('logged %d', 42)\nlogging.info('not shown')")
    assert cell["stderr"] == "WARNING:root:logged 42\n"


# --- 4. IPython conveniences on the ipython engine ----------------------------------------------

def test_semicolon_in_out_and_underscores(ipython_notebook):
    nb = ipython_notebook
    assert nb.evaluate("21 * 2")["outputs"][0]["data"]["text/plain"] == "42"
    assert nb.evaluate("'quiet';")["outputs"] == []
    assert nb.evaluate("7")["outputs"][0]["data"]["text/plain"] == "7"
    cell = nb.evaluate("(_, __, Out[1], In[2])")
    assert cell["outputs"][0]["data"]["text/plain"] == "(7, 42, 42, \"'quiet';\")"


def test_exit_asks_the_front_end_and_leaves_the_namespace_alive(ipython_notebook):
    ipython_notebook.evaluate("kept = 1")
    cell, feed = run(ipython_notebook, "exit()")
    reply, = of_type(feed, "execute_reply")
    assert reply["status"] == "ok" and reply["payload"] == [{"source": "ask_exit", "keepkernel": False}]
    assert ipython_notebook.evaluate("kept + 1")["outputs"][0]["data"]["text/plain"] == "2"


@pytest.mark.parametrize("code", ["len?", "%pinfo len"])
def test_the_pager_is_a_page_payload_not_stdout(ipython_notebook, code):
    cell, feed = run(ipython_notebook, code)
    reply, = of_type(feed, "execute_reply")
    page, = reply["payload"]
    assert page["source"] == "page" and "Return the number of items" in page["data"]["text/plain"]
    assert cell["stdout"] == "" and cell["outputs"] == []


# --- 5. IPython syntax on the python engine ----------------------------------------------------

def test_the_python_engine_runs_ipython_syntax_without_losing_the_cell(python_notebook):
    nb = python_notebook
    cell = nb.evaluate("import math\n%matplotlib inline\nroot = math.sqrt(16)")
    assert cell["status"] == "ok", cell["error"]
    assert nb.evaluate("root")["outputs"][0]["data"]["text/plain"] == "4.0"  # the imports were not lost
    assert "from-the-shell" in nb.evaluate("!echo from-the-shell")["stdout"]
    assert nb.evaluate("files = !ls /\n'etc' in files")["outputs"][0]["data"]["text/plain"] == "True"
    cell, feed = run(nb, "math.sqrt?")
    assert of_type(feed, "execute_reply")[0]["payload"][0]["source"] == "page"
    cell = nb.evaluate("import asyncio\nawait asyncio.sleep(0.01, result='awaited')")
    assert cell["outputs"][0]["data"]["text/plain"] == "'awaited'"
    cell = nb.evaluate("%time total = sum(range(10))\ntotal")
    assert "Wall time" in cell["stdout"] and cell["outputs"][-1]["data"]["text/plain"] == "45"
    figure = nb.evaluate("import matplotlib.pyplot as plt\n_ = plt.plot([1, 2])")
    assert len(pngs(figure["outputs"])) == 1
    broken = nb.evaluate("1 +* 2")
    assert broken["status"] == "error" and broken["error"]["ename"] == "SyntaxError"
