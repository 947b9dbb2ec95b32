"""The sans-I/O wire protocol: framing, the message table, the handshake."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turbine import LocalProtocolError, RemoteProtocolError
from turbine._constants import MAX_HEADER_BYTES, PROTOCOL_VERSION
from turbine.protocol import (
    NEED_DATA,
    Connection,
    Message,
    Role,
    decode_groups,
    encode_bytes,
    split_frames,
)

HELLO = ("hello", {"protocol": PROTOCOL_VERSION, "software": "turbine test"})
CLIENT_HELLO = ("client_hello", {"protocol": PROTOCOL_VERSION, "name": "tester"})


def drain(conn: Connection) -> list[Message]:
    out = []
    while (msg := conn.next_event()) is not NEED_DATA:
        out.append(msg)
    return out


def broker_side() -> Connection:
    """A broker-side connection that has already seen the client's hello."""
    conn = Connection(Role.BROKER)
    conn.receive_data(encode_bytes(*CLIENT_HELLO))
    assert conn.next_event().type == "client_hello"
    return conn


def raw(header: dict, payload: bytes = b"") -> bytes:
    """A message framed by hand, bypassing every check of the encoder."""
    head = msgpack.packb(header, use_bin_type=True)
    return struct.pack(">II", len(head), len(payload)) + head + payload


BIG = bytes(range(256)) * 273 + b"xy"  # not a multiple of any chunk size

# A stream of messages a client sends, with frame payloads of several sizes.
CLIENT_STREAM = [
    CLIENT_HELLO,
    ("open_source", {"id": 1, "source": "daq_rig_data_source", "channels": {"x": "text/plain"}}),
    ("put", {"source": "daq_rig_data_source", "channel": "x", "ts": [1.5, None], "sizes": [3, 0]}),
    ("flush", {"id": 2}),
    ("subscribe", {"id": 3, "sub": 7, "pattern": "daq_*/x", "start": "oldest"}),
    ("subscribe", {"id": 4, "sub": 8, "pattern": "daq_*", "start": 12, "monitor": True}),
    ("fetch", {"id": 5, "pattern": "*/*", "start": 10.0, "duration": 2.5}),
    ("put", {"source": "s", "channel": "big", "ts": [None], "sizes": [len(BIG)]}),
    ("list", {"id": 6, "pattern": "*"}),
    ("status", {"id": 7}),
    ("delete", {"id": 8, "source": "daq_rig_data_source"}),
]
PAYLOADS = {2: [b"abc", b""], 7: [BIG]}


def client_stream_bytes() -> bytes:
    return b"".join(
        encode_bytes(kind, fields, PAYLOADS.get(i, ()))
        for i, (kind, fields) in enumerate(CLIENT_STREAM)
    )


def as_tuples(msgs: list[Message]) -> list[tuple[str, dict, bytes]]:
    return [(m.type, m.fields, bytes(m.payload)) for m in msgs]


def expected_stream() -> list[tuple[str, dict, bytes]]:
    return [
        (kind, fields, b"".join(PAYLOADS.get(i, ())))
        for i, (kind, fields) in enumerate(CLIENT_STREAM)
    ]


# --- round trips -----------------------------------------------------------------


def test_every_client_message_round_trips_in_one_chunk():
    conn = Connection(Role.BROKER)
    conn.receive_data(client_stream_bytes())
    assert as_tuples(drain(conn)) == expected_stream()


def test_broker_messages_round_trip_to_the_client():
    groups = [["src", "ch", "text/plain", 5, [1.0, 2.0], [2, 3], "alice#1"]]
    stream = [
        (*HELLO, ()),
        ("ok", {"id": 1, "result": {"channels": {"x": 1}}}, ()),
        ("error", {"id": None, "code": "held", "message": "no"}, ()),
        ("frames", {"sub": 3, "groups": groups}, [b"ab", b"cde"]),
        ("gap", {"sub": 3, "source": "src", "channel": "ch", "missed": 4, "next_seq": 9}, ()),
    ]
    conn = Connection(Role.CLIENT)
    conn.receive_data(b"".join(encode_bytes(k, f, p) for k, f, p in stream))
    msgs = [conn.next_event()]
    conn.send(*CLIENT_HELLO)  # the client answers the broker's hello before anything else
    msgs += drain(conn)
    assert [m.type for m in msgs] == ["hello", "ok", "error", "frames", "gap"]
    assert msgs[1]["result"] == {"channels": {"x": 1}}
    frames = list(decode_groups(msgs[3]["groups"], msgs[3].payload))
    assert [(seq, ts, bytes(data), writer) for _, _, _, seq, ts, data, writer in frames] == [
        (5, 1.0, b"ab", "alice#1"),
        (6, 2.0, b"cde", "alice#1"),
    ]


