"""input() and getpass() in the engine: an input_request to the front end, answered through the API.

As ipykernel's raw_input and getpass: when the running cell's request allowed stdin, the prompt
goes out as an `input_request` event and the cell waits for the value, which the reader thread
hands over (`answer`); an interrupt while it waits raises KeyboardInterrupt("Interrupted by
user"); a value of "\\x04" is end of file (EOFError). Without allow_stdin, StdinNotImplementedError,
as ipykernel raises it.
"""

from __future__ import annotations

import builtins
import getpass
import queue
import sys
import threading
from collections.abc import Callable

POLL_S = 0.05  # how often a waiting input() lets the interrupt handler run
EOF_VALUE = "\x04"


class Stdin:
    """The engine's input(): one pending request at a time, answered by `answer`."""

    def __init__(self, request: Callable[[str, bool], None]):
        self._request = request
        self._values: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._waiting = threading.Event()
        self.allowed = False  # set per cell from its request's allow_stdin

    def install(self) -> None:
        builtins.input = self.input
        getpass.getpass = self.getpass

    def input(self, prompt: object = "") -> str:
        if not self.allowed:
            self._refuse("raw_input")
        return self._ask(str(prompt), password=False)

    def getpass(self, prompt: str = "", stream=None) -> str:
        if not self.allowed:
            self._refuse("getpass")
        return self._ask(str(prompt), password=True)

    def answer(self, value: str) -> bool:
        """Hand `value` to the waiting input(); False when none waits."""
        if not self._waiting.is_set():
            return False
        self._values.put(value)
        return True

    @staticmethod
    def _refuse(name: str):
        from IPython.core.error import StdinNotImplementedError

        raise StdinNotImplementedError(f"{name} was called, but this frontend does not support input requests.")

    def _ask(self, prompt: str, password: bool) -> str:
        sys.stdout.flush()
        sys.stderr.flush()
        while not self._values.empty():  # a stale answer to an earlier, interrupted request
            self._values.get_nowait()
        self._waiting.set()
        try:
            self._request(prompt, password)
            while True:
                try:
                    value = self._values.get(timeout=POLL_S)
                    break
                except queue.Empty:
                    continue
        except KeyboardInterrupt:
            raise KeyboardInterrupt("Interrupted by user") from None
        finally:
            self._waiting.clear()
        if value == EOF_VALUE:
            raise EOFError
        return value
