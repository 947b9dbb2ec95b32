"""``run_mirror``: three in-process brokers on loopback, copies checked as readers of B see them."""

from __future__ import annotations

import re
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import suppress

import pytest
import trio
import trio.testing
from click.testing import CliRunner

from turbine import BrokerConfig, RequestFailed, open_client, serve_turbine
from turbine.archive import open_archive
from turbine.archive._store import TieredStores
from turbine.auth import AuthTable, token_hash
from turbine.cli import main
from turbine.client import Client, Frame, FrameGroup, Gap
from turbine.mirror import MirrorConfig, MirrorStats, copy_puts, group_puts, run_mirror
from turbine.origin import Origin
from turbine.testing import start_broker

SRC = "daq_rig_data_source"
POLL = 0.02  # the mirror lists its origin this often


class Reports:
    """What a mirror reports; tests wait for a line instead of sleeping."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._changed = trio.Event()

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, regex: str) -> str:
        while True:
            for line in self.lines:
                if re.search(regex, line):
                    return line
            await self._changed.wait()


@pytest.fixture(params=["", "to", "from"], ids=["process", "inside", "inside A"])
def inside(request) -> str:
    """Where the mirror copies: itself (a process of its own), or it asks B (``to``,
    a pull) or A (``from``, a push) to copy inside it."""
    return request.param


async def start_mirror(
    inside,
    nursery,
    origin,
    target,
    *patterns,
    prefix="",
    reports=None,
    stats=None,
    copying=True,
    **config_,
):
    """A mirror, started once it copies (``copying``; else at once)."""
    config = MirrorConfig(
        origin, target, patterns or ("*",), prefix, poll=POLL, retry=POLL, inside=inside, **config_
    )
    reports = reports if reports is not None else Reports()
    scope = trio.CancelScope()

    async def run(task_status=trio.TASK_STATUS_IGNORED):
        with scope:
            await run_mirror(config, stats=stats, report=reports, task_status=task_status)

    if copying:
        await nursery.start(run)
    else:
        nursery.start_soon(run)
    return scope, reports


async def frames_on(tb: Client, pattern: str, count: int, start="oldest"):
    """The first ``count`` frames and gaps a subscriber of ``pattern`` gets."""
    async with tb.subscribe(pattern, start=start) as sub:
        return [await sub.receive() for _ in range(count)]


async def everything(tb: Client, path: str):
    groups = await tb.fetch(path, oldest=1000)
    return [(f.seq, f.timestamp, f.data, f.writer) for f in groups]


@pytest.fixture
async def brokers(nursery) -> AsyncIterator[list[str]]:
    yield [await start_broker(nursery, identity=name) for name in ("aaaa", "bbbb", "cccc")]


async def test_a_copy_has_the_origins_numbers_gaps_types_writers_and_limits(
    inside, nursery, brokers
):
    a, b, _ = brokers
    with trio.fail_after(20):
        async with open_client(a, name="daq") as pa, open_client(b) as rb:
            src = await pa.open_source(SRC, {"x": "text/plain"}, cache_frames=3)
            for i in range(1, 6):
                await src.put("x", b"%d" % i, timestamp=100.0 + i)
            await src.set_metadata({"rate": 10})
            await pa.flush()
            await start_mirror(inside, nursery, a, b, "daq_*")
            got = await frames_on(rb, f"{SRC}/x", 4, start=1)  # (copied by now or not)
            assert (got[0].missed, got[0].next_seq) == (2, 3)  # evicted on A before copying
            assert [(f.seq, f.timestamp, f.data, f.content_type) for f in got[1:]] == [
                (3, 103.0, b"3", "text/plain"),
                (4, 104.0, b"4", "text/plain"),
                (5, 105.0, b"5", "text/plain"),
            ]
            assert all(f.writer.startswith("daq#") for f in got[1:])
            await src.put("x", b"6", timestamp=106.0)
            await pa.flush()
            (six,) = await frames_on(rb, f"{SRC}/x", 1, start=6)
            assert (six.seq, six.data) == (6, b"6")
            assert await everything(rb, f"{SRC}/x") == await everything(pa, f"{SRC}/x")
            (info,) = await rb.list_sources(SRC)
            assert info.mirror == {"broker": "aaaa", "source": SRC, "via": []}
            assert (info.cache_frames, info.metadata, info.online) == (3, {"rate": 10}, True)


async def test_sources_and_channels_that_appear_later_are_copied_too(inside, nursery, brokers):
    a, b, _ = brokers
    with trio.fail_after(20):
        async with open_client(a, name="daq") as pa, open_client(b) as rb:
            await start_mirror(inside, nursery, a, b, "daq_*", prefix="lab1")
            src = await pa.open_source(SRC)
            await src.put("x", b"x1")
            other = await pa.open_source("video_cam_data_source")
            await other.put("frame.jpg", b"j")
            await pa.flush()
            (x1,) = await frames_on(rb, "daq_lab1rig_data_source/x", 1)
            await src.put("y", b"y1")
            await pa.flush()
            (y1,) = await frames_on(rb, "daq_lab1rig_data_source/y", 1)
            assert (x1.data, y1.data, y1.seq) == (b"x1", b"y1", 1)
            assert [s.name for s in await rb.list_sources()] == ["daq_lab1rig_data_source"]


async def test_a_restarted_mirror_continues_where_the_copy_stops(inside, nursery, brokers):
    a, b, _ = brokers
    with trio.fail_after(20):
        async with open_client(a, name="daq") as pa, open_client(b) as rb:
            src = await pa.open_source(SRC)
            for i in range(1, 4):
                await src.put("x", b"%d" % i)
            await pa.flush()
            stats = MirrorStats()
            scope, _ = await start_mirror(inside, nursery, a, b, stats=stats)
            await frames_on(rb, f"{SRC}/x", 3)
            scope.cancel()
            for i in range(4, 7):
                await src.put("x", b"%d" % i)
            await pa.flush()
            await start_mirror(inside, nursery, a, b, stats=stats)
            await frames_on(rb, f"{SRC}/x", 1, start=6)
            assert [s for s, *_ in await everything(rb, f"{SRC}/x")] == [1, 2, 3, 4, 5, 6]
            if not inside:  # (inside B, what the last poll did is never told to the program)
                assert stats.frames == 6  # none sent twice


async def test_a_restarted_target_gets_again_what_the_origin_holds(inside, nursery, brokers):
    a = brokers[0]
    with trio.fail_after(20):
        async with open_client(a, name="daq") as pa:
            src = await pa.open_source(SRC)
            await src.put("x", b"1")
            await pa.flush()
            async with trio.open_nursery() as first:
                (host, port), *_ = await first.start(
                    serve_turbine, BrokerConfig(host="127.0.0.1", port=0, identity="dddd")
                )
                b = f"{host}:{port}"
                _, reports = await start_mirror(inside, nursery, a, b)
                async with open_client(b) as rb:
                    await frames_on(rb, f"{SRC}/x", 1)
                first.cancel_scope.cancel()  # B stops (memory only: its copy is gone)
            await reports.wait_for("connecting again")
            await src.put("x", b"2")
            await pa.flush()
        config = BrokerConfig(host="127.0.0.1", port=port, identity="dddd")
        await nursery.start(serve_turbine, config)
        async with open_client(b) as rb:
            got = await frames_on(rb, f"{SRC}/x", 2)
            assert [(f.seq, f.data) for f in got] == [(1, b"1"), (2, b"2")]


async def test_a_ring_of_mirrors_never_copies_a_source_back(inside, nursery, brokers):
    a, b, c = brokers
    with trio.fail_after(20):
        async with open_client(a, name="pa") as pa, open_client(b, name="pb") as pb:
            await (await pa.open_source("daq_a_data_source")).put("x", b"from a")
            await (await pb.open_source("daq_b_data_source")).put("x", b"from b")
            await pa.flush()
            await pb.flush()
            reports = {}
            for origin, target in ((a, b), (b, c), (c, a)):
                _, reports[origin] = await start_mirror(inside, nursery, origin, target)
            # each source goes around until the broker before its origin
            await reports[c].wait_for("not copying daq_a_data_source: its frames came from")
            await reports[a].wait_for("not copying daq_b_data_source: its frames came from")
            for address in (a, b, c):
                async with open_client(address) as tb_:
                    names = {s.name: s.mirror for s in await tb_.list_sources()}
                    assert set(names) == {"daq_a_data_source", "daq_b_data_source"}
            async with open_client(c) as rc:
                (fa,) = await frames_on(rc, "daq_a_data_source/x", 1)
                (info,) = await rc.list_sources("daq_a_data_source")
                assert info.mirror == {
                    "broker": "aaaa",
                    "source": "daq_a_data_source",
                    "via": ["bbbb"],
                }
            assert fa.data == b"from a"
            assert [s.mirror for s in await pa.list_sources("daq_a_data_source")] == [None]
            assert await everything(pa, "daq_a_data_source/x") == [
                (1, fa.timestamp, b"from a", fa.writer)
            ]


async def test_a_target_with_a_data_dir_keeps_its_copies_through_a_restart(
    inside, nursery, tmp_path
):
    a = await start_broker(nursery, identity="aaaa")
    with trio.fail_after(30):
        async with open_client(a, name="daq") as pa:
            src = await pa.open_source(SRC)
            await src.put("x", b"1")
            await pa.flush()
            stats = MirrorStats()
            for frame in (b"2", b"3"):
                async with (
                    open_archive(tmp_path) as archive,
                    trio.open_nursery() as b_nursery,
                ):
                    b = await start_broker(b_nursery, store=TieredStores(archive), identity="bbbb")
                    scope, _ = await start_mirror(inside, b_nursery, a, b, stats=stats)
                    async with open_client(b) as rb:
                        await frames_on(rb, f"{SRC}/x", 1, start=int(frame) - 1)
                        await rb.flush()  # the copy is on disk
                        (info,) = await rb.list_sources(SRC)
                        assert info.mirror == {"broker": "aaaa", "source": SRC, "via": []}
                    b_nursery.cancel_scope.cancel()
                await src.put("x", frame)  # while B is down
                await pa.flush()
            async with open_archive(tmp_path) as archive, trio.open_nursery() as b_nursery:
                b = await start_broker(b_nursery, store=TieredStores(archive), identity="bbbb")
                async with open_client(b) as rb:
                    (info,) = await rb.list_sources(SRC)
                    assert info.mirror is not None and not info.online
                    with pytest.raises(RequestFailed, match="only a mirror may hold it"):
                        await rb.open_source(SRC)
                    await start_mirror(inside, b_nursery, a, b, stats=stats)
                    await frames_on(rb, f"{SRC}/x", 1, start=3)
                    assert [s for s, *_ in await everything(rb, f"{SRC}/x")] == [1, 2, 3]
                b_nursery.cancel_scope.cancel()
            if not inside:
                assert stats.frames == 3  # each frame copied once, over three runs of B


async def cuttable_relay(target: str, *, task_status) -> None:
    """A TCP relay to ``target``; started, it gives its address and a ``cut()``
    that resets every connection it relays (the target sees them lost, as on a
    cut link) and stops taking new ones."""
    host, port = target.rsplit(":", 1)
    upstreams: list[trio.SocketStream] = []
    with trio.CancelScope() as accepting:
        async with trio.open_nursery() as relays:

            async def relay(client: trio.SocketStream) -> None:
                async with client, await trio.open_tcp_stream(host, int(port)) as up:
                    upstreams.append(up)
                    async with trio.open_nursery() as both:

                        async def pump(src: trio.SocketStream, dst: trio.SocketStream) -> None:
                            with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                                async for data in src:
                                    await dst.send_all(data)
                            both.cancel_scope.cancel()

                        both.start_soon(pump, client, up)
                        both.start_soon(pump, up, client)

            def cut() -> None:
                accepting.cancel()
                for up in upstreams:  # no linger: the close sends a reset
                    up.socket.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    up.socket.close()

            (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
            task_status.started((f"127.0.0.1:{listener.socket.getsockname()[1]}", cut))
            await trio.serve_listeners(relay, [listener], handler_nursery=relays)


async def test_a_mirror_stopped_lets_go_of_its_copies_at_once(inside, nursery, brokers):
    """Another mirror (another name) takes the copies over at once after a stop,
    where a lost connection keeps them reserved for the mirror's return."""
    a, b, _ = brokers
    copy = {"x": "application/octet-stream"}, Origin("aaaa", SRC)
    with trio.fail_after(20):
        async with open_client(a, name="daq") as pa, open_client(b) as rb:
            await (await pa.open_source(SRC)).put("x", b"1")
            await pa.flush()
            async with trio.open_nursery() as running:
                scope, _ = await start_mirror(inside, running, a, b, name="mirror-1")
                await frames_on(rb, f"{SRC}/x", 1)
                scope.cancel()  # stopped: its connection to B is closed
            async with open_client(b, name="mirror-2") as other:
                assert await other.open_mirror(SRC, *copy) == {"x": 2}
                (info,) = await rb.list_sources(SRC)
                assert info.online and info.holder.startswith("mirror-2#")

        async with open_client(a, name="daq") as pa, open_client(b) as rb:
            await (await pa.open_source("daq_two_data_source")).put("x", b"1")
            await pa.flush()
            relayed, cut = await nursery.start(cuttable_relay, b)
            await start_mirror(inside, nursery, a, relayed, "daq_two*", name="mirror-3")
            await frames_on(rb, "daq_two_data_source/x", 1)
            cut()  # its connection to B is lost: the copies wait for it
            await trio.testing.wait_all_tasks_blocked()
            (info,) = await rb.list_sources("daq_two_data_source")
            assert not info.online
            async with open_client(b, name="mirror-2") as other:
                origin = Origin("aaaa", "daq_two_data_source")
                with pytest.raises(RequestFailed, match="mirror-3.*reconnecting"):
                    await other.open_mirror("daq_two_data_source", copy[0], origin)


