"""The floors under taskkernel's round trip: the HTTP stack alone, and Redis alone."""

from __future__ import annotations

import http.client
import time

import redis

from bench.taskkernel_side import EVALUATE_BODY, HEADERS


class EchoClient:
    """One keep-alive connection to the Flask echo, posting the same body as an evaluate."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(self) -> None:
        for attempt in (1, 2):  # reconnect once if the server's keep-alive expired between batches
            try:
                self.conn.request("POST", "/echo", body=EVALUATE_BODY, headers=HEADERS)
                response = self.conn.getresponse()
                response.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.conn.close()
                if attempt == 2:
                    raise
        if response.status != 200:
            raise RuntimeError(f"echo answered {response.status}")

    def close(self) -> None:
        self.conn.close()


class RedisFloor:
    """PING, and PUBLISH -> a subscriber's receipt, on the Redis taskkernel uses."""

    CHANNEL = "bench:floor"

    def __init__(self, url: str):
        self.client = redis.Redis.from_url(url)
        self.subscriber = redis.Redis.from_url(url).pubsub(ignore_subscribe_messages=True)
        self.subscriber.subscribe(self.CHANNEL)
        deadline = time.monotonic() + 5
        while self.client.pubsub_numsub(self.CHANNEL)[0][1] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)

    def ping(self) -> None:
        self.client.ping()

    def publish_roundtrip(self) -> None:
        """Publish one message and return once the subscriber holds it."""
        self.client.publish(self.CHANNEL, b"x")
        deadline = time.monotonic() + 5
        while self.subscriber.get_message(timeout=5) is None:
            if time.monotonic() > deadline:
                raise TimeoutError("the subscriber did not receive the message within 5 s")

    def close(self) -> None:
        self.subscriber.close()
        self.client.close()
