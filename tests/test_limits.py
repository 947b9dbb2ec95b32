"""Every limit of the protocol, as a client over loopback meets it: one message
must never stall, bloat or break the broker for everyone."""

from __future__ import annotations

import struct

import pytest
import trio
from test_broker import (
    HANG_S,
    RawClient,
    closed_by_jumps,
    put_all,
    raw_message,
    start_broker,
    wait_offline,
)
from trio.testing import wait_all_tasks_blocked

from turbine import RequestFailed, open_client
from turbine._constants import (
    MAX_CLIENT_NAME_CHARS,
    MAX_CONTENT_TYPE_CHARS,
    MAX_METADATA_DEPTH,
    MAX_NAME_CHARS,
    MAX_PATTERN_CHARS,
    PROTOCOL_VERSION,
)

SRC = "daq_rig_data_source"
BAD = "daq_x_data_source"

HELLO = {"type": "client_hello", "protocol": PROTOCOL_VERSION}

TOO_LONG = {
    "client name": (
        raw_message({**HELLO, "name": "n" * (4 * 2**20 - 100)}),  # the header fits its limit
        f"'client_hello' field 'name' has 4194204 characters; the limit is {MAX_CLIENT_NAME_CHARS}",
    ),
    "source name": (
        raw_message({"type": "open_source", "id": 1, "source": "s" * (MAX_NAME_CHARS + 1)}),
        f"'source' has {MAX_NAME_CHARS + 1} characters; the limit is {MAX_NAME_CHARS}",
    ),
    "channel name": (
        raw_message({"type": "put", "source": SRC, "channel": "c" * 10_000, "ts": [], "sizes": []}),
        f"'channel' has 10000 characters; the limit is {MAX_NAME_CHARS}",
    ),
    "content type": (
        raw_message(
            {
                "type": "put",
                "source": SRC,
                "channel": "x",
                "ts": [],
                "sizes": [],
                "content_type": "t" * (MAX_CONTENT_TYPE_CHARS + 1),
            }
        ),
        f"'content_type' has {MAX_CONTENT_TYPE_CHARS + 1} characters",
    ),
    "channel map": (
        raw_message({"type": "open_source", "id": 1, "source": BAD, "channels": {"x": "t" * 300}}),
        "or its content type is too long",
    ),
    "pattern": (
        raw_message({"type": "list", "id": 1, "pattern": "*" * 3 * 2**20}),
        f"'pattern' has {3 * 2**20} characters; the limit is {MAX_PATTERN_CHARS}",
    ),
    "start": (
        raw_message({"type": "subscribe", "id": 1, "sub": 1, "pattern": "*", "start": "x" * 999}),
        "'start' has 999 characters",
    ),
    "message type": (raw_message({"type": "t" * 2**20}), "(1048578 characters); known types"),
}


@pytest.mark.parametrize("case", list(TOO_LONG))
async def test_every_string_has_a_length_limit_checked_on_arrival(broker, case):
    data, complaint = TOO_LONG[case]
    with trio.fail_after(10):
        async with open_client(broker, name="good") as good:
            src = await good.open_source(SRC)
            async with good.subscribe(f"{SRC}/x") as sub:
                bad = await RawClient.connect(broker, hello=case != "client name", name="bad")
                async with bad:
                    await bad.send_raw(data)
                    (error,) = await bad.until_closed()
                assert error["code"] == "protocol"
                assert complaint in error["message"]
                assert len(error["message"]) < 500  # the long value is not echoed back
                await put_all(src, "x", [b"still here"])
                assert (await sub.receive()).data == b"still here"
            status = await good.status()
    assert max(len(c["name"]) for c in status["clients"]) < 200
    assert all(len(c["client"]) < 200 for c in status["closed"])


