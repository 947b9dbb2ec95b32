"""The live stream: one Server-Sent Events response per tab, for all its panels.

Every tab gets its own bounded queue.  The viewer's one broker connection
reads each subscription as fast as frames come (``send_nowait``); when a
tab's queue is full the frame is dropped for that tab only and counted, and
the tab is told how many it lost (a ``dropped`` event) before its next frame.
So a slow or stalled tab never holds up the broker connection or the other
tabs.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import trio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..client import Client, Frame, Gap
from ..render import is_numeric, is_text, numbers

#: Events a tab may have waiting before it starts losing frames.
STREAM_QUEUE_EVENTS = 256
#: Seconds between keep-alive comments on an idle stream (finds closed tabs).
KEEPALIVE_S = 15.0
#: Binary frames (images) kept for ``/api/frame/...?seq=`` after a stream announced them.
RECENT_FRAMES = 64


def frame_url(source: str, channel: str, seq: int | None = None) -> str:
    url = f"/api/frame/{quote(source)}/{quote(channel)}"
    return url if seq is None else f"{url}?seq={seq}"


class RecentFrames:
    """The last few binary frames the streams announced, by path and seq (bounded LRU)."""

    def __init__(self, size: int = RECENT_FRAMES) -> None:
        self._size = size
        self._frames: OrderedDict[tuple[str, int], Frame] = OrderedDict()

    def add(self, frame: Frame) -> None:
        self._frames[(frame.path, frame.seq)] = frame
        self._frames.move_to_end((frame.path, frame.seq))
        while len(self._frames) > self._size:
            self._frames.popitem(last=False)

    def get(self, path: str, seq: int) -> Frame | None:
        return self._frames.get((path, seq))


def event_for(item: Frame | Gap, recent: RecentFrames) -> str:
    """One SSE event: numbers as ``values``, text as ``text``, anything else as a ``url``."""
    if isinstance(item, Gap):
        body: dict[str, Any] = {
            "source": item.source,
            "channel": item.channel,
            "missed": item.missed,
            "next_seq": item.next_seq,
        }
        return f"event: gap\ndata: {json.dumps(body)}\n\n"
    ct = item.content_type
    body = {
        "source": item.source,
        "channel": item.channel,
        "seq": item.seq,
        "timestamp": item.timestamp,
        "content_type": ct,
        "bytes": len(item.data),
    }
    if is_numeric(ct):
        body["values"] = numbers(item.data)
    elif is_text(ct) and (text := _text(item.data)) is not None:
        body["text"] = text
    else:
        recent.add(item)
        body["url"] = frame_url(item.source, item.channel, item.seq)
    return f"event: frame\ndata: {json.dumps(body, ensure_ascii=False)}\n\n"


def _text(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


class LiveResponse(Response):
    """An ``text/event-stream`` of every frame on ``patterns``, newest first per channel."""

    def __init__(
        self,
        client: Client,
        patterns: Sequence[str],
        recent: RecentFrames,
        queue_events: int = STREAM_QUEUE_EVENTS,
    ) -> None:
        super().__init__(media_type="text/event-stream")
        self._client = client
        self._patterns = list(patterns)
        self._recent = recent
        self._send_event, self._events = trio.open_memory_channel[str](queue_events)
        self.dropped = 0

    async def _pump(self, pattern: str) -> None:
        async with self._client.subscribe(pattern, start="newest") as sub:
            async for item in sub:
                try:
                    self._send_event.send_nowait(event_for(item, self._recent))
                except trio.WouldBlock:
                    self.dropped += 1

    async def _until_disconnect(self, receive: Receive, scope: trio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._until_disconnect, receive, nursery.cancel_scope)
            for pattern in self._patterns:
                nursery.start_soon(self._pump, pattern)
            await self._write(send)
            nursery.cancel_scope.cancel()

    async def _write(self, send: Send) -> None:
        reported = 0
        ready = json.dumps({"patterns": self._patterns})
        await send(
            {
                "type": "http.response.body",
                "body": f"event: ready\ndata: {ready}\n\n".encode(),
                "more_body": True,
            }
        )
        while True:
            event = ": keepalive\n\n"
            with trio.move_on_after(KEEPALIVE_S):
                event = await self._events.receive()
            if self.dropped != reported:
                lost = json.dumps({"dropped": self.dropped - reported, "total": self.dropped})
                event = f"event: dropped\ndata: {lost}\n\n{event}"
                reported = self.dropped
            try:
                await send(
                    {"type": "http.response.body", "body": event.encode(), "more_body": True}
                )
            except OSError:
                return