MIRROR_TOKENS = {u: f"token-of-{u}-0123456789abcdef" for u in ("admin", "from_a", "to_b")}


def auth_text(**rights: str) -> str:
    """An auth file with ``admin`` (every right) and the given users' rights."""
    rights = {"admin": 'admin = true\nread = ["*"]\nwrite = ["*"]\ncommand = ["*"]', **rights}
    return "\n".join(
        f'[users.{u}]\ntoken_sha256 = "{token_hash(MIRROR_TOKENS[u])}"\n{r}\n'
        for u, r in rights.items()
    )


def auth_table(**rights: str) -> AuthTable:
    return AuthTable.from_toml(auth_text(**rights))


async def test_with_access_control_the_mirror_reads_a_and_writes_b_as_its_own_users(
    inside, nursery
):
    a_users = auth_table(from_a='read = ["daq_*"]', to_b='write = ["daq_*"]')
    a = await start_broker(nursery, identity="aaaa", auth=a_users)
    b_users = auth_table(to_b='write = ["daq_*"]', from_a='read = ["*"]')
    b = await start_broker(nursery, identity="bbbb", auth=b_users)
    admin, reader = MIRROR_TOKENS["admin"], MIRROR_TOKENS["from_a"]
    with trio.fail_after(20):
        async with open_client(a, name="daq", token=admin) as pa, open_client(b, token=admin) as rb:
            src = await pa.open_source(SRC)
            await src.put("x", b"1")
            secret = await pa.open_source("video_cam_data_source")
            await secret.put("frame.jpg", b"j")
            await pa.flush()
            # B's user for reading only: the mirror says why it copies nothing
            wrong, reports = await start_mirror(
                inside,
                nursery,
                a,
                b,
                origin_token=reader,
                target_token=reader,
                copying=inside != "to",  # (inside B, B refuses to start it)
            )
            await reports.wait_for(
                "user 'from_a' may not have this broker mirror: that takes the write right"
                if inside == "to"  # (a user who may write nothing there may not ask B to connect)
                else f"not copying {SRC}: user 'from_a' .* takes the write right"
            )
            wrong.cancel()
            if inside == "from":  # nor may a user who may read nothing on A ask A to push
                wrong, reports = await start_mirror(
                    inside, nursery, a, b, origin_token=MIRROR_TOKENS["to_b"], copying=False
                )
                await reports.wait_for("user 'to_b' may not have this broker mirror: .* read right")
                wrong.cancel()
            assert "token-of" not in repr(MirrorConfig(a, b, origin_token=reader))
            await start_mirror(
                inside,
                nursery,
                a,
                b,
                origin_token=MIRROR_TOKENS["from_a"],
                target_token=MIRROR_TOKENS["to_b"],
            )
            (one,) = await frames_on(rb, f"{SRC}/x", 1)
            await src.put("x", b"2")
            await pa.flush()
            (two,) = await frames_on(rb, f"{SRC}/x", 1, start=2)
            assert (one.data, two.data) == (b"1", b"2")
            # A lists only what the mirror's user may read there
            assert [s.name for s in await rb.list_sources("*_data_source")] == [SRC]


