"""The sans-I/O wire protocol: framing, the message table, the handshake."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turbine import LocalProtocolError, RemoteProtocolError, checks
from turbine._constants import MAX_HEADER_BYTES, PROTOCOL_VERSION
from turbine.checks import STRING_LIMITS
from turbine.groups import decode_groups, split_frames
from turbine.messages import (
    SPECS,
    ClientHello,
    Error,
    Fetch,
    Flush,
    Frames,
    GapReport,
    Hello,
    ListSources,
    Message,
    Ok,
    OpenSource,
    Put,
    Subscribe,
    header_fields,
)
from turbine.protocol import (
    NEED_DATA,
    Connection,
    Role,
    encode_bytes,
    encode_frames,
    encode_message,
    encode_ok,
    encode_put,
)

HELLO = ("hello", {"protocol": PROTOCOL_VERSION, "software": "turbine test"})
CLIENT_HELLO = ("client_hello", {"protocol": PROTOCOL_VERSION, "name": "tester"})
CLIENT_HELLO_MSG = ClientHello(protocol=PROTOCOL_VERSION, name="tester")


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


def put_of(ts: object, sizes: list[object], payload: bytes) -> bytes:
    """A put of source s, channel c, framed by hand (see :func:`raw`)."""
    return raw({"type": "put", "source": "s", "channel": "c", "ts": ts, "sizes": sizes}, payload)


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
    return [(m.type, header_fields(m), bytes(getattr(m, "payload", b""))) for m in msgs]


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
    conn.send(CLIENT_HELLO_MSG)  # the client answers the broker's hello before anything else
    msgs += drain(conn)
    assert [type(m) for m in msgs] == [Hello, Ok, Error, Frames, GapReport]
    assert msgs[1] == Ok(id=1, result={"channels": {"x": 1}})
    assert msgs[2] == Error(id=None, code="held", message="no")
    assert msgs[4] == GapReport(sub=3, source="src", channel="ch", missed=4, next_seq=9)
    assert (msgs[3].sub, msgs[3].id) == (3, None)
    frames = list(decode_groups(msgs[3].groups, msgs[3].payload))
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

# Every kind of value a msgpack header can hold, in containers two deep at most
# (a list of lists is a frame group's shape).  A field's check looks at a
# value's type, a group's or a put's at the items of its lists; deeper
# nesting is test_hostile_messages_only_ever_raise_remote_protocol_error's.
# Not a recursive strategy: drawing one cost most of this test's time.
leaf_values = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text()
    | st.binary(max_size=8)
)
flat_values = (
    leaf_values
    | st.lists(leaf_values, max_size=4)
    | st.dictionaries(st.text(max_size=8), leaf_values, max_size=4)
)
header_values = (
    leaf_values
    | st.lists(flat_values, max_size=4)
    | st.dictionaries(st.text(max_size=8), flat_values, max_size=4)
)
#: Values of each type the message table gives a field (``object``: any value).
typed_values = {
    bool: st.booleans(),
    int: st.integers(-(2**63), 2**64 - 1),
    float: st.floats(),
    str: st.text() | st.text(min_size=60, max_size=300),  # over some limits
    list: st.lists(flat_values, max_size=4),
    dict: st.dictionaries(st.text(max_size=8), flat_values, max_size=4),
    bytes: st.binary(max_size=40),  # a put's packed ts: 8 bytes a frame, or not
    object: header_values,
}
known_types = st.sampled_from(sorted(SPECS))
other_types = st.sampled_from(["x", ""]) | st.text()  # the error cuts a long one
field_names = st.sampled_from(sorted({name for spec in SPECS.values() for name in spec.names}))


@st.composite
def field_values(draw, types):
    """A field's value: 3 times in 4 of a type it may hold, else of any type."""
    if not draw(st.integers(0, 3)):
        return draw(header_values)
    allowed = types if isinstance(types, tuple) else (types,)
    return draw(st.one_of(*[typed_values[t] for t in allowed]))