def decode_in_chunks(stream: bytes, cuts: list[int]) -> list[Message]:
    conn = Connection(Role.BROKER)
    got = []
    bounds = [0, *sorted(cuts), len(stream)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        if a < b:  # an empty chunk would mean the peer closed
            conn.receive_data(stream[a:b])
            got += drain(conn)
    return got


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_chunk_sizes_do_not_change_what_is_decoded(data):
    stream = client_stream_bytes()
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=40), label="cuts")
    assert as_tuples(decode_in_chunks(stream, cuts)) == expected_stream()


def test_one_byte_at_a_time_decodes_the_same():
    stream = client_stream_bytes()
    assert as_tuples(decode_in_chunks(stream, list(range(1, len(stream))))) == expected_stream()


def test_bytes_wanted_says_how_much_of_a_message_is_missing():
    msg = encode_bytes(
        "put", {"source": "s", "channel": "c", "ts": [None], "sizes": [1000]}, [b"x" * 1000]
    )
    conn = broker_side()
    conn.receive_data(msg[:10])
    assert conn.next_event() is NEED_DATA
    assert conn.bytes_wanted == len(msg) - 10
    conn.receive_data(msg[10:])
    assert bytes(conn.next_event().payload) == b"x" * 1000


# --- randomized input -------------------------------------------------------------

header_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text()
    | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
message_types = st.sampled_from(
    ["hello", "client_hello", "put", "flush", "frames", "gap", "open_source", "subscribe", "x", ""]
)


@st.composite
def plausible_messages(draw):
    header = draw(st.dictionaries(st.text(max_size=10), header_values, max_size=6))
    if draw(st.booleans()):
        header["type"] = draw(message_types)
    for key in draw(st.lists(st.sampled_from(["id", "protocol", "name", "ts", "sizes"]))):
        header[key] = draw(header_values)
    payload = draw(st.binary(max_size=16))
    try:
        return raw(header, payload)
    except (OverflowError, ValueError, TypeError):
        return b""


@settings(max_examples=300, deadline=None)
@given(
    role=st.sampled_from([Role.BROKER, Role.CLIENT]),
    chunks=st.lists(st.binary(max_size=40) | plausible_messages(), max_size=6),
    eof=st.booleans(),
)
def test_random_input_only_ever_raises_remote_protocol_error(role, chunks, eof):
    conn = Connection(role, max_payload=1000)
    for chunk in [*chunks, b""] if eof else chunks:
        conn.receive_data(chunk)
        try:
            while (msg := conn.next_event()) is not NEED_DATA:
                if msg.type == "frames":
                    list(decode_groups(msg["groups"], msg.payload))
        except RemoteProtocolError:
            return


def test_a_frame_group_with_a_non_integer_seq_is_a_protocol_error():
    with pytest.raises(RemoteProtocolError):
        list(decode_groups([["s", "c", "t", "one", [1.0, 2.0], [1, 1], "w"]], memoryview(b"ab")))


@pytest.mark.parametrize(
    "groups",
    [
        [["s", "c", "t", 1, [1.0], [3], "w"]],  # sizes overrun the payload
        [["s", "c", "t", 1, [1.0, 2.0], [1], "w"]],  # columns differ in length
        [["s", "c", "t", 1, [1.0], [1]]],  # too few fields
        ["not a group"],
        [["s", "c", "t", 1, [1.0], [-1], "w"]],
    ],
)
def test_malformed_frame_groups_are_protocol_errors(groups):
    with pytest.raises(RemoteProtocolError):
        list(decode_groups(groups, memoryview(b"ab")))


