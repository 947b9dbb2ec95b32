"""A frame as a JetStream message, and the importer's reordering: plain sync tests."""

from __future__ import annotations

import subprocess
import sys

import pytest

from components.jetstream_bridge.wire import (
    BridgeError,
    Chain,
    Exported,
    exported_seq,
    headers,
    split_subject,
    subject,
)
from turbine.client import Frame
from turbine.mcp.config import load_config
from turbine.origin import Origin

ORIGIN = Origin("aaaa", "daq_rig_data_source", ("bbbb", "cccc"))


def frame(seq: int, data: bytes = b"d") -> Frame:
    writer = "w#1 (127.0.0.1:5000)"
    return Frame("daq_rig_data_source", "log.txt", seq, 100.0 + seq / 3, data, "text/plain", writer)


def exported(seq: int, prev: int) -> Exported:
    hdrs = headers(ORIGIN, frame(seq), prev)
    return Exported.from_message(subject("daq_rig_data_source", "log.txt"), hdrs, b"d")


def test_a_frame_comes_back_from_its_subject_and_headers_as_it_was():
    f = frame(7, b"payload")
    subj = subject(f.source, f.channel)
    assert subj == "turbine.daq_rig_data_source.log.txt"
    hdrs = headers(ORIGIN, f, 5)
    assert hdrs["Nats-Msg-Id"] == "aaaa:daq_rig_data_source/log.txt#7"
    assert hdrs["Turbine"] == f"7 5 {f.timestamp!r} aaaa daq_rig_data_source bbbb,cccc {f.writer}"
    assert hdrs["Content-Type"] == "text/plain"
    assert len(hdrs) == 3  # nats-py parses each header of each message in Python
    e = Exported.from_message(subj, hdrs, b"payload", stream_seq=42)
    assert (e.source, e.channel, e.seq, e.prev, e.timestamp) == (
        f.source,
        f.channel,
        7,
        5,
        f.timestamp,
    )
    assert (e.content_type, e.writer, e.origin, e.data, e.stream_seq) == (
        "text/plain",
        "w#1 (127.0.0.1:5000)",
        ORIGIN,
        b"payload",
        42,
    )
    plain = Exported.from_message(subj, headers(Origin("aaaa", f.source), f, 0), b"")
    assert plain.origin == Origin("aaaa", f.source)
    assert exported_seq(hdrs) == 7


def test_a_frame_without_a_writer_survives_the_servers_stripping_its_header():
    f = frame(4)._replace(writer="")
    hdrs = {k: v.strip() for k, v in headers(Origin("aaaa", f.source), f, 3).items()}
    e = Exported.from_message(subject(f.source, f.channel), hdrs, b"d")
    assert (e.seq, e.prev, e.writer, e.origin) == (4, 3, "", Origin("aaaa", f.source))


def test_a_message_of_the_first_format_is_still_read():
    subj = subject("daq_rig_data_source", "log.txt")
    first_format = {
        "Nats-Msg-Id": "aaaa:daq_rig_data_source/log.txt#7",
        "Turbine-Seq": "7",
        "Turbine-Prev": "5",
        "Turbine-Timestamp": "102.5",
        "Turbine-Content-Type": "text/plain",
        "Turbine-Writer": "w#1 (127.0.0.1:5000)",
        "Turbine-Origin": "aaaa daq_rig_data_source bbbb,cccc",
    }
    e = Exported.from_message(subj, first_format, b"payload")
    assert (e.seq, e.prev, e.timestamp, e.content_type, e.writer, e.origin) == (
        7,
        5,
        102.5,
        "text/plain",
        "w#1 (127.0.0.1:5000)",
        ORIGIN,
    )
    assert exported_seq(first_format) == 7
    assert exported_seq({}) == 0


@pytest.mark.parametrize(
    ("source", "channel", "says"),
    [
        ("daq_a.b_data_source", "x", "cannot be a subject token"),
        ("daq_rig_data_source", "a..b", "empty part"),
        ("daq_rig_data_source", "x.", "empty part"),
        ("daq_rig_data_source", "a>b", "'>'"),
    ],
)
def test_a_name_a_subject_cannot_hold_is_refused_with_the_reason(source, channel, says):
    with pytest.raises(BridgeError, match=says):
        subject(source, channel)


