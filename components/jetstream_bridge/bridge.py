"""Export turbine channels to a JetStream stream, and import them into another turbine.

:func:`run_export` follows every channel of the sources matching its
patterns on one broker (present and future, as a mirror does) and publishes
each frame to ``turbine.SOURCE.CHANNEL`` (``wire.py``), with acknowledgement:
a batch is published pipelined, and whatever JetStream has not acknowledged
within ``ack_timeout`` is published again (its ``Nats-Msg-Id`` makes a
second copy of one that did arrive a no-op).  After a restart it continues
after the stream's newest frame of that channel.

:func:`run_import` follows every subject of the stream whose source matches
its patterns and puts the frames into a *mirrored source* on its broker
(``docs/protocol.rst``, "Mirrored sources"): frame N on the exporting broker
is frame N here, with its timestamp, writer and content type, and the
exporting broker's gaps are the same gaps.  It starts each subject at the
stream position of the target's next number (a binary search over the
stream), so after a restart of either side nothing is lost that the stream
holds and nothing is put twice.

nats-py is asyncio-only and the turbine client is trio; both run in one
event loop through trio-asyncio, so a frame goes from a subscription to a
publish without a thread or a second process in between.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import attrs
import nats
import nats.errors
import nats.js.errors
import trio
import trio_asyncio
from nats.js.api import ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from turbine import ConnectionFailed, RequestFailed, TurbineError
from turbine._errors import leaves
from turbine.client import Client, Frame, open_client
from turbine.mirror import ChannelWatch, copy_puts, origin_of, prefixed
from turbine.names import source_pattern
from turbine.origin import Origin

from .wire import (
    SUBJECT_ROOT,
    BridgeError,
    Chain,
    Exported,
    exported_seq,
    headers,
    split_subject,
    subject,
)

log = logging.getLogger("turbine.jetstream_bridge")

aio = trio_asyncio.aio_as_trio


@attrs.frozen
class BridgeConfig:
    """One bridge: a turbine broker, a NATS cluster, a stream, what to carry."""

    turbine: str  # HOST:PORT
    nats: tuple[str, ...]  # nats://HOST:PORT of one or more cluster nodes
    stream: str = "TURBINE"
    patterns: tuple[str, ...] = ("*",)
    #: Export: the replicas of the stream it creates when there is none.
    replicas: int = 3
    #: Import: put after the type in each copy's name (as ``turbine mirror --prefix``).
    prefix: str = ""
    poll: float = 1.0  # look for new sources / subjects this often
    retry: float = 1.0  # wait this long before connecting or publishing again
    ack_timeout: float = 5.0  # a publish not acknowledged by then is sent again
    batch: int = 1000  # frames per pipelined publish / most an import holds unput
    #: Import: frames held waiting for a predecessor before giving up on it,
    #: and how long the stream must stay quiet before that.
    hold_frames: int = 10_000
    hold_s: float = 15.0
    name: str = "jetstream-bridge"
    token: str | None = attrs.field(default=None, repr=False)


@attrs.define
class BridgeStats:
    sessions: int = 0
    frames: int = 0  # published and acknowledged (export) / put (import)
    republished: int = 0  # export: frames sent again after no acknowledgement
    given_up: int = 0  # import: times a missing predecessor was given up on
    skipped: dict[str, str] = attrs.field(factory=dict)  # what is not carried, and why


Report = Callable[[str], None]


async def run_export(
    config: BridgeConfig,
    *,
    stats: BridgeStats | None = None,
    report: Report = log.info,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Export until cancelled; ``task_status.started()`` once the stream is there.

    A lost broker or cluster ends the session; it starts again after
    ``config.retry`` s and continues after the stream's newest frames.
    """
    await _run(_Export, config, stats, report, task_status)


