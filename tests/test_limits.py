"""Per-cell limits: kept output, wall time (interrupt, then restart), memory; long cells run once."""

import time

import pytest

pytestmark = pytest.mark.timeout(120)


def test_kept_output_is_capped_with_a_truncation_marker(private_service):
    private_service.start_supervisor(pool=1, max_output_bytes=10_000)
    private_service.start_api()
    with private_service.client().start() as nb:
        cell = nb.evaluate("print('x' * 50_000)\nprint('more')")
        assert cell["status"] == "ok"
        assert len(cell["stdout"]) < 10_200
        assert cell["stdout"].startswith("x" * 1000)
        assert "output truncated" in cell["stdout"]
        assert "more" not in cell["stdout"]
        assert nb.evaluate("print('next cell has its own budget')")["stdout"] == "next cell has its own budget\n"


def test_a_cell_past_its_wall_time_is_interrupted_and_the_namespace_kept(private_service):
    private_service.start_supervisor(pool=1, cell_timeout_s=1)
    private_service.start_api()
    with private_service.client().start() as nb:
        nb.evaluate("kept = 42")
        started = time.monotonic()
        cell = nb.evaluate("while True:\n    pass", timeout=20)
        assert 0.9 < time.monotonic() - started < 5
        assert cell["error"]["ename"] == "KeyboardInterrupt"
        assert nb.evaluate("kept")["outputs"][0]["data"]["text/plain"] == "42"


def test_a_cell_that_ignores_the_interrupt_is_killed_and_the_notebook_restarted(private_service):
    private_service.start_supervisor(pool=1, cell_timeout_s=1, interrupt_grace_s=1)
    private_service.start_api()
    with private_service.client().start() as nb:
        code = "import time\nwhile True:\n    try:\n        time.sleep(100)\n    except KeyboardInterrupt:\n        pass"
        cell = nb.evaluate(code, timeout=20)
        assert cell["error"]["ename"] == "EngineDied"
        assert "ignored the interrupt" in cell["error"]["evalue"]
        assert nb.evaluate("1 + 1")["status"] == "ok"
        assert nb.refresh()["restarts"] == 1


def test_the_engines_memory_limit_gives_a_catchable_memory_error(private_service):
    (private_service.config_dir / "engines" / "small.toml").write_text(
        'name = "small"\nclass = "taskkernel.engines.python:PythonEngine"\n'
        '[limits]\nmemory_bytes = 2_000_000_000\n'
    )
    private_service.start_supervisor(pool=1, wait=False)
    private_service.start_api()
    private_service.wait_idle(next(iter(private_service.supervisors)), "small", 1)
    with private_service.client().start("small") as nb:
        cell = nb.evaluate("x = 1\nblob = bytearray(3_000_000_000)")
        assert cell["error"]["ename"] == "MemoryError"
        assert nb.evaluate("x")["status"] == "ok", "the namespace survives"


@pytest.mark.parametrize("ack_emulation", [1, 0])
def test_a_cell_longer_than_the_visibility_timeout_runs_exactly_once(private_service, ack_emulation):
    # with ack emulation, kombu puts a message delivered more than 1 s ago back in its queue,
    # sweeping every second; without it (the default) nothing is ever redelivered
    settings = {"visibility_timeout_s": 1, "unacked_restore_interval_s": 1, "ack_emulation": ack_emulation}
    private_service.start_supervisor(pool=2, **settings)
    private_service.start_api(**settings)
    with private_service.client().start() as nb:
        nb.evaluate("runs = 0")
        cell = nb.evaluate("import time\nruns += 1\ntime.sleep(6)\nruns", timeout=30)
        assert cell["outputs"][0]["data"]["text/plain"] == "1"
        time.sleep(3)  # a redelivered copy would run now, behind the first
        assert nb.evaluate("runs")["outputs"][0]["data"]["text/plain"] == "1"
        inputs = [m for m in nb.feed(timeout=1) if m["header"]["msg_type"] == "execute_input"]
        assert len(inputs) == 3
        if ack_emulation:
            assert nb.refresh()["dropped_deliveries"] >= 1, "kombu did redeliver, and the copy was dropped"
