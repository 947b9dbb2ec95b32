"""The receive buffer, sans I/O: it grows with what arrives, never with what a
peer declares; partial messages of all connections share one bound; a large
payload is still handed over in the buffer it was received into."""

from __future__ import annotations

import struct
import sys
import tracemalloc
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turbine._client_records import frames_from
from turbine._constants import (
    FIRST_RECEIVE_BYTES,
    PROTOCOL_VERSION,
    RECEIVE_BYTES,
    VECTORED_MIN_BYTES,
)
from turbine._errors import RemoteProtocolError
from turbine.messages import ClientHello, CutPayload
from turbine.protocol import NEED_DATA, Connection, ReceiveBudget, Role, encode, encode_bytes

HELLO = encode_bytes("client_hello", {"protocol": PROTOCOL_VERSION, "name": "t"})


def broker_side(budget: ReceiveBudget | None = None) -> Connection:
    conn = Connection(Role.BROKER, budget=budget)
    conn.receive_data(HELLO)
    assert conn.next_event().type == "client_hello"
    return conn


def big_put(size: int) -> bytes:
    head = msgpack.packb(
        {"type": "put", "source": "s", "channel": "c", "ts": [None], "sizes": [size]}
    )
    return struct.pack(">II", len(head), size) + head + bytes(range(256)) * (size // 256)


def feed(conn: Connection, data: bytes) -> int:
    """Write ``data`` through get_buffer as recv_into would; return the largest view offered."""
    largest = 0
    while data:
        with conn.get_buffer() as view:
            n = min(len(view), len(data))
            largest = max(largest, len(view))
            if not n:
                break
            view[:n] = data[:n]
        conn.buffer_updated(n)
        data = data[n:]
    return largest


def test_a_declared_length_reserves_nothing_before_the_bytes_arrive():
    conn = broker_side()
    # The finding: a prefix declaring a 65 MiB payload and one header byte took 65 MiB.
    conn.receive_data(struct.pack(">II", 20, 68157440) + b"\x85")
    assert conn.next_event() is NEED_DATA
    with conn.get_buffer() as view:
        assert len(view) <= RECEIVE_BYTES


def test_the_buffer_grows_at_most_twice_what_has_arrived():
    conn = broker_side()
    msg = big_put(8 * 2**20)
    arrived = 0
    while arrived < len(msg):
        with conn.get_buffer() as view:
            assert len(view) <= max(arrived, RECEIVE_BYTES)
            n = min(len(view), len(msg) - arrived)
            view[:n] = msg[arrived : arrived + n]
        conn.buffer_updated(n)
        arrived += n
    put = conn.next_event()
    assert put.type == "put" and bytes(put.payload) == msg[-8 * 2**20 :]


def test_a_large_payload_is_handed_over_in_the_buffer_it_arrived_in():
    conn = broker_side()
    feed(conn, big_put(4 * 2**20))
    put = conn.next_event()
    # The payload is a view of the receive buffer itself (no copy), and the
    # connection starts a fresh one.
    assert isinstance(put.payload.obj, bytearray)
    assert len(put.payload.obj) == len(big_put(4 * 2**20))


def test_an_idle_connection_holds_a_small_buffer_and_busy_ones_read_more():
    conn = broker_side()
    with conn.get_buffer() as view:
        assert len(view) == FIRST_RECEIVE_BYTES
    small = encode_bytes("status", {"id": 1})
    largest = feed(conn, small * (RECEIVE_BYTES // len(small) * 4))
    assert largest == RECEIVE_BYTES  # reads that fill what is offered get more offered
    assert sum(1 for _ in iter(conn.next_event, NEED_DATA)) > 1000


def test_partial_messages_of_all_connections_share_one_bound():
    budget = ReceiveBudget(4 * 2**20)
    first, second = broker_side(budget), broker_side(budget)
    msg = big_put(16 * 2**20)
    feed(first, msg)
    assert first.next_event() is NEED_DATA  # it got as far as the budget lets it
    assert budget.held == budget.limit
    feed(second, msg[: 2 * RECEIVE_BYTES])
    with second.get_buffer() as view:
        assert len(view) == 0  # nothing left: this reader waits for room
    first.close_budget()  # the first connection closes
    assert budget.held <= RECEIVE_BYTES
    feed(second, msg[2 * RECEIVE_BYTES : 4 * 2**20])
    assert budget.held > RECEIVE_BYTES


def test_a_received_message_gives_its_budget_back():
    budget = ReceiveBudget(64 * 2**20)
    conn = broker_side(budget)
    feed(conn, big_put(8 * 2**20))
    assert budget.held > 0
    assert conn.next_event().type == "put"
    assert budget.held == 0


def client_side() -> Connection:
    conn = Connection(Role.CLIENT)
    conn.receive_data(encode_bytes("hello", {"protocol": PROTOCOL_VERSION, "software": "t"}))
    assert conn.next_event().type == "hello"
    conn.send(ClientHello(protocol=PROTOCOL_VERSION, name="t"))
    return conn


def fetch_reply(frames: int, size: int, seq: int = 1) -> bytes:
    """A broker's reply to a fetch: ``frames`` frames of ``size`` bytes in one message."""
    group = ["s", "c", "application/octet-stream", seq, [0.0] * frames, [size] * frames, "w"]
    payloads = [bytes([i % 256]) * size for i in range(frames)]
    return b"".join(encode("frames", {"id": 1, "groups": [group]}, payloads))


def read_as_a_client_does(conn: Connection, data: bytes) -> tuple[list[int], list[Any]]:
    """Read ``data`` as the client's reader does (a read, then the messages it
    completed); return the sizes of the views offered and the messages."""
    offered, messages = [], []
    rest = memoryview(data)
    while rest:
        with conn.get_buffer() as view:
            n = min(len(view), len(rest))
            offered.append(len(view))
            view[:n] = rest[:n]
        conn.buffer_updated(n)
        rest = rest[n:]
        messages += iter(conn.next_event, NEED_DATA)
    return offered, messages


def test_a_client_cuts_a_large_fetch_reply_as_it_arrives():
    conn = client_side()
    msg = fetch_reply(1000, 1024)
    offered, (reply,) = read_as_a_client_does(conn, msg)
    # Normal reads (growing as they fill), never one for the whole reply.
    assert offered[0] == FIRST_RECEIVE_BYTES and max(offered) <= RECEIVE_BYTES
    frames = frames_from(reply.groups, reply.payload)
    assert [f.seq for f in frames] == list(range(1, 1001))
    assert all(type(f.data) is bytes for f in frames)
    assert [f.data for f in frames] == [bytes([i % 256]) * 1024 for i in range(1000)]


def test_a_client_receives_a_large_fetch_reply_without_a_buffer_of_its_size():
    # The reply was received whole (its 1 MB buffer's pages touched, then unmapped)
    # when its frames are copied out of it as bytes anyway: they are cut from a
    # normal buffer as they arrive.
    msg = fetch_reply(1000, 1024)
    conn = client_side()
    tracemalloc.start()
    try:
        _, (reply,) = read_as_a_client_does(conn, msg)
        frames = frames_from(reply.groups, reply.payload)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    held = sum(sys.getsizeof(f.data) for f in frames)
    assert peak - held < 2 * RECEIVE_BYTES  # the whole reply's buffer was 1 MB more


def test_a_client_receives_a_reply_with_large_frames_whole_and_hands_it_over():
    conn = client_side()
    msg = fetch_reply(16, 64 * 1024)
    offered, (reply,) = read_as_a_client_does(conn, msg)
    # The first read tells the reply's length; the second takes all of the rest.
    assert offered == [FIRST_RECEIVE_BYTES, len(msg) - FIRST_RECEIVE_BYTES]
    assert reply.type == "frames" and bytes(reply.payload) == msg[-64 * 1024 * 16 :]
    # Received into an object of the payload's own, not copied out of a larger one.
    assert type(reply.payload.obj) is bytes and len(reply.payload.obj) == 64 * 1024 * 16


def test_a_client_receives_a_large_subscription_batch_whole():
    conn = client_side()
    msg = b"".join(
        encode(
            "frames",
            {"sub": 3, "groups": [["s", "c", "t", 1, [0.0] * 100, [1024] * 100, "w"]]},
            [bytes(1024)] * 100,
        )
    )
    _, (batch,) = read_as_a_client_does(conn, msg)
    assert batch.sub == 3 and isinstance(batch.payload, memoryview)
    assert len(batch.payload.obj) == 100 * 1024
    assert [f.data for f in frames_from(batch.groups, batch.payload)] == [bytes(1024)] * 100


def one_frame_batch(size: int, sub: int = 3) -> bytes:
    """A subscription's delivery of one frame of ``size`` bytes (a 1 MB row's every message)."""
    group = ["s", "c", "t", 5, [0.0], [size], "w"]
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    return b"".join(encode("frames", {"sub": sub, "groups": [group]}, [data]))


def test_a_large_frame_is_received_into_the_bytes_its_reader_gets():
    # The frame's bytes were received into a buffer of the whole message and
    # copied out of it into Frame.data: a 1 MB subscriber copied every frame
    # once more than the kernel did, on fresh pages.  Now the payload's rest is
    # read straight into the bytes object the reader gets.
    size = 1_000_000
    msg = one_frame_batch(size)
    conn = client_side()
    tracemalloc.start()
    try:
        offered, (batch,) = read_as_a_client_does(conn, msg)
        (frame,) = frames_from(batch.groups, batch.payload)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert frame.data == msg[-size:] and type(frame.data) is bytes
    assert frame.data is batch.payload.obj  # not a copy
    assert peak < size + 2 * FIRST_RECEIVE_BYTES  # the frame, and no second buffer of its size
    # After the first read told its length, one read of exactly the rest.
    assert offered == [FIRST_RECEIVE_BYTES, len(msg) - FIRST_RECEIVE_BYTES]


def test_large_deliveries_one_after_another_each_arrive_straight_into_their_own_object():
    # After a large payload the next read was a normal one again (256 KiB, the size
    # reads had grown to): of each 300 KB delivery that followed (3 frames of a
    # mirror's 100 KB stream) 87 % arrived in the normal buffer and was copied out.
    groups = [[["s", "c", "t", 1 + 3 * k, [0.0] * 3, [100_000] * 3, "w"]] for k in range(4)]
    msgs = [
        encode("frames", {"sub": 3, "groups": g}, [bytes([k]) * 300_000])
        for k, g in enumerate(groups)
    ]
    conn = client_side()
    offered, batches = read_as_a_client_does(conn, b"".join(b"".join(m) for m in msgs))
    assert [bytes(b.payload) for b in batches] == [bytes([k]) * 300_000 for k in range(4)]
    # Each message: a small first read (its header and the payload's first bytes),
    # then the rest of its payload at once, straight into the payload's object.
    starts = [i for i, n in enumerate(offered) if n == FIRST_RECEIVE_BYTES]
    assert len(starts) == 4 and len(offered) == 8
    assert all(offered[i + 1] > 300_000 - FIRST_RECEIVE_BYTES for i in starts)


@settings(max_examples=30, deadline=None)
@given(
    size=st.integers(VECTORED_MIN_BYTES, 300_000),
    reads=st.lists(st.integers(1, 70_000), min_size=1, max_size=6),
    after=st.booleans(),
)
def test_a_large_frame_arrives_whole_through_reads_of_any_size(size, reads, after):
    # Reads of any length, the message's start in the same read as what came
    # before it, the next message's start in the same call as its end.
    msg = one_frame_batch(size)
    ok = encode_bytes("ok", {"id": 2, "result": None})
    stream = memoryview(ok + msg + (ok if after else b""))
    conn = client_side()
    got: list[Any] = []
    i = 0
    while stream:
        n = reads[i % len(reads)]
        conn.receive_data(stream[:n])  # (splits what it is given at the payload's end)
        stream = stream[n:]
        i += 1
        got += iter(conn.next_event, NEED_DATA)
    assert [m.type for m in got] == ["ok", "frames"] + (["ok"] if after else [])
    (frame,) = frames_from(got[1].groups, got[1].payload)
    assert frame.data == msg[-size:] and frame.seq == 5


def test_a_broker_that_closes_in_the_middle_of_a_large_frame_is_reported():
    conn = client_side()
    msg = one_frame_batch(200_000)
    feed(conn, msg[:150_000])
    assert conn.next_event() is NEED_DATA and conn.receiving
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="middle of a message \\(150000 bytes"):
        conn.next_event()


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.lists(st.integers(0, 3000), max_size=40), min_size=1, max_size=4),
    after=st.integers(0, 100),
    reads=st.lists(st.integers(300, 20_000), min_size=1, max_size=8),
)
def test_a_fetch_reply_cut_as_it_arrives_holds_what_it_held_whole(sizes, after, reads):
    # Groups of frames of any sizes (empty groups too), bytes after the last
    # frame, and reads of any length (below the reply's: it is cut): the same
    # frames as the reply read whole.
    groups = [
        [f"s{g}", "c", "t", 1 + g, [float(i) for i in range(len(s))], s, "w"]
        for g, s in enumerate(sizes)
    ]
    datas = [
        bytes([g, i % 256]) * (n // 2) + b"x" * (n % 2)
        for g, s in enumerate(sizes)
        for i, n in enumerate(s)
    ]
    filler = max(VECTORED_MIN_BYTES - sum(map(len, datas)) - after, 0)
    msg = b"".join(encode("frames", {"id": 7, "groups": groups}, [*datas, bytes(after + filler)]))
    conn = client_side()
    got: list[Any] = []
    rest = memoryview(msg)
    i = 0
    while rest:
        with conn.get_buffer(reads[i % len(reads)]) as view:
            n = min(reads[i % len(reads)], len(view), len(rest))
            view[:n] = rest[:n]
        conn.buffer_updated(n)
        rest = rest[n:]
        i += 1
        got += iter(conn.next_event, NEED_DATA)
    (reply,) = got
    assert isinstance(reply.payload, CutPayload)  # (not received whole)
    frames = frames_from(reply.groups, reply.payload)
    assert [f.data for f in frames] == datas
    assert all(type(f.data) is bytes for f in frames)
    assert [(f.source, f.seq, f.timestamp) for f in frames] == [
        (f"s{g}", 1 + g + i, float(i)) for g, s in enumerate(sizes) for i in range(len(s))
    ]


def test_a_fetch_reply_with_a_bad_group_fails_as_it_did_received_whole():
    # A malformed reply is not cut: it is received whole, and reading its frames
    # raises the peer's protocol error, as before.
    conn = client_side()
    _, (reply,) = read_as_a_client_does(conn, fetch_reply(100, 1024, seq=0))
    assert isinstance(reply.payload, memoryview)
    with pytest.raises(RemoteProtocolError, match="sequence number must be a positive"):
        frames_from(reply.groups, reply.payload)


def test_a_broker_that_closes_in_the_middle_of_a_cut_reply_is_reported():
    conn = client_side()
    msg = fetch_reply(100, 1024)
    cut = len(msg) - 5000
    feed(conn, msg[:cut])
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match=f"middle of a message \\({cut} bytes"):
        conn.next_event()


