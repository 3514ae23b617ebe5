"""The plain Python engine on its own (no services): REPL semantics, errors, introspection."""

import pytest

from taskkernel.engines.python import PythonEngine


@pytest.fixture
def engine():
    engine = PythonEngine()
    engine.start()
    return engine


def run(engine, code):
    emitted = []
    reply = engine.execute(code, lambda t, c: emitted.append((t, c)))
    return reply, emitted


def test_the_last_expression_is_the_result(engine):
    reply, emitted = run(engine, "a = 2\na * 21")
    assert reply["status"] == "ok" and reply["execution_count"] == 1
    assert emitted[0] == ("execute_input", {"code": "a = 2\na * 21", "execution_count": 1})
    assert emitted[1][0] == "execute_result" and emitted[1][1]["data"] == {"text/plain": "42"}


def test_errors_become_data_with_the_users_frames(engine):
    reply, emitted = run(engine, "def f():\n    raise KeyError('k')\nf()")
    assert reply["status"] == "error" and reply["ename"] == "KeyError"
    traceback = "\n".join(emitted[-1][1]["traceback"])
    assert "<cell-1>" in traceback and "engines/python.py" not in traceback


def test_system_exit_does_not_end_the_engine(engine):
    reply, _ = run(engine, "raise SystemExit(3)")
    assert reply["status"] == "error" and reply["ename"] == "SystemExit"
    assert run(engine, "1")[0]["status"] == "ok"


def test_display_emits_display_data(engine):
    _, emitted = run(engine, "display('shown')")
    assert ("display_data", {"data": {"text/plain": "'shown'"}, "metadata": {}, "transient": {}}) in emitted


@pytest.mark.parametrize("code,status", [
    ("x = 1", "complete"), ("if x:", "incomplete"), ("(1,", "incomplete"), ("1 +* 2", "invalid"),
    ("def f(x):\n  x*2", "incomplete"), ("for i in y:\n    print(i)\n", "complete"),
])
def test_is_complete(engine, code, status):
    assert engine.is_complete(code)["status"] == status


def test_completion_falls_back_to_rlcompleter_names(engine):
    run(engine, "zebra_count = 1")
    assert engine._complete_rl("zeb", 3) == (["zebra_count"], 0)
    assert "zebra_count" in engine.complete("zeb", 3)["matches"]
