"""The live stream and the replay: one Server-Sent Events response per tab, for all its panels.

Every tab gets its own bounded queue.  Live (:class:`LiveResponse`), the  The viewer's one broker connection
reads each subscription as fast as frames come (``send_nowait``); when a
tab's queue is full the frame is dropped for that tab only and counted, and
the tab is told how many it lost (a ``dropped`` event) before its next frame.
So a slow or stalled tab never holds up the broker connection or the other
tabs.  A replay (:class:`ReplayResponse`) reads the archive by time windows
at the tab's own pace instead.
"""

from __future__ import annotations

import base64
import bisect
import json
import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import attrs
import trio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .._errors import TurbineError
from ..client import Client, Frame, Gap
from ..render import is_numeric, is_text, utf8_text, whole_samples
from .levels import pcm_level

log = logging.getLogger("turbine.web")

#: Events a tab may have waiting before it starts losing frames.
STREAM_QUEUE_EVENTS = 256
#: Characters of waiting events a stream writes at most in one body message.
WRITE_BATCH_CHARS = 64 * 1024
#: Seconds between keep-alive comments on an idle stream (finds closed tabs).
KEEPALIVE_S = 15.0
#: Real seconds between a replay's batches of due frames (and its ``clock`` events).
REPLAY_TICK_S = 0.1
#: Real seconds of archive a replay reads ahead in one fetch per pattern.
REPLAY_READ_AHEAD_S = 0.25
#: Binary frames (images) kept for ``/api/frame/...?seq=`` after a stream announced them.
RECENT_FRAMES = 64
#: Frames per second per channel at most on a stream's ``watch`` patterns: the newest of
#: each channel, as the broker's monitor sends them (a camera wall shows each camera's
#: newest thumbnail, not every one; a tab loads each image it is told about).
WATCH_MAX_RATE = 2.0


def frame_url(source: str, channel: str, seq: int | None = None, at: float | None = None) -> str:
    url = f"/api/frame/{quote(source)}/{quote(channel)}"
    if at is not None:
        return f"{url}?at={at!r}"
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


def event_for(item: Frame | Gap, recent: RecentFrames | None) -> str:
    """One SSE event: numbers as ``values_b64``, PCM audio as its ``level``, text as
    ``text``, anything else as a ``url``: by ``seq`` kept in ``recent``, or by time without it.

    Numbers go as their little-endian float64 bytes in base64 (the page reads them into a
    Float64Array), not as JSON numbers: printing a block of 100 floats as JSON costs about
    a hundred times as much as its base64 (measured: 350 vs 3 us), and that was most of the
    viewer's CPU with 64 DAQ channels streaming."""
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
        body["values_b64"] = base64.b64encode(whole_samples(item.data)).decode()
    elif (level := pcm_level(item.data, ct)) is not None:
        body["level"] = level  # a meter needs the level, not the samples
    elif is_text(ct) and (text := utf8_text(item.data)) is not None:
        body["text"] = text
    elif recent is not None:
        recent.add(item)
        body["url"] = frame_url(item.source, item.channel, item.seq)
    else:  # a replay's frame, found again by its time (a time-range read, not a scan)
        body["url"] = frame_url(item.source, item.channel, at=item.timestamp)
    return f"event: frame\ndata: {json.dumps(body, ensure_ascii=False)}\n\n"