def test_a_cut_reply_is_followed_by_the_next_message():
    conn = client_side()
    msgs = fetch_reply(100, 1024) + encode_bytes("ok", {"id": 2, "result": None})
    _, (reply, ok) = read_as_a_client_does(conn, msgs)
    assert len(frames_from(reply.groups, reply.payload)) == 100 and ok.type == "ok"


def test_the_broker_receives_a_large_put_with_no_temporaries():
    # Growing with extend(bytes(n)) zero-filled a temporary of each step and
    # copied it in: 1.6 times the buffer at the peak, every byte written three
    # times before the kernel's copy.  The room a read fills is not written first.
    msg = big_put(300 * 1024)
    conn = broker_side()
    tracemalloc.start()
    try:
        _, (put,) = read_as_a_client_does(conn, msg)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert bytes(put.payload) == msg[-300 * 1024 :]
    assert peak < 1.02 * sys.getsizeof(put.payload.obj)  # the buffer itself, and no more


def test_a_large_put_is_handed_over_when_more_follows_it():
    # The rest of a large message is read up to its end and no further, even a
    # small rest: a read that took the next message's start too made next_event
    # copy the whole payload out (300 KB puts, the 100 KB rows' batches of three).
    conn = broker_side()
    msg = big_put(300 * 1024)
    rest = memoryview(msg * 3)  # a socket that always holds more than is asked
    puts: list[Any] = []
    while len(puts) < 3:
        with conn.get_buffer() as view:
            n = min(len(view), len(rest))
            view[:n] = rest[:n]
        conn.buffer_updated(n)
        rest = rest[n:]
        puts += iter(conn.next_event, NEED_DATA)
    for put in puts:
        assert isinstance(put.payload.obj, bytearray)  # handed over, not copied
        assert len(put.payload.obj) == len(msg)
        assert bytes(put.payload) == msg[-300 * 1024 :]