async def test_a_memory_only_origin_restarted_is_a_new_broker_and_its_copy_is_left_alone(
    inside, nursery
):
    b = await start_broker(nursery, identity="bbbb")
    with trio.fail_after(20):
        async with trio.open_nursery() as first:
            (host, port), *_ = await first.start(serve_turbine, BrokerConfig("127.0.0.1", 0))
            a = f"{host}:{port}"
            async with open_client(a, name="daq") as pa:
                await (await pa.open_source(SRC)).put("x", b"before")
                first_id = (await pa.status())["identity"]
            _, reports = await start_mirror(inside, nursery, a, b)
            async with open_client(b) as rb:
                await frames_on(rb, f"{SRC}/x", 1)
            first.cancel_scope.cancel()
        await nursery.start(serve_turbine, BrokerConfig("127.0.0.1", port))
        async with open_client(a, name="daq") as pa, open_client(b) as rb:
            assert (await pa.status())["identity"] != first_id
            src = await pa.open_source(SRC)
            await src.put("x", b"after")  # number 1 again, on another broker
            await pa.flush()
            await reports.wait_for(
                f"not copying {SRC}: .*not of.*without a data dir is a new broker"
            )
            # B keeps the first broker's frames under their numbers, untouched
            assert [(s, d) for s, _, d, _ in await everything(rb, f"{SRC}/x")] == [(1, b"before")]
            (info,) = await rb.list_sources(SRC)
            assert info.mirror["broker"] == first_id
            # the new broker's frames go under another name
            await start_mirror(inside, nursery, a, b, prefix="new")
            (after,) = await frames_on(rb, "daq_newrig_data_source/x", 1)
            assert (after.seq, after.data) == (1, b"after")