class _EventStream(Response):
    """A ``text/event-stream`` response fed by :meth:`_produce` through a bounded queue.

    The producer tasks run until the tab disconnects; :meth:`_write` sends
    the queue to the tab, with a keep-alive comment when it is idle.
    """

    def __init__(self, queue_events: int) -> None:
        super().__init__(media_type="text/event-stream")
        self._send_event, self._events = trio.open_memory_channel[str](queue_events)
        self.dropped = 0

    def _ready(self) -> dict[str, Any]:
        raise NotImplementedError

    async def _produce(self, nursery: trio.Nursery) -> None:
        raise NotImplementedError

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
            await self._produce(nursery)
            await self._write(send)
            nursery.cancel_scope.cancel()

    async def _write(self, send: Send) -> None:
        reported = 0
        ready = json.dumps(self._ready())
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
            # Whatever else is waiting goes in the same write: one chunk, one send.
            parts, size = [event], len(event)
            while size < WRITE_BATCH_CHARS:
                try:
                    parts.append(more := self._events.receive_nowait())
                except trio.WouldBlock:
                    break
                size += len(more)
            event = "".join(parts)
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


class LiveResponse(_EventStream):
    """Every frame on ``patterns`` as it comes, newest first per channel, and on
    ``watched`` the newest at most :data:`WATCH_MAX_RATE` times a second per channel.

    The frames come from ``feeds``, shared with every other tab on the same
    pattern, and are queued with ``send_nowait``: a tab that cannot keep up
    loses frames (counted, reported in a ``dropped`` event), never the
    broker connection or the other tabs.
    """

    def __init__(
        self,
        feeds: Feeds,
        patterns: Sequence[str],
        watched: Sequence[str] = (),
        queue_events: int = STREAM_QUEUE_EVENTS,
    ) -> None:
        super().__init__(queue_events)
        self._feeds = feeds
        self._patterns = list(patterns)
        self._watched = list(watched)

    def _ready(self) -> dict[str, Any]:
        ready: dict[str, Any] = {"patterns": self._patterns}
        if self._watched:
            ready["watched"] = self._watched
        return ready

    def _keys(self) -> list[tuple[str, bool]]:
        return [(p, False) for p in self._patterns] + [(p, True) for p in self._watched]

    def offer(self, event: str) -> None:
        """Queue ``event`` for this tab, or count it lost if the tab is that far behind."""
        try:
            self._send_event.send_nowait(event)
        except trio.WouldBlock:
            self.dropped += 1

    async def _produce(self, nursery: trio.Nursery) -> None:
        for key in self._keys():
            await self._feeds.join(key, self)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            for key in self._keys():
                self._feeds.leave(key, self)


class _Feed:
    def __init__(self) -> None:
        self.tabs: set[LiveResponse] = set()
        self.scope = trio.CancelScope()


class Feeds:
    """One broker subscription per pattern, shared by every tab streaming it.

    Four tabs on the same panels cost the broker one subscription, not four,
    and each frame is made into an event once.  A feed is keyed by its pattern
    and whether it is watched: every frame, or a monitor of the newest at
    most :data:`WATCH_MAX_RATE` a second per channel.  The first tab on a
    feed starts its subscription (newest frame of each channel first); a
    later one is sent the newest frames by a fetch as it joins.  The
    subscription ends with its last tab.  Its tasks run in ``nursery`` (the viewer's).
    """

    def __init__(self, client: Client, recent: RecentFrames, nursery: trio.Nursery) -> None:
        self._client = client
        self._recent = recent
        self._nursery = nursery
        self._feeds: dict[tuple[str, bool], _Feed] = {}

    async def join(self, key: tuple[str, bool], tab: LiveResponse) -> None:
        """Add ``tab`` to the feed of ``key`` (pattern, watched), started if new."""
        feed = self._feeds.get(key)
        if feed is None:
            feed = self._feeds[key] = _Feed()
            self._nursery.start_soon(self._run, key, feed)
        else:
            for frame in await self._client.fetch(key[0], newest=1):
                tab.offer(event_for(frame, self._recent))
        feed.tabs.add(tab)

    def leave(self, key: tuple[str, bool], tab: LiveResponse) -> None:
        feed = self._feeds.get(key)
        if feed is None:
            return
        feed.tabs.discard(tab)
        if not feed.tabs:
            feed.scope.cancel()
            del self._feeds[key]

    async def _run(self, key: tuple[str, bool], feed: _Feed) -> None:
        pattern, watched = key
        last: dict[str, int] = {}  # each channel's newest number sent
        with feed.scope:
            try:
                if watched:
                    subscription = self._client.monitor(pattern, max_rate=WATCH_MAX_RATE)
                else:
                    subscription = self._client.subscribe(pattern, start="newest")
                async with subscription as sub:
                    async for item in sub:
                        if isinstance(item, Frame):
                            if item.seq <= last.get(item.path, 0):
                                self._offer(feed, renumbered_event(item))
                            last[item.path] = item.seq
                        self._offer(feed, event_for(item, self._recent))
            except TurbineError as exc:  # e.g. the user's read right was revoked
                log.warning("live stream of %s ended: %s", pattern, exc)
            if self._feeds.get(key) is feed:
                del self._feeds[key]

    @staticmethod
    def _offer(feed: _Feed, event: str) -> None:
        for tab in feed.tabs:
            tab.offer(event)