async def test_a_client_name_at_the_limit_is_what_frames_carry(broker):
    name = "n" * MAX_CLIENT_NAME_CHARS
    with trio.fail_after(HANG_S):
        async with open_client(broker, name=name) as tb:
            src = await tb.open_source(SRC)
            await put_all(src, "x", [b"1"])
            (frame,) = await tb.fetch(f"{SRC}/x", newest=1)
    assert frame.writer.startswith(name + "#")


async def test_one_deep_metadata_frame_breaks_no_listing(broker):
    with trio.fail_after(10):
        async with open_client(broker, name="good") as good, open_client(broker, name="bad") as b:
            await good.open_source(SRC)
            src = await b.open_source(BAD)
            await src.put("metadata.txt", b"[" * 100_000 + b"]" * 100_000)
            await src.put("metadata.txt", b"[" * 1000 + b"]" * 1000)
            with pytest.raises(RequestFailed, match="metadata frame") as refused:
                await src.flush()
            assert refused.value.code == "metadata"
            deep = b"[" * MAX_METADATA_DEPTH + b"]" * MAX_METADATA_DEPTH
            await put_all(src, "metadata.txt", [deep])
            await src.close()
            names = [s.name for s in await good.list_sources()]  # RecursionError for all, before
    assert names == [SRC, BAD]


# --- half-sent messages -------------------------------------------------------------------


@pytest.mark.parametrize("hello", [True, False])
async def test_a_half_sent_message_closes_its_connection_after_the_deadline(
    nursery, autojump_clock, hello
):
    address = await start_broker(nursery, message_timeout=30.0)
    with trio.fail_after(120):
        async with open_client(address, name="good") as good:
            src = await good.open_source(SRC)
            bad = await RawClient.connect(address, hello=hello, name="bad")
            async with bad:
                if hello:
                    # The finding: 8 bytes declaring 65 MiB and one header byte, then silence.
                    await bad.send_raw(struct.pack(">II", 20, 68157440) + b"\x85")
                await trio.sleep(29)
                await put_all(src, "x", [b"meanwhile"])  # everyone else carries on
                await trio.sleep(2)  # mock time: the deadline passes
                (error,) = await bad.until_closed()
            status = await good.status()
    assert error["code"] == "protocol"
    want = "a message stayed incomplete for 30 s" if hello else "no client_hello within 30 s"
    assert want in error["message"]
    (closed,) = [c for c in status["closed"] if want in c["reason"]]


async def test_a_message_that_arrives_in_pieces_within_the_deadline_is_taken(
    nursery, autojump_clock
):
    address = await start_broker(nursery, message_timeout=30.0)
    with trio.fail_after(300):
        async with open_client(address, name="good") as good:
            await good.open_source(SRC, shared=True)
            async with await RawClient.connect(address, name="slow") as slow:
                message = raw_message(
                    {"type": "put", "source": SRC, "channel": "x", "ts": [None], "sizes": [6]},
                    b"abcdef",
                )
                for byte in message:  # one byte at a time, 29 s for the whole message
                    await slow.send_raw(bytes([byte]))
                    await trio.sleep(29 / len(message))
                await slow.send("flush", {"id": 1})
                reply = await slow.receive()
            frames = await good.fetch(f"{SRC}/x", newest=1)
    assert reply is not None and reply.type == "ok"
    assert [f.data for f in frames] == [b"abcdef"]


# --- slow consumers ---------------------------------------------------------------------------