@st.composite
def plausible_messages(draw):
    """A framed message with a random header: most often a known type with its
    own fields, mostly present and of a type they may hold, among unknown keys
    and other types' fields, so that every type's checks are reached."""
    header = draw(st.dictionaries(st.text(max_size=10), header_values, max_size=3))
    typed = draw(st.integers(0, 3))  # 0: no type, 1: an unknown one, else a known one
    if typed == 1:
        header["type"] = draw(other_types)
    elif typed > 1:
        spec = SPECS[kind := draw(known_types)]
        header["type"] = kind
        for name, types in spec.required.items():
            if draw(st.integers(0, 7)):  # 1 in 8 left out
                header[name] = draw(field_values(types))
        optional = sorted(spec.optional)
        for name in draw(st.lists(st.sampled_from(optional), unique=True)) if optional else []:
            header[name] = draw(field_values(spec.optional[name]))
    for key in draw(st.lists(field_names, max_size=2)):
        header[key] = draw(header_values)
    payload = draw(st.binary(max_size=16))
    try:
        return raw(header, payload)
    except (OverflowError, ValueError, TypeError):
        return b""


@settings(max_examples=300, deadline=None)
@given(
    role=st.sampled_from([Role.BROKER, Role.CLIENT]),
    greeted=st.booleans(),
    chunks=st.lists(st.binary(max_size=40) | plausible_messages(), max_size=6),
    eof=st.booleans(),
)
def test_random_input_only_ever_raises_remote_protocol_error(role, greeted, chunks, eof):
    conn = Connection(role, max_payload=1000)
    if greeted:  # past the handshake: the messages after a right hello
        chunks = [encode_bytes(*(CLIENT_HELLO if role is Role.BROKER else HELLO)), *chunks]
    for chunk in [*chunks, b""] if eof else chunks:
        conn.receive_data(chunk)
        try:
            while (msg := conn.next_event()) is not NEED_DATA:
                if msg.type == "frames":
                    list(decode_groups(msg.groups, msg.payload))
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
        [["s", "c", "t", 1, [1.0, 2.0], [2, 2.0], "w"]],  # a size that is a float
        [["s", "c", "t", 1, [1.0, 2.0], [1, True], "w"]],  # a size that is a bool
        [["s", "c", "t", 1, [1.0, None], [1, 1], "w"]],  # a timestamp that is nil
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
        (
            raw({"type": "flush", "id": True}),
            "'flush' field 'id' must be an integer, not a boolean",
        ),
        (raw({"type": "ok", "id": 1}), "a client may not send 'ok'"),
        (raw({"type": "list", "id": 1, "pattern": 3}), "'pattern' must be str"),
        (
            put_of([1], [5], b"abc"),
            "sizes add up to 5 bytes but the payload holds 3",
        ),
        (
            put_of([1, 2], [3], b"abc"),
            "different number of timestamps and sizes",
        ),
        (
            put_of(["x"], [3], b"abc"),
            "timestamps must be numbers or nil",
        ),
        (
            put_of([None, "x"], [1, 2], b"abc"),
            "timestamps must be numbers or nil",
        ),
        (
            put_of([1], [-3], b"abc"),
            "sizes must be non-negative integers",
        ),
        (
            put_of([None, None], [3, 3.0], b"abcdef"),
            "sizes must be non-negative integers",
        ),
        (
            put_of([None, None], [1, True], b"ab"),
            "sizes must be non-negative integers",
        ),
        (
            put_of([None, None], [0, False], b""),
            "sizes must be non-negative integers",
        ),
        (
            put_of(b"\0" * 12, [3], b"abc"),
            "packed timestamps must be 8 bytes per frame: 12 bytes for 1 sizes",
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


def test_a_version_below_the_oldest_is_refused_naming_the_supported_ones():
    conn = Connection(Role.BROKER)
    conn.receive_data(encode_bytes("client_hello", {"protocol": 0, "name": "ancient"}))
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert "protocol version 0 is not supported" in str(info.value)
    assert f"speaks {PROTOCOL_VERSION}" in str(info.value)


@pytest.mark.parametrize("role", [Role.BROKER, Role.CLIENT])
def test_a_newer_peer_is_answered_in_our_version(role):
    """Both sides speak the lower of the two versions; a higher proposal is no error."""
    conn = Connection(role)
    kind = "client_hello" if role is Role.BROKER else "hello"
    fields = {"protocol": PROTOCOL_VERSION + 1, "name": "n", "software": "s"}
    conn.receive_data(raw({"type": kind, **fields}))
    assert conn.next_event().type == kind
    assert conn.protocol == PROTOCOL_VERSION


def test_every_string_field_of_every_message_has_a_length_limit():
    strings = {
        name
        for spec in SPECS.values()
        for name, types in (*spec.required.items(), *spec.optional.items())
        if types is str or (isinstance(types, tuple) and str in types)
    }
    assert {"name", "source", "pattern", "message"} <= strings
    assert strings <= set(STRING_LIMITS)


def test_a_message_type_met_for_the_first_time_is_checked_in_full(monkeypatch):
    # Each type's checks are planned when its first message arrives.
    monkeypatch.setattr(checks, "_PLANS", {})
    conn = broker_side()
    conn.receive_data(raw({"type": "list", "id": 1, "pattern": "p" * 10**6}))
    with pytest.raises(RemoteProtocolError, match="'list' field 'pattern' has 1000000"):
        conn.next_event()
    assert set(checks._PLANS) == {"client_hello", "list"}


def test_a_boolean_for_a_number_is_told_what_it_should_be():
    conn = broker_side()
    conn.receive_data(raw({"type": "fetch", "id": 1, "pattern": "*", "start": True}))
    with pytest.raises(RemoteProtocolError, match="'fetch' field 'start' must be a number, not"):
        conn.next_event()


@pytest.mark.parametrize(
    "value", [msgpack.ExtType(5, b"x"), [1, {"a": msgpack.ExtType(1, b"")}], msgpack.Timestamp(1)]
)
def test_an_extension_type_anywhere_is_a_protocol_error(value):
    conn = broker_side()
    conn.receive_data(raw({"type": "flush", "id": 1, "future_field": value}))
    with pytest.raises(RemoteProtocolError, match="extension type"):
        conn.next_event()


def test_handshake_records_the_peer_and_the_version():
    conn = broker_side()
    assert conn.protocol == PROTOCOL_VERSION
    assert conn.peer_hello == CLIENT_HELLO_MSG


def test_client_may_not_send_requests_before_its_hello():
    conn = Connection(Role.CLIENT)
    with pytest.raises(LocalProtocolError, match="send 'client_hello' before any request"):
        conn.send(Flush(id=1))
    conn.send(CLIENT_HELLO_MSG)
    assert b"".join(conn.send(Flush(id=1))) == encode_bytes("flush", {"id": 1})  # now allowed


def test_local_mistakes_are_local_protocol_errors():
    client = Connection(Role.CLIENT)
    with pytest.raises(LocalProtocolError, match="a client may not send 'hello'"):
        client.send(Hello(**HELLO[1]))
    client.send(CLIENT_HELLO_MSG)
    with pytest.raises(LocalProtocolError, match="'list' field 'pattern' must be str, not int"):
        client.send(ListSources(id=1, pattern=3))  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="'open_source' field 'cache_frames' must be a"):
        client.send(OpenSource(id=1, source="s", cache_frames=True))
    broker = Connection(Role.BROKER)
    with pytest.raises(LocalProtocolError, match="a broker may not send 'put'"):
        broker.send(Put(source="s", channel="c", ts=[], sizes=[]))


