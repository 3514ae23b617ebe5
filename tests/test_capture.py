"""The output path's first step (workers/capture.py): what an engine writes to its stdout and stderr
pipes reaches the running cell's sink whole and in order, and the worker's log between cells.

Real pipes and an in-memory sink; no engine, no Redis.
"""

import os

import pytest

from taskkernel.workers.capture import OutputCapture
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(30)


class Pipes:
    """An engine's two output pipes and the worker's log, as the capture sees them."""

    def __init__(self):
        self.out_r, self.out_w = os.pipe()
        self.err_r, self.err_w = os.pipe()
        self.log_r, self.log_w = os.pipe()
        os.set_blocking(self.log_r, False)
        self.made: OutputCapture | None = None

    def capture(self, **options) -> OutputCapture:
        self.made = OutputCapture({"stdout": self.out_r, "stderr": self.err_r}, log_fd=self.log_w, **options)
        return self.made

    def logged(self) -> bytes:
        try:
            return os.read(self.log_r, 1 << 20)
        except BlockingIOError:
            return b""

    def close_stdout(self):
        os.close(self.out_w)
        self.out_w = -1

    def close(self):
        """Close the write ends; the capture then reads end-of-file and closes the read ends itself."""
        for fd in (self.out_w, self.err_w):
            if fd >= 0:
                os.close(fd)
        if self.made is not None:
            self.made.flush()
        else:
            os.close(self.out_r)
            os.close(self.err_r)
        os.close(self.log_r)
        os.close(self.log_w)


@pytest.fixture
def pipes():
    made = Pipes()
    try:
        yield made
    finally:
        made.close()


def test_a_cells_output_is_complete_and_in_order_when_it_ends(pipes):
    capture, got = pipes.capture(), []
    capture.begin(lambda name, text: got.append((name, text)))
    os.write(pipes.out_w, b"one\n")
    os.write(pipes.err_w, b"warn\n")
    os.write(pipes.out_w, b"two\n")
    capture.end()  # no pump thread: end() alone drains what the pipes hold
    assert "".join(t for n, t in got if n == "stdout") == "one\ntwo\n"
    assert "".join(t for n, t in got if n == "stderr") == "warn\n"
    assert pipes.logged() == b"", "a cell's output is the cell's, not the worker's log"


def test_output_between_cells_goes_to_the_workers_log_not_to_a_cell(pipes):
    capture, got = pipes.capture(), []
    os.write(pipes.out_w, b"before the cell\n")
    capture.begin(lambda name, text: got.append((name, text)))  # what came before goes to the log first
    os.write(pipes.out_w, b"in the cell\n")
    capture.end()
    os.write(pipes.out_w, b"after the cell\n")
    capture.flush()
    assert got == [("stdout", "in the cell\n")]
    assert pipes.logged() == b"before the cell\nafter the cell\n"


def test_a_character_split_across_two_writes_arrives_whole(pipes):
    capture, got = pipes.capture(), []
    capture.begin(lambda name, text: got.append(text))
    check = "\u2713".encode()  # three bytes
    os.write(pipes.out_w, b"ok " + check[:1])
    capture.flush()
    os.write(pipes.out_w, check[1:] + b"\n")
    capture.end()
    assert "".join(got) == "ok \u2713\n"
    assert "\ufffd" not in "".join(got)


def test_the_pump_streams_a_running_cells_output_without_waiting_for_its_end(pipes):
    capture, got = pipes.capture(interval_s=0.01), []
    capture.start()
    capture.begin(lambda name, text: got.append(text))
    os.write(pipes.out_w, b"live\n")
    wait_for(lambda: "".join(got) == "live\n", 10, "the pump to deliver the output")
    capture.end()
    assert capture.alive()


def test_a_failing_sink_loses_nothing_the_text_goes_to_the_log(pipes):
    def broken(name, text):
        raise RuntimeError("sink down")

    capture = pipes.capture()
    capture.begin(broken)
    os.write(pipes.err_w, b"kept\n")
    capture.end()
    logged = pipes.logged()
    assert b"kept\n" in logged and b"sink down" in logged


def test_a_closed_pipe_is_let_go_and_the_other_still_read(pipes):
    capture, got = pipes.capture(), []
    capture.begin(lambda name, text: got.append((name, text)))
    os.write(pipes.out_w, b"last words\n")
    pipes.close_stdout()  # the engine (and whatever it started) is gone from stdout
    capture.flush()
    os.write(pipes.err_w, b"still here\n")
    capture.end()
    assert got == [("stdout", "last words\n"), ("stderr", "still here\n")]