async def test_slow_consumers_are_counted_where_an_operator_sees_them(nursery, mock_clock):
    # Time moves only when told (closed_by_jumps says why): 19 MiB cross
    # loopback twice here, up to a 30 s write deadline.
    address = await start_broker(nursery, write_timeout=30.0)
    with trio.fail_after(300):
        async with open_client(address, name="producer") as producer:
            src = await producer.open_source(SRC, cache_bytes=64 << 20)
            async with await RawClient.connect(address, name="lagging") as lagging:
                await lagging.send("subscribe", {"id": 1, "sub": 1, "pattern": f"{SRC}/x"})
                assert (await lagging.receive()).type == "ok"
                for _ in range(300):  # far more than the socket buffers hold
                    await src.put("x", bytes(64 << 10))
                await src.flush()
                await wait_all_tasks_blocked()
                mock_clock.jump(5)  # the broker's write stays blocked 5 s
                got = 0
                while got < 300 * (64 << 10):  # then it reads everything
                    msg = await lagging.receive()
                    assert msg is not None and msg.type == "frames"
                    got += len(msg.payload)
                while_connected = await producer.status()
                began = trio.current_time()
                stuck = await RawClient.connect(address, name="stuck")
                await stuck.send("subscribe", {"id": 1, "sub": 1, "pattern": f"{SRC}/x"})
                for _ in range(300):
                    await src.put("x", bytes(64 << 10))
                await src.flush()
                assert await closed_by_jumps(mock_clock, producer, "stuck")  # write deadline
                mock_clock.autojump_threshold = 0  # from here on, a hang ends in fail_after
                await stuck.aclose()
                after = await producer.status()
    assert trio.current_time() - began >= 30  # not closed before its write deadline
    (lag,) = [c for c in while_connected["clients"] if c["name"].startswith("lagging#")]
    assert lag["slow_events"] >= 1  # always 0 before: counted only just before the close
    assert while_connected["slow_events"] == lag["slow_events"]
    (closed,) = [c for c in after["closed"] if c["client"].startswith("stuck#")]
    assert closed["code"] == "write_timeout" and closed["slow_events"] >= 1
    assert after["slow_events"] >= lag["slow_events"] + closed["slow_events"]


# --- offline sources and their owners ---------------------------------------------------------


async def test_an_offline_source_cannot_be_cut_or_deleted_by_another_client(broker):
    with trio.fail_after(10):
        async with open_client(broker, name="owner") as owner:
            await put_all(
                await owner.open_source(SRC, cache_frames=100), "x", [b"%d" % i for i in range(50)]
            )
        async with open_client(broker, name="stranger") as stranger:
            await wait_offline(stranger, SRC)
            with pytest.raises(RequestFailed, match="only that client may delete it") as rm:
                await stranger.delete(SRC)
            assert rm.value.code == "owner"
            taken = await stranger.open_source(SRC, cache_frames=1)  # taking over: allowed,
            (info,) = await stranger.list_sources(SRC)  # but its history is not cut
            assert info.cache_frames == 100
            assert len(await stranger.fetch(f"{SRC}/x", oldest=100)) == 50
            async with open_client(broker, name="owner") as back:
                mine = await back.open_source(SRC)  # the owner takes it back
                await put_all(mine, "x", [b"owner again"])
                await taken.put("x", b"stranger")
                with pytest.raises(RequestFailed, match="held by owner#"):
                    await taken.flush()
                frames = await back.fetch(f"{SRC}/x", oldest=100)
                await back.delete(SRC)  # its owner may
    assert len(frames) == 51 and frames[-1].data == b"owner again"


async def test_one_request_cannot_evict_everyone_elses_history(nursery):
    address = await start_broker(nursery, max_memory=8 << 20)
    with trio.fail_after(10):
        async with open_client(address, name="a") as a:
            await put_all(await a.open_source(SRC, cache_bytes=2 << 20), "x", [b"a"])
        async with open_client(address, name="b") as b:
            await put_all(await b.open_source(BAD, cache_bytes=2 << 20), "x", [b"b"])
        async with open_client(address, name="greedy") as greedy:
            await wait_offline(greedy, SRC)
            await wait_offline(greedy, BAD)
            with pytest.raises(RequestFailed, match="other clients' offline sources are kept"):
                await greedy.open_source("daq_all_data_source", cache_bytes=8 << 20)
            await greedy.open_source("daq_share_data_source", cache_bytes=2 << 20)  # its share
            names = sorted(s.name for s in await greedy.list_sources())
    assert names == sorted([SRC, BAD, "daq_share_data_source"])