def test_a_message_lacking_a_field_cannot_be_built():
    with pytest.raises(TypeError, match="pattern"):
        ListSources(id=1)  # type: ignore[call-arg]


def test_nothing_can_be_sent_on_a_closed_connection():
    conn = broker_side()
    conn.receive_data(b"garbage!" * 4)
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    with pytest.raises(LocalProtocolError, match="closed"):
        conn.send(Ok(id=1))


# --- the message classes on the wire ---------------------------------------------------

# The worked examples of docs/protocol.rst ("bytes on the wire"), as the
# message classes encode them: the wire format is the documented one, byte for byte.
_F64 = struct.Struct("<d")
DOC_EXAMPLES = [
    (
        Hello(protocol=1, software="turbine 0.1.0", max_frame=67108864, time=1700000000.0),
        [],
        "0000004a0000000085a474797065a568656c6c6fa870726f746f636f6c01a8736f667477617265ad"
        "74757262696e6520302e312e30a96d61785f6672616d65ce04000000a474696d65cb41d954fc40000000",
    ),
    (
        ClientHello(protocol=1, name="matlab"),
        [],
        "000000290000000083a474797065ac636c69656e745f68656c6c6fa870726f746f636f6c01a46e616d65"
        "a66d61746c6162",
    ),
    (
        OpenSource(id=1, source="daq_rig1_data_source", channels={"x": "application/x-float64-le"}),
        [],
        "000000570000000084a474797065ab6f70656e5f736f75726365a2696401a6736f75726365b4646171"
        "5f726967315f646174615f736f75726365a86368616e6e656c7381a178b86170706c69636174696f6e"
        "2f782d666c6f617436342d6c65",
    ),
    (
        Put(source="daq_rig1_data_source", channel="x", ts=[None, 1700000000.25], sizes=[8, 8]),
        [_F64.pack(1.5), _F64.pack(-2.0)],
        "000000470000001085a474797065a3707574a6736f75726365b46461715f726967315f646174615f73"
        "6f75726365a76368616e6e656ca178a2747392c0cb41d954fc40100000a573697a65739208080000000000"
        "00f83f00000000000000c0",
    ),
    (Flush(id=2), [], "000000100000000082a474797065a5666c757368a2696402"),
    (Ok(id=2), [], "000000150000000083a474797065a26f6ba2696402a6726573756c74c0"),
    (
        Frames(
            sub=3,
            groups=[
                [
                    "daq_rig1_data_source",
                    "x",
                    "application/x-float64-le",
                    1,
                    [1700000000.125, 1700000000.25],
                    [8, 8],
                    "matlab#1 (127.0.0.1:50412)",
                ]
            ],
        ),
        [_F64.pack(1.5), _F64.pack(-2.0)],
        "0000007d0000001083a474797065a66672616d6573a373756203a667726f7570739197b46461715f7269"
        "67315f646174615f736f75726365a178b86170706c69636174696f6e2f782d666c6f617436342d6c6501"
        "92cb41d954fc40080000cb41d954fc4010000092080" + "8ba6d61746c616223312028313237"
        "2e302e302e313a353034313229000000000000f83f00000000000000c0",
    ),
]


