"""stdin (issue 14, item 3): input() and getpass() ask the front end, as on ipykernel.

A cell evaluated with allow_stdin publishes input_request {prompt, password} on the feed and
waits; POST /api/notebooks/<id>/input answers it. Without allow_stdin it raises
StdinNotImplementedError, as ipykernel does. Real sandboxed engines behind real workers.
"""

import pytest

from taskkernel import messages
from taskkernel.client import ApiError

pytestmark = pytest.mark.timeout(120)


def wait_for_input_request(nb, cell_id: str) -> dict:
    """The input_request the cell publishes (the cell then waits for an answer)."""
    for message in nb.follow(cell_id, timeout=60):
        if message["header"]["msg_type"] == "input_request":
            return message
    raise AssertionError("the cell ended without an input_request")


def test_input_asks_the_front_end_and_returns_its_answer(any_notebook):
    nb = any_notebook
    cell = nb.evaluate("print('before')\nname = input('name? ')\nprint('hello', name)", wait=False,
                       allow_stdin=True)
    request = wait_for_input_request(nb, cell["id"])
    assert request["content"] == {"prompt": "name? ", "password": False}
    assert request["parent_header"]["msg_id"] == cell["id"]
    assert messages.validate_message(request) == []
    assert nb.input_reply("Ada") == {"delivered": True}
    done = nb.wait(cell["id"], timeout=60)
    assert done["status"] == "ok", done
    assert done["stdout"] == "before\nhello Ada\n"


def test_getpass_asks_for_a_password(any_notebook):
    nb = any_notebook
    cell = nb.evaluate("import getpass\nsecret = getpass.getpass('token: ')\nprint(len(secret))", wait=False,
                       allow_stdin=True)
    request = wait_for_input_request(nb, cell["id"])
    assert request["content"] == {"prompt": "token: ", "password": True}
    nb.input_reply("s3cret")
    done = nb.wait(cell["id"], timeout=60)
    assert (done["status"], done["stdout"]) == ("ok", "6\n"), done


def test_an_interrupt_while_waiting_raises_keyboardinterrupt_and_the_next_cell_runs(any_notebook):
    nb = any_notebook
    cell = nb.evaluate("input('wait here: ')", wait=False, allow_stdin=True)
    wait_for_input_request(nb, cell["id"])
    assert nb.interrupt() == {"interrupted": cell["id"]}
    done = nb.wait(cell["id"], timeout=60)
    assert done["status"] == "error"
    assert (done["error"]["ename"], done["error"]["evalue"]) == ("KeyboardInterrupt", "Interrupted by user")
    with pytest.raises(ApiError) as caught:  # nothing waits any more
        nb.input_reply("too late")
    assert (caught.value.status, caught.value.code) == (409, "no_input_pending")
    assert nb.evaluate("1 + 1")["outputs"][0]["data"]["text/plain"] == "2"


def test_end_of_file_is_eoferror(any_notebook):
    nb = any_notebook
    cell = nb.evaluate("try:\n    input()\nexcept EOFError:\n    print('eof')", wait=False, allow_stdin=True)
    wait_for_input_request(nb, cell["id"])
    nb.input_reply("\x04")
    assert nb.wait(cell["id"], timeout=60)["stdout"] == "eof\n"


def test_without_allow_stdin_input_raises_stdin_not_implemented(any_notebook):
    nb = any_notebook
    for code, what in [("input('x')", "raw_input"), ("import getpass; getpass.getpass()", "getpass")]:
        cell = nb.evaluate(code, timeout=30)
        assert cell["status"] == "error"
        assert cell["error"]["ename"] == "StdinNotImplementedError"
        assert cell["error"]["evalue"] == f"{what} was called, but this frontend does not support input requests."
    feed_types = {m["header"]["msg_type"] for m in nb.feed(timeout=0.5)}
    assert "input_request" not in feed_types


def test_an_answer_with_no_cell_waiting_is_refused(any_notebook):
    with pytest.raises(ApiError) as caught:
        any_notebook.input_reply("nobody asked")
    assert (caught.value.status, caught.value.code) == (409, "no_input_pending")