# --- bad input from the peer -------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "garbage on the wire"),
        (struct.pack(">II", 0, 0), "header of 0 bytes"),
        (struct.pack(">II", MAX_HEADER_BYTES + 1, 0), "is not allowed"),
        (struct.pack(">II", 3, 0) + b"\xc1\xc1\xc1", "not valid msgpack"),
        (raw([1, 2, 3]), "must be a map with a string 'type'"),
        (raw({"type": 5}), "must be a map with a string 'type'"),
        (raw({"type": "teleport", "id": 1}), "unknown message type 'teleport'"),
        (raw({"type": "flush"}), "lacks its 'id' field"),
        (raw({"type": "flush", "id": "one"}), "'id' must be int, not str"),
        (raw({"type": "flush", "id": True}), "must be a number, not a boolean"),
        (raw({"type": "ok", "id": 1}), "a client may not send 'ok'"),
        (raw({"type": "list", "id": 1, "pattern": 3}), "'pattern' must be str"),
        (
            raw({"type": "put", "source": "s", "channel": "c", "ts": [1], "sizes": [5]}, b"abc"),
            "sizes add up to 5 bytes but the payload holds 3",
        ),
        (
            raw({"type": "put", "source": "s", "channel": "c", "ts": [1, 2], "sizes": [3]}, b"abc"),
            "different number of timestamps and sizes",
        ),
        (
            raw({"type": "put", "source": "s", "channel": "c", "ts": ["x"], "sizes": [3]}, b"abc"),
            "timestamps must be numbers or nil",
        ),
        (
            raw({"type": "put", "source": "s", "channel": "c", "ts": [1], "sizes": [-3]}, b"abc"),
            "sizes must be non-negative integers",
        ),
        (raw(dict(CLIENT_HELLO[1], type="client_hello")), "may only be sent once"),
    ],
)
def test_a_peer_breaking_the_protocol_gets_a_clear_error(data, complaint):
    conn = broker_side()
    conn.receive_data(data)
    with pytest.raises(RemoteProtocolError, match=complaint.replace("(", r"\(")) as info:
        drain(conn)
    assert complaint in str(info.value)
    # The connection is unusable afterwards.
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


def test_payload_over_the_cap_is_refused_before_it_arrives():
    conn = Connection(Role.BROKER, max_payload=1000)
    conn.receive_data(encode_bytes(*CLIENT_HELLO))
    drain(conn)
    conn.receive_data(struct.pack(">II", 10, 1001))
    with pytest.raises(
        RemoteProtocolError, match="payload of 1001 bytes exceeds the limit of 1000"
    ):
        conn.next_event()


def test_payload_at_the_cap_is_accepted():
    conn = Connection(Role.BROKER, max_payload=1000)
    conn.receive_data(encode_bytes(*CLIENT_HELLO))
    conn.receive_data(
        encode_bytes(
            "put", {"source": "s", "channel": "c", "ts": [None], "sizes": [1000]}, [b"\0" * 1000]
        )
    )
    assert [m.type for m in drain(conn)] == ["client_hello", "put"]


def test_peer_closing_mid_message_is_an_error_saying_so():
    conn = broker_side()
    msg = encode_bytes("flush", {"id": 1})
    conn.receive_data(msg[:-2])
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    with pytest.raises(
        RemoteProtocolError, match="closed the connection in the middle of a message"
    ):
        conn.next_event()


def test_peer_closing_between_messages_is_a_clean_end():
    conn = broker_side()
    conn.receive_data(encode_bytes("flush", {"id": 1}))
    conn.receive_data(b"")
    assert [m.type for m in drain(conn)] == ["flush"]


# --- handshake ----------------------------------------------------------------------


def test_broker_requires_client_hello_first():
    conn = Connection(Role.BROKER)
    conn.receive_data(encode_bytes("list", {"id": 1, "pattern": "*"}))
    with pytest.raises(RemoteProtocolError, match="expected 'client_hello' first, got 'list'"):
        conn.next_event()


def test_client_requires_hello_first():
    conn = Connection(Role.CLIENT)
    conn.receive_data(encode_bytes("ok", {"id": 1}))
    with pytest.raises(RemoteProtocolError, match="expected 'hello' first, got 'ok'"):
        conn.next_event()


def test_unsupported_protocol_version_is_refused_naming_the_supported_ones():
    conn = Connection(Role.BROKER)
    conn.receive_data(encode_bytes("client_hello", {"protocol": 99, "name": "future"}))
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert "protocol version 99 is not supported" in str(info.value)
    assert f"speaks {PROTOCOL_VERSION}" in str(info.value)


def test_handshake_records_the_peer_and_the_version():
    conn = broker_side()
    assert conn.protocol == PROTOCOL_VERSION
    assert conn.peer_hello is not None and conn.peer_hello["name"] == "tester"