def opened(role: Role) -> Connection:
    """A connection past the handshake both ways."""
    conn = Connection(role)
    if role is Role.CLIENT:
        conn.receive_data(encode_bytes(*HELLO))
        assert isinstance(conn.next_event(), Hello)
        conn.send(CLIENT_HELLO_MSG)
    else:
        conn.receive_data(encode_bytes(*CLIENT_HELLO))
        assert conn.next_event() == CLIENT_HELLO_MSG
    return conn


@pytest.mark.parametrize(("msg", "payloads", "wire"), DOC_EXAMPLES, ids=lambda x: type(x).__name__)
def test_message_classes_encode_the_documented_bytes(msg, payloads, wire):
    assert b"".join(encode_message(msg, payloads)).hex() == wire
    ours, theirs = (
        (Role.BROKER, Role.CLIENT) if msg.sender == "broker" else (Role.CLIENT, Role.BROKER)
    )
    handshake = isinstance(msg, (Hello, ClientHello))
    sender = Connection(ours) if handshake else opened(ours)
    assert b"".join(sender.send(msg, payloads)).hex() == wire  # the checked path: the same
    receiver = Connection(theirs) if handshake else opened(theirs)
    receiver.receive_data(bytes.fromhex(wire))
    (got,) = drain(receiver)
    assert type(got) is type(msg) and header_fields(got) == header_fields(msg)
    assert bytes(getattr(got, "payload", b"")) == b"".join(payloads)


def test_nil_in_an_optional_field_is_as_good_as_absent():
    conn = broker_side()
    conn.receive_data(raw({"type": "subscribe", "id": 1, "sub": 2, "pattern": "*", "start": None}))
    conn.receive_data(raw({"type": "fetch", "id": 2, "pattern": "*", "newest": None, "after": 3}))
    assert drain(conn) == [
        Subscribe(id=1, sub=2, pattern="*"),
        Fetch(id=2, pattern="*", after=3),
    ]


