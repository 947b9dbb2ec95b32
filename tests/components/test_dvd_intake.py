"""The DVD archiver's intake: each frame buffered once, and what was missed before one
recorded as a gap for the disc's manifest (plain sync tests, no broker)."""

from __future__ import annotations

import logging

from components.dvd_archiver.intake import Intake
from components.dvd_archiver.staging import Position
from turbine.client import Frame

SRC = "daq_rig_data_source"


def frame(seq: int, t: float, data: bytes = b"abc") -> Frame:
    return Frame(SRC, "x", seq, t, data, "application/octet-stream", "daq_rig")


def test_frames_are_buffered_once_and_a_jump_in_numbers_is_a_gap() -> None:
    intake = Intake(logging.getLogger("test"))
    for seq in (1, 2, 2, 5):  # 2 again (a resumed subscription), then 3 and 4 evicted unseen
        intake.offer(frame(seq, float(seq)))
    assert intake.duplicates_dropped == 1 and intake.gaps_recorded == 1
    buf = intake.take()
    assert [f[0] for f in buf.channels[f"{SRC}/x"].frames] == [1, 2, 5]
    assert buf.bytes == 9
    (gap,) = buf.gaps
    assert (gap["kind"], gap["first_missed"], gap["last_missed"], gap["missed"]) == (
        "evicted",
        3,
        4,
        2,
    )
    assert not intake.buffer and intake.positions[f"{SRC}/x"] == Position(5, 5.0)


def test_a_restarted_numbering_and_frames_before_the_first_seen_are_gaps_too() -> None:
    intake = Intake(logging.getLogger("test"), positions={f"{SRC}/x": Position(7, 7.0)})
    intake.offer(frame(1, 8.0))  # numbered from 1 again, but newer: the broker restarted
    other = Intake(logging.getLogger("test"))
    other.offer(frame(4, 1.0))  # the first frame seen is #4
    assert [g["kind"] for g in intake.take().gaps] == ["renumbered"]
    assert [(g["kind"], g["missed"]) for g in other.take().gaps] == [("before_first_seen", 3)]