def test_a_batch_becomes_one_put_per_content_type_with_its_writer_runs():
    def f(seq, ctype, writer):
        return Frame(SRC, "x", seq, float(seq), b"%d" % seq, ctype, writer)

    batch = [f(1, "a", "w1"), f(2, "a", "w2"), f(3, "a", "w2"), f(5, "b", "w2"), f(6, "a", "w1")]
    assert list(copy_puts(batch)) == [
        ("a", [1.0, 2.0, 3.0], [b"1", b"2", b"3"], [1, 2, 3], [[1, "w1"], [2, "w2"]]),
        ("b", [5.0], [b"5"], [5], [[5, "w2"]]),
        ("a", [6.0], [b"6"], [6], [[6, "w1"]]),
    ]
    same = [f(i, "a", "w1") for i in range(1, 4)]
    assert list(copy_puts(same)) == [
        ("a", [1.0, 2.0, 3.0], [b"1", b"2", b"3"], [1, 2, 3], [[1, "w1"]])
    ]
    assert list(copy_puts([])) == []


def test_groups_become_one_put_per_content_type_with_their_payloads_uncut():
    def g(seq, n, ctype, writer):
        data = memoryview(b"".join(b"%d" % s for s in range(seq, seq + n)))
        return FrameGroup(SRC, "x", ctype, seq, [float(seq)] * n, [1] * n, data, writer)

    one, two, three = g(1, 2, "a", "w1"), g(3, 1, "a", "w2"), g(6, 1, "a", "w2")
    other = g(7, 2, "b", "w2")
    puts = group_puts([one, two, Gap(SRC, "x", 2, 6), three, other, g(9, 1, "a", "w1")])
    # a put's numbers run one after another: the gap starts another put
    assert [(p.content_type, list(p.seqs), p.sizes, p.writers) for p in puts] == [
        ("a", [1, 2, 3], [1, 1, 1], [[1, "w1"], [3, "w2"]]),
        ("a", [6], [1], [[6, "w2"]]),
        ("b", [7, 8], [1, 1], [[7, "w2"]]),
        ("a", [9], [1], [[9, "w1"]]),
    ]
    assert puts[0].pieces == [one.payload, two.payload]  # not copied
    assert puts[0].timestamps.tolist() == [1.0, 1.0, 3.0]
    assert group_puts([Gap(SRC, "x", 1, 2)]) == []


def test_a_prefix_that_cannot_go_into_a_name_is_refused_before_anything_starts():
    result = CliRunner().invoke(
        main, ["mirror", "--from", "127.0.0.1:1", "--to", "127.0.0.1:2", "daq_*", "--prefix", "a b"]
    )
    assert result.exit_code == 2
    assert "Invalid value for '--prefix': 'a b' goes into the copies' source names" in result.output