@pytest.mark.parametrize(("size", "allocations_a_put"), [(300 * 1024, 1), (1000 * 1024, 2)])
def test_a_stream_of_large_puts_gets_one_allocation_a_put(size, allocations_a_put):
    # A fresh buffer was made for the first read (256 KiB) and grown again once
    # the put's prefix told its size (300 KB): a second allocation, which moved
    # the buffer when the heap had no room after it (10 % of the broker at 100 KB
    # frames).  After a large put the next buffer is made with room for one like
    # it; what a read is offered is what it was (the room is not offered).  A
    # 1 MB put still grows once more (256 KiB, 512 KiB in its room, then 1 MB):
    # a bytearray keeps an allocation only down to half its length.
    conn = broker_side()
    msg = big_put(size)
    rest = memoryview(msg * 4)
    puts: list[Any] = []
    allocations: list[set[int]] = [set()]
    while len(puts) < 4:
        with conn.get_buffer() as view:
            assert len(view) <= max(RECEIVE_BYTES, len(msg) - 2 * RECEIVE_BYTES)
            allocations[-1].add(sys.getsizeof(view.obj))
            n = min(len(view), len(rest))
            view[:n] = rest[:n]
        conn.buffer_updated(n)
        rest = rest[n:]
        for put in iter(conn.next_event, NEED_DATA):
            puts.append(put)
            allocations.append(set())
    # Once reads have grown to a normal read's size (from the second put on here),
    # each put's buffer is allocated once (at most twice the first read: what a
    # bytearray keeps).
    assert [len(a) for a in allocations[2:4]] == [allocations_a_put] * 2
    for put in puts:
        assert bytes(put.payload) == msg[-size:]
        assert isinstance(put.payload.obj, bytearray) and len(put.payload.obj) == len(msg)


def test_room_not_yet_received_is_never_part_of_a_message():
    # The room a read is offered holds whatever the heap had there: only what
    # was received is ever decoded or handed over.
    conn = broker_side()
    msg = big_put(300 * 1024)
    for cut in (7, 4096, 200_000, len(msg) - 1):
        feed(conn, msg[:cut])
        assert conn.next_event() is NEED_DATA
        feed(conn, msg[cut:])
        put = conn.next_event()
        assert bytes(put.payload) == msg[-300 * 1024 :]
        assert len(put.payload.obj) == len(msg)
