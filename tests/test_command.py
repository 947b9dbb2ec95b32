"""Command and reply frames: what a component and a sender read of each other's JSON."""

from __future__ import annotations

import json

import pytest

from turbine import Command, Reply
from turbine._values import Value


class Point(Value):
    x: int
    y: int = 0


def test_a_command_reads_back_as_it_was_sent() -> None:
    cmd = Command("c1", "move", ("a", 2, 0.5), {"to": [1, 2]}, 1795295531.5)
    assert Command.from_json(cmd.to_json()) == cmd


def test_values_in_a_command_or_reply_are_written_as_objects_and_tuples_as_lists() -> None:
    cmd = Command("c1", "move", (Point(1, 2),), {"path": (Point(3),)})
    assert json.loads(cmd.to_json()) == {
        "id": "c1",
        "verb": "move",
        "args": [{"x": 1, "y": 2}],
        "kwargs": {"path": [{"x": 3, "y": 0}]},
        "deadline": None,
    }
    reply = Reply("c1", "where", "ok", {"at": Point(4, 5), "trail": (1, 2)}, None, 7)
    assert json.loads(reply.to_json())["result"] == {"at": {"x": 4, "y": 5}, "trail": [1, 2]}


def test_a_command_argument_json_cannot_hold_is_refused() -> None:
    with pytest.raises(TypeError, match="set is not"):
        Command("c1", "move", ({1, 2},)).to_json()


def test_a_result_json_cannot_hold_is_replied_as_its_text() -> None:
    reply = Reply("c1", "files", "ok", {"seen": {3}}, None, 1)
    assert Reply.from_json(reply.to_json()).result == {"seen": "{3}"}


@pytest.mark.parametrize(
    "frame",
    [
        b' \n{"id": "c1", "verb": "status"}\n',  # written by hand, whitespace around it
        '{"id": "c1", "verb": "status"}'.encode("utf-16"),  # JSON in another encoding
    ],
)
def test_a_command_frame_json_accepts_is_read(frame: bytes) -> None:
    assert Command.from_json(frame) == Command("c1", "status")


@pytest.mark.parametrize("frame", [b"", b"{", b'{"id": "c1", "verb": "status"} x', b"\xff"])
def test_a_frame_that_is_not_json_is_refused(frame: bytes) -> None:
    with pytest.raises(ValueError):
        Command.from_json(frame)
    with pytest.raises(ValueError):
        Reply.from_json(frame)
