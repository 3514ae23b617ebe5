"""taskkernel driven as its users drive it: raw HTTP with keep-alive, the Python client, the Redis feed."""

from __future__ import annotations

import http.client
import json
import time

import redis

from taskkernel import keys

EVALUATE_BODY = json.dumps({"code": "1+1", "wait": True}).encode()
HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


class HttpEvaluator:
    """One keep-alive HTTP connection to the API that posts `evaluate` with `wait`."""

    def __init__(self, port: int, timeout_s: float = 60.0):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)

    def _post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """POST on the kept-alive connection; reconnect once if the server had closed it (keep-alive
        expired while other systems were measured)."""
        for attempt in (1, 2):
            try:
                self.conn.request("POST", path, body=body, headers=HEADERS)
                response = self.conn.getresponse()
                return response.status, response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.conn.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def evaluate(self, notebook_id: str, body: bytes = EVALUATE_BODY) -> dict:
        """POST the cell and return the finished cell; raises if it did not finish with status ok."""
        status, data = self._post(f"/api/notebooks/{notebook_id}/evaluate", body)
        if status != 200:
            raise RuntimeError(f"evaluate answered {status}: {data[:200]!r}")
        cell = json.loads(data)
        if cell["status"] != "ok":
            raise RuntimeError(f"cell ended {cell['status']}: {cell.get('error')}")
        return cell

    def submit(self, notebook_id: str, code: str) -> dict:
        """Queue a cell without waiting (202)."""
        status, data = self._post(f"/api/notebooks/{notebook_id}/evaluate", json.dumps({"code": code}).encode())
        if status != 202:
            raise RuntimeError(f"evaluate answered {status}: {data[:200]!r}")
        return json.loads(data)

    def close(self) -> None:
        self.conn.close()


def result_text(cell: dict) -> str | None:
    for output in cell.get("outputs", []):
        if output["output_type"] == "execute_result":
            return output["data"].get("text/plain")
    return None


class FeedStreamResult:
    def __init__(self, seconds: float, lines: int, complete: bool):
        self.seconds, self.lines, self.complete = seconds, lines, complete


def stream_lines(redis_url: str, api_port: int, notebook_id: str, n_lines: int,
                 timeout_s: float = 120.0) -> FeedStreamResult:
    """Run a cell printing `n_lines` lines; time until a pub/sub subscriber of the feed holds all of them.

    The subscriber is subscribed before the cell is sent; the clock starts just before the POST.
    `complete` is True when the text received is exactly the text printed, in order.
    """
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    evaluator = HttpEvaluator(api_port)
    try:
        pubsub.subscribe(keys.feed_channel(notebook_id))
        while True:  # the subscription is active once its confirmation is read
            message = pubsub.get_message(timeout=5)
            if message and message["type"] == "subscribe":
                break
        chunks: list[str] = []
        lines = 0
        done_at = None
        replied = False
        start = time.perf_counter()
        evaluator.submit(notebook_id, f"for i in range({n_lines}):\n    print(i)")
        deadline = time.monotonic() + timeout_s
        while not replied and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=1.0)
            if not message or message["type"] != "message":
                continue
            msg = json.loads(message["data"])
            msg_type = msg["header"]["msg_type"]
            if msg_type == "stream" and msg["content"]["name"] == "stdout":
                chunks.append(msg["content"]["text"])
                lines += msg["content"]["text"].count("\n")
                if done_at is None and lines >= n_lines:
                    done_at = time.perf_counter()
            elif msg_type == "execute_reply":
                replied = True
        expected = "".join(f"{i}\n" for i in range(n_lines))
        complete = "".join(chunks) == expected
        seconds = (done_at - start) if done_at is not None else float("nan")
        return FeedStreamResult(seconds, lines, complete)
    finally:
        pubsub.close()
        client.close()
        evaluator.close()