async def run_import(
    config: BridgeConfig,
    *,
    stats: BridgeStats | None = None,
    report: Report = log.info,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Import until cancelled; ``task_status.started()`` once the stream is found."""
    await _run(_Import, config, stats, report, task_status)


async def _run(
    kind: type[_Session],
    config: BridgeConfig,
    stats: BridgeStats | None,
    report: Report,
    task_status: trio.TaskStatus[None],
) -> None:
    stats = stats if stats is not None else BridgeStats()
    status: list[trio.TaskStatus[None]] = [task_status]

    def started() -> None:
        if status:
            status.pop().started()

    async with trio_asyncio.open_loop():
        while True:
            try:
                async with open_client(config.turbine, name=config.name, token=config.token) as tb:
                    nc = await aio(_connect)(config, report)
                    try:
                        stats.sessions += 1
                        await kind(config, tb, nc, stats, report).run(started)
                    finally:
                        with trio.CancelScope(shield=True):
                            await aio(nc.close)()
            except* (ConnectionFailed, OSError, nats.errors.Error) as group:
                report(f"bridge: {leaves(group)[0]!r}; connecting again in {config.retry:g} s")
            except* TurbineError as group:
                report(f"bridge: {leaves(group)[0]}; starting again in {config.retry:g} s")
            await trio.sleep(config.retry)


async def _connect(config: BridgeConfig, report: Report) -> nats.NATS:
    async def error(exc: Exception) -> None:
        log.debug("nats: %r", exc)

    async def disconnected() -> None:
        report("bridge: lost the NATS server; connecting to another")

    return await nats.connect(
        servers=list(config.nats),
        name=config.name,
        connect_timeout=2,
        reconnect_time_wait=0.2,
        max_reconnect_attempts=-1,
        error_cb=error,
        disconnected_cb=disconnected,
    )


class _Session:
    def __init__(
        self, config: BridgeConfig, tb: Client, nc: nats.NATS, stats: BridgeStats, report: Report
    ) -> None:
        self.config = config
        self.tb = tb
        self.nc = nc
        self.js = nc.jetstream(timeout=config.ack_timeout)
        self.stats = stats
        self.report = report

    async def run(self, started: Callable[[], None]) -> None:
        raise NotImplementedError

    def skip(self, what: str, why: str) -> None:
        if self.stats.skipped.get(what) != why:
            self.report(f"bridge: not carrying {what}: {why}")
        self.stats.skipped[what] = why


class _Export(_Session):
    async def run(self, started: Callable[[], None]) -> None:
        await aio(self._ensure_stream)()
        broker = (await self.tb.status())["identity"]
        watch = ChannelWatch(self.config.patterns)
        async with trio.open_nursery() as nursery:
            while True:
                for info, channels in watch.new(await self.tb.list_sources("*")):
                    origin = origin_of(info, broker)
                    watch.follow(info.name, channels)
                    for ch in channels:
                        try:
                            subj = subject(info.name, ch)
                        except BridgeError as exc:
                            self.skip(f"{info.name}/{ch}", str(exc))
                            continue
                        nursery.start_soon(self.export_channel, info.name, ch, subj, origin)
                started()
                await trio.sleep(self.config.poll)

    async def _ensure_stream(self) -> None:
        try:
            await self.js.stream_info(self.config.stream)
        except nats.js.errors.NotFoundError:
            await self.js.add_stream(
                StreamConfig(
                    name=self.config.stream,
                    subjects=[f"{SUBJECT_ROOT}.>"],
                    num_replicas=self.config.replicas,
                    storage=StorageType.FILE,
                    duplicate_window=120.0,
                )
            )
            self.report(
                f"bridge: created stream {self.config.stream} ({self.config.replicas} replicas)"
            )

    async def export_channel(self, source: str, channel: str, subj: str, origin: Origin) -> None:
        prev = await aio(self._last_exported)(subj, origin)
        start: int | str = prev + 1 if prev else "oldest"
        self.report(f"bridge: exporting {source}/{channel} to {subj} from {start}")
        async with self.tb.subscribe(f"{source}/{channel}", start=start) as sub:
            while True:
                frames = [f for f in await sub.receive_batch() if type(f) is Frame]
                for i in range(0, len(frames), self.config.batch):
                    msgs = []
                    for f in frames[i : i + self.config.batch]:
                        hdrs = headers(origin, f, prev)
                        if len(f.data) + _header_bytes(hdrs) > self.nc.max_payload:
                            why = f"larger than the servers' max_payload ({self.nc.max_payload} B)"
                            self.skip(f"{source}/{channel} #{f.seq}", why)
                            continue  # not in the chain: importers see a gap at once
                        msgs.append((hdrs, bytes(f.data)))
                        prev = f.seq
                    await aio(self._publish)(subj, msgs)
                    self.stats.frames += len(msgs)

    async def _last_exported(self, subj: str, origin: Origin) -> int:
        """The number of the stream's newest frame of ``subj`` from ``origin``; 0 if none."""
        try:
            msg = await self.js.get_last_msg(self.config.stream, subj)
        except nats.js.errors.NotFoundError:
            return 0
        last = Exported.from_message(subj, msg.headers, msg.data or b"")
        same = (last.origin.broker, last.origin.source) == (origin.broker, origin.source)
        return last.seq if same else 0

    async def _publish(self, subj: str, msgs: list[tuple[dict[str, str], bytes]]) -> None:
        """Publish ``msgs`` in order; return once JetStream acknowledged every one."""
        while msgs:
            futures: list[asyncio.Future[Any]] = []
            try:
                for hdrs, data in msgs:
                    futures.append(await self.js.publish_async(subj, data, headers=dict(hdrs)))
            except nats.errors.Error as exc:
                log.debug("publish: %r", exc)
            if futures:
                await _acknowledged(futures, self.config.ack_timeout)
            first = next(
                (i for i, f in enumerate(futures) if not f.done() or f.exception()), len(futures)
            )
            for f in futures:
                f.cancel()
            if first == len(msgs):
                return
            self.stats.republished += len(msgs) - first
            msgs = msgs[first:]
            await asyncio.sleep(self.config.retry)


class _Import(_Session):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.matchers = [source_pattern(p) for p in self.config.patterns]
        self.following: set[str] = set()  # subjects
        self.copies: dict[str, tuple[Origin, dict[str, int]]] = {}  # source -> its copy

    async def run(self, started: Callable[[], None]) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    subjects = await aio(self._subjects)()
                except nats.js.errors.NotFoundError:
                    self.skip(self.config.stream, "no such stream yet")
                    subjects = []
                else:
                    started()
                await self.discover(nursery, subjects)
                await trio.sleep(self.config.poll)
                await self.tb.flush()  # a refused put is raised here

    async def discover(self, nursery: trio.Nursery, subjects: list[str]) -> None:
        """Start importing every subject of a matching source not followed yet."""
        new: dict[str, dict[str, Exported]] = {}  # source -> channel -> its newest frame
        for subj in subjects:
            if subj in self.following:
                continue
            try:
                source, channel = split_subject(subj)
            except BridgeError as exc:
                self.following.add(subj)
                self.skip(subj, str(exc))
                continue
            if not any(m.match_source(source) for m in self.matchers):
                self.following.add(subj)
                continue
            msg = await aio(self.js.get_last_msg)(self.config.stream, subj)
            newest = Exported.from_message(subj, msg.headers, msg.data or b"")
            new.setdefault(source, {})[channel] = newest
        for source, channels in new.items():
            if source not in self.copies and not await self.open_copy(source, channels):
                continue  # refused: tried again at the next poll
            origin, nexts = self.copies[source]
            for channel, newest in channels.items():
                if (newest.origin.broker, newest.origin.source) != (origin.broker, origin.source):
                    self.skip(newest.subject, f"not from {origin.describe()}, as its copy is")
                    continue
                self.following.add(newest.subject)
                nursery.start_soon(self.import_channel, source, channel, nexts.get(channel, 1))

    async def open_copy(self, source: str, channels: dict[str, Exported]) -> bool:
        """Open the mirrored source for ``source``'s subjects; False if the broker refuses."""
        origin = next(iter(channels.values())).origin
        target = prefixed(source, self.config.prefix)
        types = {ch: e.content_type for ch, e in channels.items() if e.origin == origin}
        try:
            nexts = await self.tb.open_mirror(target, types, origin)
        except RequestFailed as exc:
            if exc.code in ("held", "mirror", "loop", "name", "memory", "limits", "access"):
                self.skip(source, str(exc))
                return False
            raise
        self.copies[source] = (origin, nexts)
        return True

    async def _subjects(self) -> list[str]:
        info = await self.js.stream_info(self.config.stream, subjects_filter=f"{SUBJECT_ROOT}.>")
        return sorted(info.state.subjects or {})

    async def import_channel(self, source: str, channel: str, next_seq: int) -> None:
        """Put ``source/channel``'s frames from ``next_seq`` on as the stream gets them."""
        subj = subject(source, channel)
        origin = self.copies[source][0]
        target = prefixed(source, self.config.prefix)
        chain = Chain(next_seq - 1, self.config.hold_frames)
        start = await aio(self._find_start)(subj, next_seq)
        self.report(f"bridge: importing {subj} into {target}/{channel} from {next_seq}")
        inbox = _Inbox(self.config.batch)
        sub = await aio(self._follow)(subj, start, inbox)
        quiet_since = trio.current_time()
        try:
            while True:
                msgs = await aio(inbox.take)(1.0)
                if not msgs:
                    if chain.held and trio.current_time() - quiet_since >= self.config.hold_s:
                        self.report(f"bridge: {subj}: gave up waiting for a frame")
                        await self._put(target, channel, chain.release())
                        self.stats.given_up += 1
                    continue
                quiet_since = trio.current_time()
                ready = []
                for m in msgs:
                    e = Exported.from_message(m.subject, m.headers, m.data)
                    if (e.origin.broker, e.origin.source) != (origin.broker, origin.source):
                        continue  # another broker's source of that name
                    given_up = chain.given_up
                    ready.extend(chain.add(e))
                    self.stats.given_up += chain.given_up - given_up
                await self._put(target, channel, ready)
        finally:
            with trio.CancelScope(shield=True):
                await aio(_quietly(sub.unsubscribe))()

    async def _follow(self, subj: str, start: int, inbox: _Inbox) -> Any:
        """An ordered consumer of ``subj`` from stream position ``start`` delivering into ``inbox``.

        Ordered: nats-py makes a new consumer after the last message it
        delivered whenever one is missed or the heartbeats stop (its node
        failed), so each message comes once and in stream order.  Messages
        go to a callback, not through ``fetch`` (which makes an asyncio task
        per message: eight steps of trio-asyncio's loop per frame).
        """
        while True:
            try:
                return await self.js.subscribe(
                    subj,
                    stream=self.config.stream,
                    cb=inbox.put,
                    ordered_consumer=True,
                    idle_heartbeat=1.0,
                    deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                    config=ConsumerConfig(opt_start_seq=start, inactive_threshold=30.0),
                )
            except (nats.errors.Error, nats.js.errors.Error) as exc:
                log.debug("consumer on %s: %r", subj, exc)
                await asyncio.sleep(self.config.retry)

    async def _find_start(self, subj: str, want: int) -> int:
        """The stream position from which ``subj``'s frames number ``want`` and up."""
        state = (await self.js.stream_info(self.config.stream)).state
        lo, hi = state.first_seq, state.last_seq + 1
        while lo < hi:
            mid = (lo + hi) // 2
            try:
                msg = await self.js.get_msg(self.config.stream, seq=mid, subject=subj, next=True)
            except nats.js.errors.NotFoundError:
                hi = mid
                continue
            if exported_seq(msg.headers) >= want:
                hi = mid
            else:
                lo = (msg.seq or mid) + 1
        return lo

    async def _put(self, target: str, channel: str, frames: list[Exported]) -> None:
        """Put ``frames`` (in order) as copies, one put per run of one content type."""
        for ctype, stamps, data, seqs, writers in copy_puts(frames):
            await self.tb.put_copy(target, channel, stamps, data, seqs, writers, ctype)
            self.stats.frames += len(seqs)


async def _acknowledged(futures: list[asyncio.Future[Any]], within: float) -> None:
    """Wait until every future is done, at most ``within`` s.

    Acknowledgements come back in publishing order: waiting for the last one
    first puts one done-callback on the loop instead of one per frame (each
    is a step of trio-asyncio's loop); the rest are then done, or waited for.
    """
    deadline = asyncio.get_running_loop().time() + within
    await asyncio.wait(futures[-1:], timeout=within)
    left = [f for f in futures if not f.done()]
    if left:
        await asyncio.wait(left, timeout=max(deadline - asyncio.get_running_loop().time(), 0))


class _Inbox:
    """Messages a consumer's callback delivered, taken by the batch (asyncio side).

    Bounded: with ``limit`` messages waiting the callback waits, so nats-py
    stops answering the consumer's flow control and the server stops sending.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.msgs: list[Any] = []
        self.ready = asyncio.Event()  # messages are waiting
        self.room = asyncio.Event()  # fewer than limit are
        self.room.set()

    async def put(self, msg: Any) -> None:
        while len(self.msgs) >= self.limit:
            self.room.clear()
            await self.room.wait()
        self.msgs.append(msg)
        self.ready.set()

    async def take(self, within: float) -> list[Any]:
        """What has arrived (waiting at most ``within`` s for something); maybe nothing."""
        if not self.msgs:
            try:
                await asyncio.wait_for(self.ready.wait(), within)
            except TimeoutError:
                return []
        msgs, self.msgs = self.msgs, []
        self.ready.clear()
        self.room.set()
        return msgs


def _header_bytes(hdrs: dict[str, str]) -> int:
    """What ``hdrs`` add to a message's size on the wire (``NATS/1.0``, ``K: V`` lines, blank line)."""
    return 12 + 4 * len(hdrs) + sum(map(len, hdrs)) + sum(map(len, hdrs.values()))


def _quietly(fn: Callable[[], Any]) -> Callable[[], Any]:
    async def call() -> None:
        try:
            await fn()
        except Exception as exc:  # the consumer is gone with its node: nothing to undo
            log.debug("unsubscribe: %r", exc)

    return call