def test_client_may_not_send_requests_before_its_hello():
    conn = Connection(Role.CLIENT)
    with pytest.raises(LocalProtocolError, match="send 'client_hello' before any request"):
        conn.send("flush", {"id": 1})
    conn.send(*CLIENT_HELLO)
    assert b"".join(conn.send("flush", {"id": 1}))  # now allowed


def test_local_mistakes_are_local_protocol_errors():
    client = Connection(Role.CLIENT)
    with pytest.raises(LocalProtocolError, match="a client may not send 'hello'"):
        client.send(*HELLO)
    client.send(*CLIENT_HELLO)
    with pytest.raises(LocalProtocolError, match="lacks its 'pattern' field"):
        client.send("list", {"id": 1})
    with pytest.raises(LocalProtocolError, match="unknown message type"):
        client.send("teleport", {})
    broker = Connection(Role.BROKER)
    with pytest.raises(LocalProtocolError, match="a broker may not send 'put'"):
        broker.send("put", {"source": "s", "channel": "c", "ts": [], "sizes": []})


def test_nothing_can_be_sent_on_a_closed_connection():
    conn = broker_side()
    conn.receive_data(b"garbage!" * 4)
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    with pytest.raises(LocalProtocolError, match="closed"):
        conn.send("ok", {"id": 1})


# --- splitting large deliveries ----------------------------------------------------


def _group(seq: int, n: int, size: int = 0, writer: str = "w#1") -> list:
    return [
        "daq_a_data_source",
        "x",
        "application/octet-stream",
        seq,
        [1.0] * n,
        [size] * n,
        writer,
    ]


def _flat(parts):
    """(seq, size, payload) of every frame of every part, in order."""
    out = []
    for groups, payloads in parts:
        frames = [(g[3] + k, g[5][k]) for g in groups for k in range(len(g[5]))]
        assert len(frames) == len(payloads)
        out += [(seq, size, p) for (seq, size), p in zip(frames, payloads, strict=True)]
    return out


def test_a_delivery_that_fits_is_one_part_unchanged():
    groups, payloads = [_group(1, 3, 2)], [b"aa", b"bb", b"cc"]
    assert split_frames(groups, payloads, 10, 100) == [(groups, payloads)]


def test_parts_keep_every_frame_in_order_within_frame_and_byte_budgets():
    groups = [_group(1, 5, 10, "w#1"), _group(6, 7, 10, "w#2")]
    payloads = [bytes([i]) * 10 for i in range(12)]
    parts = split_frames(groups, payloads, 4, 25)
    assert [sum(len(g[5]) for g in gs) for gs, _ in parts] == [2, 2, 2, 2, 2, 2]
    assert all(sum(map(len, p)) <= 25 for _, p in parts)
    assert _flat(parts) == [(i + 1, 10, payloads[i]) for i in range(12)]
    # A group split across parts keeps its writer, and seqs run on.
    assert [(g[3], g[6]) for gs, _ in parts for g in gs][2:4] == [(5, "w#1"), (6, "w#2")]


def test_a_frame_larger_than_the_byte_budget_travels_alone():
    groups, payloads = [_group(1, 3, 50)], [b"a" * 50, b"b" * 50, b"c" * 50]
    parts = split_frames(groups, payloads, 100, 10)
    assert [len(p) for _, p in parts] == [1, 1, 1]
    assert _flat(parts) == [(1, 50, b"a" * 50), (2, 50, b"b" * 50), (3, 50, b"c" * 50)]


def test_every_part_header_fits_the_limit():
    """500 000 frames (a 5 MB header in one message) become parts under 4 MiB each."""
    n = 500_000
    groups, payloads = [_group(1, n)], [b""] * n
    parts = split_frames(groups, payloads, n, 2**20)
    assert len(parts) > 1
    for part_groups, _ in parts:
        header = msgpack.packb({"type": "frames", "id": 1, "groups": part_groups, "more": True})
        assert len(header) <= MAX_HEADER_BYTES
    assert sum(len(g[5]) for gs, _ in parts for g in gs) == n
    # Groups with long strings (many writers) count too.
    writer = "x" * 60_000
    groups = [_group(i + 1, 1, 0, writer + str(i % 2)) for i in range(200)]
    parts = split_frames(groups, [b""] * 200, 8192, 2**20)
    assert len(parts) > 1
    for part_groups, _ in parts:
        assert len(msgpack.packb({"groups": part_groups})) <= MAX_HEADER_BYTES