def test_fields_a_message_does_not_have_are_ignored():
    """A newer peer may add fields; this side reads what it knows."""
    conn = broker_side()
    conn.receive_data(raw({"type": "flush", "id": 1, "priority": "high"}))
    put = {"type": "put", "source": "s", "channel": "c", "ts": [None], "sizes": [2]}
    conn.receive_data(raw({**put, "payload": "not this"}, b"ab"))  # a name the class uses itself
    flush, got = drain(conn)
    assert flush == Flush(id=1)
    assert (got.source, got.sizes, bytes(got.payload)) == ("s", [2], b"ab")


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


# --- hostile structure ---------------------------------------------------------------

long_text = st.integers(0, 3).map(lambda k: "x" * (10**k * 300))


@st.composite
def nested(draw):
    """msgpack bytes of arrays and maps nested up to 2000 deep (msgpack's own limit is ~1000)."""
    depth = draw(st.integers(1, 2000))
    opener = draw(st.sampled_from([b"\x91", b"\x81\xa1k"]))
    return opener * depth + b"\xc0"


@st.composite
def hostile_messages(draw):
    """Messages of real types with fields of the wrong type, too long, or nested too deep."""
    kind = draw(
        st.sampled_from(["client_hello", "open_source", "put", "subscribe", "fetch", "list"])
    )
    fields = {"type": kind, "id": 1, "sub": 1, "protocol": PROTOCOL_VERSION, "name": "n"}
    fields |= {"source": "daq_a_data_source", "channel": "x", "pattern": "*", "ts": [], "sizes": []}
    for key in draw(
        st.lists(
            st.sampled_from(["name", "source", "channel", "pattern", "content_type", "start"]),
            max_size=3,
        )
    ):
        fields[key] = draw(long_text | header_values)
    head = msgpack.packb(fields, use_bin_type=True)
    if draw(st.booleans()):  # one more field, nested deep, appended to the map
        key = msgpack.packb("deep")
        head = bytes([head[0] + 1]) + head[1:] + key + draw(nested())
    return struct.pack(">II", len(head), 0) + head


@settings(max_examples=200, deadline=None)
@given(chunks=st.lists(hostile_messages(), min_size=1, max_size=4))
def test_hostile_messages_only_ever_raise_remote_protocol_error(chunks):
    conn = broker_side()
    for chunk in chunks:
        conn.receive_data(chunk)
        try:
            drain(conn)
        except RemoteProtocolError:
            return  # the connection is closed: a clear error, nothing else


def test_a_header_nested_as_deep_as_msgpack_allows_is_no_recursion_error():
    head = b"\x83\xa4type\xa5flush\xa2id\x01\xa1x" + b"\x91" * 900 + b"\xc0"
    conn = broker_side()
    conn.receive_data(struct.pack(">II", len(head), 0) + head)
    assert conn.next_event().type == "flush"  # unknown keys are ignored, however deep


def test_the_direct_encodings_are_the_bytes_of_their_checked_messages():
    # The hot paths encode every flush's ok, every delivery and every batch a
    # client puts without a message object: a field added to Ok, Frames or
    # Put must not leave them behind.
    broker = Connection(Role.BROKER)
    broker.send(Hello(protocol=PROTOCOL_VERSION, software="t"))
    assert encode_ok(7) == broker.send(Ok(id=7))
    groups = [["daq_rig_data_source", "x", "text/plain", 5, [1.5, None], [2, 1], "w"]]
    payloads = [b"ab", b"c"]
    assert encode_frames(3, groups, payloads) == broker.send(Frames(sub=3, groups=groups), payloads)
    client = Connection(Role.CLIENT)
    client.send(ClientHello(protocol=PROTOCOL_VERSION, name="t"))
    ts, sizes, source = [1.5, None], [2, 1], "daq_rig_data_source"
    put = Put(source=source, channel="x", ts=ts, sizes=sizes, producer="p1", pseq=4)
    assert encode_put(source, "x", ts, sizes, "p1", 4, payloads) == client.send(put, payloads)
