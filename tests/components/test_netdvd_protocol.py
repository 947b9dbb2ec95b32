"""Plain sync tests of the NetDVD framing and of the xorriso output parsers."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from components.netdvd.errors import NetDVDProtocolError
from components.netdvd.protocol import (
    NEED_DATA,
    Busy,
    Data,
    Error,
    FrameDecoder,
    Hello,
    Ok,
    Request,
    encode,
)
from components.netdvd.xorriso import failure_message, parse_lsdl, parse_progress, parse_toc

EVENTS = [
    Hello(0),
    Busy("device busy: 10.0.0.2:5000 is connected; try later"),
    Request("put", {"path": "run 1/a.txt", "size": 3, "mtime": 981173106.5}),
    Ok({"entries": [{"path": "a", "kind": "file", "size": 1, "mtime": 1.0}]}),
    Error("disc_full", "disc full: ..."),
    Data(b"\x00\xff" * 1000),
]


def decode_all(data: bytes, step: int) -> list[object]:
    decoder = FrameDecoder()
    events = []
    for start in range(0, len(data), step):
        decoder.receive_data(data[start : start + step])
        while (event := decoder.next_event()) is not NEED_DATA:
            events.append(event)
    assert decoder.buffered == 0
    return events


@pytest.mark.parametrize("step", [1, 7, 100_000])
def test_events_survive_any_split_of_the_stream(step: int) -> None:
    stream = b"".join(encode(event) for event in EVENTS)
    assert decode_all(stream, step) == EVENTS


@given(st.binary(max_size=5000), st.integers(min_value=1, max_value=64))
def test_data_frames_round_trip(data: bytes, step: int) -> None:
    assert decode_all(encode(Data(data)), step) == [Data(data)]


def test_frame_is_length_prefixed_msgpack_map() -> None:
    frame = encode(Hello(0))
    (length,) = struct.unpack(">I", frame[:4])
    assert msgpack.unpackb(frame[4 : 4 + length]) == {"type": "hello", "version": 0}


def test_oversized_frame_is_refused_before_its_body_arrives() -> None:
    decoder = FrameDecoder(max_frame=1000)
    decoder.receive_data(struct.pack(">I", 1001))
    with pytest.raises(NetDVDProtocolError, match="1001-byte frame; the limit is 1000"):
        decoder.next_event()


def test_sending_an_oversized_frame_is_a_local_error() -> None:
    with pytest.raises(NetDVDProtocolError, match="refusing to send"):
        encode(Data(b"x" * (2 * 1024 * 1024)))


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b"\xc1", "not valid msgpack"),
        (msgpack.packb([1, 2]), "msgpack map"),
        (msgpack.packb({"type": "teleport"}), "unknown frame type 'teleport'"),
        (msgpack.packb({"type": "hello", "version": "zero"}), "valid 'version'"),
        (msgpack.packb({"type": "request", "op": "list", "args": [1]}), "'args' to be a map"),
        (msgpack.packb({"type": "data", "data": "text"}), "valid 'data'"),
    ],
)
def test_malformed_frames_are_remote_protocol_errors(body: bytes, complaint: str) -> None:
    decoder = FrameDecoder()
    decoder.receive_data(struct.pack(">I", len(body)) + body)
    with pytest.raises(NetDVDProtocolError, match=complaint):
        decoder.next_event()


TOC_APPENDABLE = """\
Drive current: -dev 'stdio:disc.iso'
Media current: stdio file, overwriteable
Media status : is written , is appendable
Media blocks : 160 readable , 41654748 writable , 41654908 overall
TOC layout   : Idx ,  sbsector ,       Size , Volume Id
ISO session  :   1 ,        32 ,        79s , ISOIMAGE
ISO session  :   2 ,       128 ,        25s , ISOIMAGE
Media summary: 2 sessions, 104 data blocks,  208k data, 79.5g free
Media nwa    : 160s
"""


def test_parse_toc_of_an_appendable_disc() -> None:
    toc = parse_toc(TOC_APPENDABLE)
    assert (toc.present, toc.blank, toc.appendable) == (True, False, True)
    assert (toc.sessions, toc.nwa, toc.readable_sectors) == (2, 160, 160)
    assert toc.writable_sectors == 41654748


def test_parse_toc_of_a_blank_and_of_an_empty_drive() -> None:
    blank = parse_toc("Media status : is blank\nMedia summary: 0 sessions, 0 data blocks\n")
    assert blank.present and blank.blank and blank.sessions == 0 and blank.nwa is None
    empty = parse_toc("Media current: is not present\nMedia status : is not present\n")
    assert not empty.present and not empty.blank


def test_parse_progress_lines() -> None:
    line = "xorriso : UPDATE : Writing:      85168s   43.6%   fifo  99%  buf  50%  1124.7xD"
    assert parse_progress(line) == (85168, 43.6)
    assert parse_progress("xorriso : UPDATE :       3 files added in 1 seconds") is None


def test_parse_lsdl_handles_quoting_and_links() -> None:
    text = (
        "drwxr-xr-x    1 0        0               0 Nov 21 21:09 '/'\n"
        "drwxr-xr-x    1 0        0               0 Nov 21 21:09 '/d ir'\n"
        "-rw-r--r--    1 0        0               2 Nov 21 21:09 '/d ir/it'\"'\"'s a \"file\".txt'\n"
        "lrwxrwxrwx    1 0        0               0 Nov 21 21:09 '/lnk' -> 'a'\n"
        "xorriso : UPDATE : noise\n"
    )
    assert [(e.path, e.kind, e.size) for e in parse_lsdl(text)] == [
        ("d ir", "dir", 0),
        ('d ir/it\'s a "file".txt', "file", 2),
        ("lnk", "link", 0),
    ]


def test_failure_message_prefers_xorriso_complaints() -> None:
    lines = [
        "xorriso : NOTE : Loading ISO image tree from LBA 0",
        "xorriso : FAILURE : Cannot write to medium",
        "xorriso : aborting : -abort_on 'FAILURE' encountered 'FAILURE'",
    ]
    assert failure_message(lines) == "Cannot write to medium"
