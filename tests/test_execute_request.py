"""The execute_request's flags on an evaluate (issue 14): silent, store_history, user_expressions.

As ipykernel answers them: a silent cell shows no value, publishes no execute_input and does not
advance the execution count (its prints still show); store_history=False runs without advancing
the count; user_expressions are evaluated after a cell that succeeded and come back in its
execute_reply, each as a mime bundle or an error. Warnings and logging reach stderr.
"""

import pytest
from tests.conftest import run_followed as run

pytestmark = pytest.mark.timeout(120)


def types(feed: list[dict]) -> list[str]:
    return [m["header"]["msg_type"] for m in feed]


def test_a_silent_cell_shows_no_value_and_does_not_count(any_notebook):
    nb = any_notebook
    first, _ = run(nb, "x = 1\nx")
    assert first["execution_count"] == 1
    cell, feed = run(nb, "print('still printed')\nx + 41", silent=True)
    assert cell["status"] == "ok"
    assert "execute_input" not in types(feed) and "execute_result" not in types(feed)
    assert cell["stdout"] == "still printed\n"
    assert feed[-1]["content"]["execution_count"] == 1
    after, _ = run(nb, "x")
    assert after["execution_count"] == 2


def test_store_history_false_runs_without_advancing_the_count(any_notebook):
    nb = any_notebook
    run(nb, "y = 5")
    cell, feed = run(nb, "y * 2", store_history=False)
    assert cell["outputs"][0]["data"]["text/plain"] == "10"
    assert feed[-1]["content"]["execution_count"] == 1
    assert run(nb, "y")[0]["execution_count"] == 2


def test_user_expressions_come_back_in_the_reply(any_notebook):
    nb = any_notebook
    cell, feed = run(nb, "a = [1, 2, 3]", user_expressions={"n": "len(a)", "bad": "1/0"})
    expressions = feed[-1]["content"]["user_expressions"]
    assert expressions["n"]["status"] == "ok"
    assert expressions["n"]["data"]["text/plain"] == "3"
    assert expressions["bad"]["status"] == "error" and expressions["bad"]["ename"] == "ZeroDivisionError"
    _, failed = run(nb, "raise ValueError('no')", user_expressions={"n": "len(a)"})
    assert failed[-1]["content"]["status"] == "error" and failed[-1]["content"].get("user_expressions", {}) == {}


def test_user_expressions_must_be_strings(any_notebook):
    from taskkernel.client import ApiError

    with pytest.raises(ApiError) as caught:
        any_notebook.evaluate("1", user_expressions={"n": 1})
    assert (caught.value.status, caught.value.code) == (400, "invalid_field")


def test_warnings_and_logging_reach_stderr(any_notebook):
    nb = any_notebook
    cell, _ = run(nb, "import warnings, logging\nwarnings.warn('careful')\nlogging.warning('logged %d', 7)\n"
                      "logging.getLogger('lib').error('library error')")
    assert cell["status"] == "ok"
    assert "UserWarning: careful" in cell["stderr"]
    assert "logged 7" in cell["stderr"]
    assert "library error" in cell["stderr"]
    assert cell["stdout"] == ""
    # as on ipykernel, a DeprecationWarning raised by the notebook's own code is shown, every cell
    for _ in range(2):
        again, _ = run(nb, "warnings.warn('old api', DeprecationWarning)")
        assert "DeprecationWarning: old api" in again["stderr"]


def test_a_silent_cell_still_shows_its_figure_as_on_ipykernel(any_notebook):
    nb = any_notebook
    cell, feed = run(nb, "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nprint('drawn')", silent=True)
    assert cell["stdout"] == "drawn\n"
    assert [m["header"]["msg_type"] for m in feed if m["header"]["msg_type"] != "status"] == \
        ["stream", "display_data", "execute_reply"]
    assert "image/png" in cell["outputs"][-1]["data"]