def renumbered_event(frame: Frame) -> str:
    """The event telling a tab that ``frame``'s channel numbers from 1 again (its broker
    restarted without a data dir), before that frame: what it showed by number is old."""
    body = {"source": frame.source, "channel": frame.channel}
    return f"event: renumbered\ndata: {json.dumps(body)}\n\n"


@attrs.frozen
class PlaybackClock:
    """Archive time against the real clock: ``start`` plays at ``speed`` from real time ``t0``."""

    start: float
    speed: float
    t0: float

    def at(self, now: float) -> float:
        """The archive time shown at real time ``now``."""
        return self.start + (now - self.t0) * self.speed


class ReplayResponse(_EventStream):
    """The frames on ``patterns`` from archive time ``start``, paced at ``speed`` times real time.

    The broker is read ahead in windows of :data:`REPLAY_READ_AHEAD_S` real
    seconds (times the speed) (``fetch`` by time range, which reads the disk archive too).
    Every :data:`REPLAY_TICK_S` the tab gets the frames now due and a
    ``clock`` event with the archive time; the replay waits for a slow tab
    (nothing is dropped) and ends with an ``end`` event when it reaches the
    newest frame the broker held when it began, so the page can go live.
    """

    def __init__(
        self,
        client: Client,
        patterns: Sequence[str],
        start: float,
        speed: float,
        queue_events: int = STREAM_QUEUE_EVENTS,
    ) -> None:
        super().__init__(queue_events)
        self._client = client
        self._patterns = list(patterns)
        self._start = start
        self._speed = speed

    def _ready(self) -> dict[str, Any]:
        return {"patterns": self._patterns, "from": self._start, "speed": self._speed}

    async def _produce(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._replay)

    async def _replay(self) -> None:
        end = max(
            [f.timestamp for p in self._patterns for f in await self._client.fetch(p, newest=1)],
            default=self._start,
        )
        clock = PlaybackClock(self._start, self._speed, trio.current_time())
        due: list[Frame] = []
        read_to = self._start
        while True:
            shown = min(clock.at(trio.current_time()), end)
            if read_to <= min(shown + REPLAY_READ_AHEAD_S * self._speed, end):
                span = max(REPLAY_READ_AHEAD_S * self._speed, REPLAY_TICK_S)
                for pattern in self._patterns:
                    due += await self._client.fetch(pattern, start=read_to, duration=span)
                due.sort(key=lambda f: f.timestamp)
                read_to += span
            n = bisect.bisect_right(due, shown, key=lambda f: f.timestamp)
            for frame in due[:n]:
                await self._send_event.send(event_for(frame, None))
            del due[:n]
            await self._send_event.send(f"event: clock\ndata: {json.dumps({'t': shown})}\n\n")
            if shown >= end:
                await self._send_event.send(f"event: end\ndata: {json.dumps({'t': end})}\n\n")
                await trio.sleep_forever()
            await trio.sleep(REPLAY_TICK_S)
