"""GET /api/notebooks/<id>/feed: the notebook's feed as Server-Sent Events, replayable.

Each event's id is the message's position in the notebook's Redis stream and its data the
Jupyter-shaped message. A client that reconnects with Last-Event-ID (or ?after=) gets what it
missed and then the live feed, with no gap and no duplicate, because both come from the stream.
"""

from __future__ import annotations

import json
import re
import time

from flask import Blueprint, Response, current_app, request, stream_with_context

from taskkernel import feed
from taskkernel.deadlines import set_deadline
from taskkernel.exceptions import InvalidField, TooManySubscribers

blueprint = Blueprint("feed", __name__)

STREAM_ID = re.compile(r"^\d+-\d+$")
KEEPALIVE_S = 15.0


@blueprint.get("/notebooks/<hexid:notebook_id>/feed")
def notebook_feed(notebook_id: str):
    svc = current_app.extensions["taskkernel"]
    svc.store.get(notebook_id)
    after = request.headers.get("Last-Event-ID") or request.args.get("after")
    if after is None:
        after = "$" if request.args.get("replay", "1") == "0" else "0-0"
    if after != "$" and not STREAM_ID.match(after):
        raise InvalidField("Last-Event-ID / after must be a stream position such as 1700000000000-0",
                           field="after")
    if after == "$":
        after = feed.last_position(svc.redis, notebook_id)
    try:
        limit_s = float(request.args.get("timeout", "0"))
    except ValueError:
        raise InvalidField("timeout must be a number of seconds", field="timeout") from None

    if not svc.feed_slots.acquire(blocking=False):
        raise TooManySubscribers(f"this API process already serves {svc.settings.feed_subscriber_limit} "
                                 "feed streams; retry later or subscribe to Redis directly")

    def events():
        set_deadline(None)  # a stream lasts as long as its follower wants
        try:
            yield from _events()
        finally:
            svc.feed_slots.release()

    def _events():
        position = after
        started = last_sent = time.monotonic()
        yield ": taskkernel feed\n\n"
        while not svc.stopping.is_set():  # this API is stopping: the follower resumes on the next one
            if limit_s and time.monotonic() - started > limit_s:
                return
            for position, message in feed.read_stream(svc.redis, notebook_id, position, block_ms=1000):
                last_sent = time.monotonic()
                yield f"id: {position}\nevent: message\ndata: {json.dumps(message, separators=(',', ':'))}\n\n"
            if time.monotonic() - last_sent > KEEPALIVE_S:
                last_sent = time.monotonic()
                yield ": keepalive\n\n"
            if not svc.store.exists(notebook_id):
                yield "event: end\ndata: {}\n\n"
                return

    return Response(stream_with_context(events()), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