def test_a_message_that_is_not_an_exported_frame_is_refused():
    subj = subject("daq_rig_data_source", "x")
    with pytest.raises(BridgeError, match="not an exported frame"):
        Exported.from_message(subj, {"Turbine-Seq": "1"}, b"")
    with pytest.raises(BridgeError, match="not an exported frame"):
        Exported.from_message(subj, {"Turbine": "1 0 2.5 aaaa", "Content-Type": "x"}, b"")
    with pytest.raises(BridgeError, match="not an exported frame"):  # no content type
        Exported.from_message(subj, {"Turbine": "1 0 2.5 aaaa daq_rig_data_source - w"}, b"")
    bad = headers(ORIGIN, frame(3), 3)
    with pytest.raises(BridgeError, match="number 3 after 3"):
        Exported.from_message(subj, bad, b"")
    with pytest.raises(BridgeError, match="is not turbine.SOURCE.CHANNEL"):
        split_subject("other.daq_rig_data_source")


def test_the_chain_puts_frames_in_order_and_drops_what_it_has():
    chain = Chain(last=2, limit=100)
    assert chain.add(exported(2, 1)) == []  # held by the target already
    assert [e.seq for e in chain.add(exported(3, 2))] == [3]
    assert chain.add(exported(3, 2)) == []  # a second copy
    assert [e.seq for e in chain.add(exported(7, 3))] == [7]  # 4..6 a gap on the origin


def test_a_frame_stored_after_its_successor_waits_for_it():
    chain = Chain(last=0, limit=100)
    assert [e.seq for e in chain.add(exported(1, 0))] == [1]
    assert chain.add(exported(3, 2)) == []
    assert chain.add(exported(4, 3)) == []
    assert [e.seq for e in chain.add(exported(2, 1))] == [2, 3, 4]
    assert (chain.last, chain.held, chain.given_up) == (4, {}, 0)


def test_a_predecessor_that_never_comes_is_given_up_at_the_limit_or_on_release():
    chain = Chain(last=1, limit=2)
    assert chain.add(exported(3, 2)) == []
    assert chain.add(exported(4, 3)) == []
    assert [e.seq for e in chain.add(exported(5, 4))] == [3, 4, 5]  # over the limit
    assert chain.given_up == 1
    assert chain.add(exported(2, 1)) == []  # too late: below what is put
    assert chain.add(exported(9, 8)) == []
    assert [e.seq for e in chain.release()] == [9]
    assert (chain.last, chain.given_up, chain.release()) == (9, 2, [])


def test_a_site_runs_the_bridge_as_a_process(tmp_path):
    site = tmp_path / "site.toml"
    site.write_text(
        '[mcp]\nname = "lab"\n[[process]]\nname = "to_cluster"\nkind = "jetstream_bridge"\n'
        'args = ["export", "--turbine", "{turbine}", "--nats", "nats://n1:4222", "daq_*"]\n'
    )
    (spec,) = load_config(site).programs
    assert spec.argv("127.0.0.1:3333")[1:] == [
        "-m",
        "components.jetstream_bridge",
        "export",
        "--turbine",
        "127.0.0.1:3333",
        "--nats",
        "nats://n1:4222",
        "daq_*",
    ]


def test_the_bridge_command_refuses_a_bad_pattern_and_an_unreadable_token_file(tmp_path):
    bridge = [sys.executable, "-m", "components.jetstream_bridge"]
    common = ["--turbine", "127.0.0.1:1", "--nats", "nats://127.0.0.1:1"]
    done = subprocess.run([*bridge, "import", *common, "bad pattern"], capture_output=True)
    assert done.returncode == 2
    assert "invalid pattern 'bad pattern'" in done.stderr.decode()
    missing = tmp_path / "missing"
    args = [*bridge, "export", *common, "--token-file", str(missing), "daq_*"]
    done = subprocess.run(args, capture_output=True)
    assert done.returncode == 2
    assert f"token file {missing}, which does not exist" in done.stderr.decode()
