"""The NTCP ASCII protocol, sans-I/O: parsing, formatting, framing."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from components.ntcp.protocol import (
    AXES,
    TYPES,
    VERBS,
    AxisValue,
    ControlPointValues,
    LineBuffer,
    LineTooLongError,
    NtcpProtocolError,
    Reply,
    Request,
    encode_line,
    format_control_point_reply,
    format_not_ok,
    format_number,
    format_ok,
    format_request,
    parse_control_point_reply,
    parse_reply,
    parse_request,
    refuse,
    reply_count,
    verb_of,
)
from components.ntcp.session import compare_replies, scripted_requests

# ------------------------------------------------------------------ numbers


def test_numbers_are_written_with_ten_digit_exponent_notation():
    assert format_number(1.5) == "1.5000000000E+00"
    assert format_number(-0.00025) == "-2.5000000000E-04"
    assert format_number(0) == "0.0000000000E+00"
    assert format_number(123456.0) == "1.2345600000E+05"


# ------------------------------------------------------------------ requests


def test_sessions_and_parameters_parse():
    assert parse_request("open-session\tdemo\n") == Request("open-session", name="demo")
    assert parse_request("close-session\tdemo\r\n") == Request("close-session", name="demo")
    assert parse_request("set-parameter\tt1\tnstep\t100") == Request(
        "set-parameter", trans_id="t1", name="nstep", value="100"
    )
    assert parse_request("get-parameter\tt2\tnstep") == Request(
        "get-parameter", trans_id="t2", name="nstep"
    )
    assert parse_request("execute\tt3") == Request("execute", trans_id="t3")
    assert parse_request("cancel\tt3") == Request("cancel", trans_id="t3")
    assert parse_request("get-control-point\tt4\tMDL-00-01") == Request(
        "get-control-point", trans_id="t4", points=("MDL-00-01",)
    )


def test_the_dialect_of_deployed_clients_parses():
    # A space instead of the tab after the verb, then tabs.
    assert parse_request("open-session dummySession\r\n") == Request(
        "open-session", name="dummySession"
    )
    assert parse_request("set-parameter dummySetParam\tnstep\t0") == Request(
        "set-parameter", trans_id="dummySetParam", name="nstep", value="0"
    )
    # Spaces inside fields are kept: transaction ids and session names hold them.
    assert parse_request("execute\ttrans20091 4.328[1 0 4]") == Request(
        "execute", trans_id="trans20091 4.328[1 0 4]"
    )
    assert parse_request("open-session\tPerl Test Script") == Request(
        "open-session", name="Perl Test Script"
    )
    # A trailing tab is dropped.
    assert parse_request("execute\tt1\t") == Request("execute", trans_id="t1")
    # Several control points, sub-device suffixes, repeats allowed, in order.
    assert parse_request("get-control-point\tdummy\tMDL-00-01:LBCB1\tMDL-00-01:LBCB2") == (
        Request(
            "get-control-point", trans_id="dummy", points=("MDL-00-01:LBCB1", "MDL-00-01:LBCB2")
        )
    )
    # The keyword control-point before the second and later control points, or not.
    with_keyword = parse_request(
        "propose\tT\tMDL-00-01\tx\tdisplacement\t1.0E+00\tcontrol-point\tCPNode02\ty\tforce\t2"
    )
    without = parse_request(
        "propose\tT\tMDL-00-01\tx\tdisplacement\t1.0E+00\tCPNode02\ty\tforce\t2"
    )
    assert with_keyword == without
    assert [g.control_point for g in without.groups] == ["MDL-00-01", "CPNode02"]
    # Lower-case exponents, as MATLAB's %.10e writes them.
    assert parse_request("propose\tT\tA\tx\tdisplacement\t1.2500000000e-01").groups[0].values == (
        AxisValue("x", "displacement", 0.125),
    )


def test_verb_reply_count_and_refusal():
    assert verb_of("execute trans 1") == "execute"
    assert verb_of("execute\tt1\r\n") == "execute"
    assert verb_of("executes\tt1") is None and verb_of("") is None
    assert verb_of("execute\tt1\rexecute\tt2") is None  # a line break inside: no request
    assert reply_count("get-control-point\tdummy\tA\tB\tA") == 3
    assert reply_count("get-control-point\tdummy") == 1  # malformed: one NOT OK
    assert reply_count("get-control-point\tdummy\tA\x0bB\tC") == 1  # a name at fault too
    assert reply_count("get-control-point dummy\tA B\t\x01C\r\n") == 2  # odd, but names
    assert reply_count("execute\tt1") == 1
    assert refuse("get-control-point\td\tA\tB", "lost\tit") == ["NOT OK\tlost it"] * 2


def test_propose_with_several_control_points_splits_into_groups():
    line = (
        "propose\tt1\tMDL-00-01\tx\tdisplacement\t1.0E+00\tz\trotation\t-2.5E-02"
        "\tMDL-00-02\ty\tforce\t3.0E+01\n"
    )
    request = parse_request(line)
    assert request.verb == "propose"
    assert request.trans_id == "t1"
    assert request.groups == (
        ControlPointValues(
            "MDL-00-01",
            (AxisValue("x", "displacement", 1.0), AxisValue("z", "rotation", -0.025)),
        ),
        ControlPointValues("MDL-00-02", (AxisValue("y", "force", 30.0),)),
    )


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("", "empty request"),
        ("\r\n", "empty request"),
        ("frobnicate\tt1", "unknown request 'frobnicate'"),
        ("executes\tt1", "unknown request 'executes'"),
        ("frob t1\tt2", "unknown request 'frob t1'"),
        ("get-control-point\tt1", "get-control-point takes <transId> <controlPoint>"),
        ("propose\tt1\tA\tx\tforce\t1\tcontrol-point", "needs a control point name after it"),
        ("propose\tt1\tA\tx\tforce\t1\tcontrol-point\tx", "where the name after control-point"),
        ("execute", "execute takes 1 field (<transId>), got 0"),
        ("execute\tt1\textra", "execute takes 1 field (<transId>), got 2"),
        ("get-parameter\tt1", "get-parameter takes 2 fields (<transId> <name>), got 1"),
        ("execute\t", "execute takes 1 field (<transId>), got 0"),
        ("open-session\t  ", "name (field 2) is empty"),
        ("execute\tt\x0b1", "must not contain tabs or line breaks"),
        ("get-control-point\tt1\tA\u2003B", "controlPoint (field 3) 'A\\u2003B' must not"),
        ("get-control-point\t \tA", "get-control-point: transId (field 2) is empty"),
        ("propose", "propose needs <transId>"),
        ("propose\tt1", "expected <controlPoint> <axis> <type> <value>..., got nothing"),
        ("propose\tt1\tx\tdisplacement\t1", "axis 'x' but no control point precedes it"),
        ("propose\tt1\tMDL-00-01", "control point MDL-00-01 has no <axis> <type> <value>"),
        ("propose\tt1\tMDL-00-01\tx\tdisplacement", "needs a type and a value"),
        ("propose\tt1\tMDL-00-01\tx\tspeed\t1", "type 'speed'; expected one of displacement"),
        ("propose\tt1\tMDL-00-01\tx\tdisplacement\tabc", "'abc' is not a number"),
        ("propose\tt1\tMDL-00-01\tx\tdisplacement\tnan", "'nan' is not a finite number"),
        ("propose\tt1\tMDL-00-01\tx\tdisplacement\t1\t2", "unexpected number '2' at field 7"),
        ("propose\tt1\tMDL-00-01\tw\tdisplacement\t1", "control point MDL-00-01 has no"),
        (
            "propose\tt1\tMDL-00-01\tx\tforce\t1\tx\tforce\t2",
            "MDL-00-01 x force is given twice",
        ),
        (
            "propose\tt1\tA\tx\tforce\t1\tB\tx\tforce\t1\tA\ty\tforce\t1",
            "control point A appears twice",
        ),
    ],
)
def test_malformed_requests_are_refused_with_a_reason(line, expected):
    with pytest.raises(NtcpProtocolError) as info:
        parse_request(line)
    assert expected in info.value.reason
    assert "\n" not in info.value.reason


def test_format_request_round_trips():
    requests = [
        Request("open-session", name="demo"),
        Request("set-parameter", trans_id="t1", name="k", value="1 2 3"),
        Request("get-parameter", trans_id="t2", name="k"),
        Request(
            "propose",
            trans_id="t3",
            groups=(
                ControlPointValues("MDL-00-01", (AxisValue("x", "displacement", 0.125),)),
                ControlPointValues("MDL-00-02", (AxisValue("z", "moment", -7.5),)),
            ),
        ),
        Request("execute", trans_id="t3"),
        Request("get-control-point", trans_id="t4", points=("MDL-00-01",)),
        Request("get-control-point", trans_id="dummy", points=("A:LBCB1", "A:LBCB2", "A:LBCB1")),
        Request("execute", trans_id="trans2009 4.328[  2.]"),
    ]
    for request in requests:
        assert parse_request(format_request(request)) == request
    assert (
        format_request(requests[3])
        == "propose\tt3\tMDL-00-01\tx\tdisplacement\t1.2500000000E-01\tMDL-00-02\tz\tmoment\t-7.5000000000E+00"
    )


def test_format_request_refuses_incomplete_requests():
    with pytest.raises(NtcpProtocolError, match="missing a field"):
        format_request(Request("execute"))
    with pytest.raises(NtcpProtocolError, match="at least one control point"):
        format_request(Request("propose", trans_id="t1"))


def test_scripted_requests_are_all_valid():
    lines = scripted_requests(steps=3)
    for line in lines:
        parse_request(line)
    assert lines[0] == "open-session\tntcp-script"
    assert lines[-1] == "close-session\tntcp-script"


# ------------------------------------------------------------------ replies


def test_replies_format_and_parse():
    assert format_ok("t1") == "OK\t0\tt1"
    assert parse_reply("OK\t0\tt1\n") == Reply(ok=True, code=0, fields=("t1",))
    assert format_not_ok("bad\tthing\nhappened") == "NOT OK\tbad thing happened"
    assert parse_reply("NOT OK\tout of limits\r\n") == Reply(ok=False, reason="out of limits")
    assert parse_reply("NOTOK\tout of limits") == Reply(ok=False, reason="out of limits")
    assert parse_reply("NOT OK out of limits") == Reply(ok=False, reason="out of limits")
    assert parse_reply("NOTOK") == Reply(ok=False, reason="")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("", "must start with OK or NOT OK"),
        ("YES\t0", "must start with OK or NOT OK"),
        ("OK", "lacks its status code"),
        ("OK\tzero\tt1", "status code 'zero' is not an integer"),
    ],
)
def test_malformed_replies_are_refused_with_a_reason(line, expected):
    with pytest.raises(NtcpProtocolError, match=expected):
        parse_reply(line)


def test_control_point_reply_round_trips():
    values = ControlPointValues(
        "MDL-00-01",
        (AxisValue("x", "displacement", 0.5), AxisValue("x", "force", 50.25)),
    )
    line = format_control_point_reply("t9", values)
    assert line == (
        "OK\t0\tt9\tMDL-00-01\tx\tdisplacement\t5.0000000000E-01\tx\tforce\t5.0250000000E+01"
    )
    assert parse_control_point_reply(parse_reply(line)) == ("t9", values)
    with pytest.raises(NtcpProtocolError, match="get-control-point failed: no such point"):
        parse_control_point_reply(parse_reply("NOT OK\tno such point"))
    with pytest.raises(NtcpProtocolError, match="followed by axis/type/value triplets"):
        parse_control_point_reply(parse_reply("OK\t0\tt9\tMDL-00-01\tx"))


# ------------------------------------------------------------------ framing


def test_line_buffer_splits_a_stream_at_any_boundary():
    stream = b"open-session\ta\nexecute\tt1\r\nexecute\tt2\n"
    for cut in range(len(stream) + 1):
        buffer = LineBuffer()
        lines = []
        for chunk in (stream[:cut], stream[cut:]):
            buffer.receive_data(chunk)
            while (line := buffer.next_line()) is not None:
                lines.append(line)
        assert lines == ["open-session\ta", "execute\tt1", "execute\tt2"]
        assert buffer.buffered == 0


def test_line_buffer_reports_an_overlong_line_once_and_recovers():
    buffer = LineBuffer(max_line_length=16)
    buffer.receive_data(b"execute\tt1\n" + b"x" * 40)
    assert buffer.next_line() == "execute\tt1"
    with pytest.raises(LineTooLongError, match="longer than 16 bytes"):
        buffer.next_line()
    assert buffer.buffered == 0  # the over-long line is not held
    buffer.receive_data(b"y" * 1000)
    assert buffer.next_line() is None
    assert buffer.buffered == 0
    buffer.receive_data(b"zzz\nexecute\tt2\n")
    assert buffer.next_line() == "execute\tt2"
    assert buffer.next_line() is None


def test_line_buffer_refuses_an_overlong_line_that_arrives_whole():
    buffer = LineBuffer(max_line_length=8)
    buffer.receive_data(b"123456789\n12345678\r\n")
    with pytest.raises(LineTooLongError):
        buffer.next_line()
    assert buffer.next_line() == "12345678"


def test_line_buffer_refuses_non_ascii_and_carries_on():
    buffer = LineBuffer()
    buffer.receive_data("open-session\tcafé\nexecute\tt1\n".encode())
    with pytest.raises(NtcpProtocolError, match="not ASCII"):
        buffer.next_line()
    assert buffer.next_line() == "execute\tt1"


def test_encode_line_refuses_line_breaks_and_non_ascii():
    assert encode_line("execute\tt1") == b"execute\tt1\n"
    with pytest.raises(NtcpProtocolError, match="line break"):
        encode_line("execute\tt1\nexecute\tt2")
    with pytest.raises(NtcpProtocolError, match="ASCII"):
        encode_line("open-session\tcafé")


# ------------------------------------------------------------------ compare


def _transcript(force: str) -> list[tuple[str, str]]:
    return [
        ("open-session\ts", "OK\t0\ts"),
        (
            "get-control-point\tm1\tMDL-00-01",
            f"OK\t0\tm1\tMDL-00-01\tx\tdisplacement\t1.0000000000E+00\tx\tforce\t{force}",
        ),
        ("execute\tbad", "NOT OK\tunknown transaction bad"),
    ]


def test_compare_replies_tolerates_noise_in_measured_forces_only():
    a = _transcript("1.0000000000E+02")
    assert compare_replies(a, _transcript("1.0100000000E+02")) == []
    far = compare_replies(a, _transcript("1.2000000000E+02"))
    assert len(far) == 1 and "x force" in far[0] and "differ by 20" in far[0]
    b = list(a)
    b[2] = ("execute\tbad", "NOTOK\tunknown transaction bad")
    assert compare_replies(a, b) == []  # NOTOK and NOT OK mean the same
    b[2] = ("execute\tbad", "NOT OK\tsomething else")
    assert len(compare_replies(a, b)) == 1
    b = list(a)
    b[1] = (b[1][0], b[1][1].replace("1.0000000000E+00", "1.0000001000E+00"))
    assert "x displacement" in compare_replies(a, b)[0]
    assert "differ in length" in compare_replies(a, a[:2])[0]


# ------------------------------------------------------------------ fuzz

# Deterministic examples and no example database written to the checkout.
fuzz = settings(database=None, derandomize=True, max_examples=300)

_FIELD = st.one_of(
    st.sampled_from(
        ["propose", "execute", "t1", "MDL-00-01", "x", "y", "displacement", "force", "1.5", "nan"]
        + list(AXES)
        + list(TYPES)
    ),
    st.text(alphabet=st.characters(codec="ascii"), max_size=12),
)


@fuzz
@given(st.lists(_FIELD, max_size=14))
def test_parser_never_crashes_on_tab_separated_junk(fields):
    try:
        request = parse_request("\t".join(fields))
    except NtcpProtocolError as exc:
        assert exc.reason and "\n" not in exc.reason
    else:
        assert parse_request(format_request(request)) == request


@fuzz
@given(st.text(max_size=200))
def test_parser_never_crashes_on_any_text(text):
    try:
        parse_request(text)
    except NtcpProtocolError as exc:
        assert exc.reason


@fuzz
@given(st.text(max_size=200))
def test_reply_parser_never_crashes(text):
    try:
        parse_reply(text)
    except NtcpProtocolError as exc:
        assert exc.reason


@fuzz
@given(st.lists(st.binary(max_size=40), max_size=10), st.integers(1, 32))
def test_line_buffer_never_holds_more_than_its_cap(chunks, cap):
    buffer = LineBuffer(max_line_length=cap)
    for chunk in chunks:
        buffer.receive_data(chunk)
        while True:
            try:
                line = buffer.next_line()
            except NtcpProtocolError:
                continue
            if line is None:
                break
            assert len(line) <= cap
        assert buffer.buffered <= cap + 1


def test_measured_values_and_their_channels():
    from components.ntcp import measured, measurement_channels, measurement_frames

    line = "OK\t0\tdummy\tMDL-00-01:LBCB1\tx\tdisplacement\t1.5E+00\tz\tmoment\t-2.0E+00"
    values = measured(line)
    assert values == ControlPointValues(
        "MDL-00-01:LBCB1", (AxisValue("x", "displacement", 1.5), AxisValue("z", "moment", -2.0))
    )
    assert measurement_frames(values) == [
        ("MDL-00-01:LBCB1.x.displacement", b"\x00\x00\x00\x00\x00\x00\xf8?"),
        ("MDL-00-01:LBCB1.z.moment", b"\x00\x00\x00\x00\x00\x00\x00\xc0"),
    ]
    assert measured("NOT OK\tunknown control point 'NOPE'") is None
    assert measured("OK\t0\tdummy\tA\tx\tdisplacement") is None  # cut short
    channels = measurement_channels(["A", "B"])
    assert len(channels) == 24 and channels["B.y.rotation"] == "application/x-float64-le"


_TEXT_FIELD = st.text(
    alphabet=st.characters(codec="ascii", exclude_characters="\t\r\n\x0b\x0c\x1c\x1d\x1e\x1f\x85"),
    min_size=1,
    max_size=12,
).filter(lambda f: f.strip() and not f.startswith(" "))


@fuzz
@given(
    st.sampled_from(VERBS),
    st.lists(
        _TEXT_FIELD
        | st.sampled_from(["t 1", "MDL-00-01:LBCB1", "control-point", "1.5", *AXES, *TYPES]),
        max_size=8,
    ),
)
def test_a_space_after_the_verb_means_what_the_tab_means(verb, fields):
    rest = "\t".join(fields)
    try:
        expected = parse_request(f"{verb}\t{rest}")
    except NtcpProtocolError:
        with pytest.raises(NtcpProtocolError):
            parse_request(f"{verb} {rest}")
    else:
        assert parse_request(f"{verb} {rest}") == expected
        assert parse_request(f"{verb}  {rest}\t\r\n") == expected
