"""The outbound state machine of one broker connection, without sockets."""

from __future__ import annotations

from turbine.outbound import OutboundQueue, State, Wake


class Frames:
    """Stands for the stores: ``pending`` batches of subscribed frames to pull."""

    def __init__(self) -> None:
        self.batches: list[bytes] = []

    def __call__(self, buffers: list) -> bool:
        if self.batches:
            buffers.append(self.batches.pop(0))
        return bool(self.batches)


def sleeping() -> OutboundQueue:
    """A queue whose writer task has sent its greeting and sleeps."""
    q = OutboundQueue()
    assert q.state is State.WRITING  # the writer starts awake
    assert q.sleep() is True
    assert q.state is State.WAITING
    return q


def test_a_reply_to_a_sleeping_writer_is_written_by_the_reader_itself():
    q = sleeping()
    assert q.reply([b"ok1"]) is Wake.SOON
    assert q.reply([b"ok2"]) is Wake.SOON  # still the reader's to write
    assert q.bytes == 6
    assert q.take(Frames(), direct=True) == [b"ok1", b"ok2"]
    assert q.bytes == 0
    assert q.left([]) is Wake.NONE
    assert q.state is State.WAITING  # the writer task was never woken


def test_what_the_socket_does_not_take_goes_to_the_writer_first():
    q = sleeping()
    q.reply([b"ok1"])
    q.take(Frames(), direct=True)
    assert q.left([b"k1"]) is Wake.NOW
    assert q.state is State.WRITING
    q.reply([b"ok2"])
    assert q.take(Frames(), direct=True) is None  # the writer owns the socket now
    assert q.sleep() is False
    assert q.take(Frames()) == [b"k1", b"ok2"]  # remainder first, then in order


def test_a_busy_writer_sees_new_work_before_it_sleeps():
    q = OutboundQueue()  # writer awake
    assert q.reply([b"hello"]) is Wake.NONE
    assert q.frames_pending() is Wake.NONE
    frames = Frames()
    frames.batches = [b"f1"]
    assert q.sleep() is False
    assert q.take(frames) == [b"hello", b"f1"]
    assert q.sleep() is True


def test_frames_pending_wake_the_reader_and_more_than_a_batch_wakes_the_writer():
    q = sleeping()
    frames = Frames()
    frames.batches = [b"f1", b"f2", b"f3"]
    assert q.frames_pending() is Wake.SOON
    assert q.take(frames, direct=True) == [b"f1"]
    assert q.left([]) is Wake.NOW  # more than one batch: the writer sends the rest
    assert q.take(frames) == [b"f2"]
    assert q.sleep() is False
    assert q.take(frames) == [b"f3"]
    assert q.sleep() is True


def test_a_direct_take_with_nothing_pending_sends_nothing():
    q = sleeping()
    assert q.take(Frames(), direct=True) is None  # WAITING: nothing marked
    q.frames_pending()
    assert q.take(Frames(), direct=True) == []
    assert q.left([]) is Wake.NONE and q.state is State.WAITING


def test_last_words_go_after_the_queue_and_end_the_writer_without_frames():
    q = sleeping()
    q.reply([b"ok1"])
    assert q.last_words([b"error"]) is Wake.NOW
    frames = Frames()
    frames.batches = [b"f1"]
    q.frames_pending()
    assert q.take(frames) == [b"ok1", b"error"]
    assert q.state is State.CLOSED
    assert frames.batches == [b"f1"]  # no frames after the last words
    assert q.sleep() is False


def test_replies_behind_an_unfilled_slot_wait_for_it_in_order():
    q = sleeping()
    q.reply([b"ok1"])
    slot = q.reserve()
    q.reply([b"ok3"])
    frames = Frames()
    frames.batches = [b"f1"]
    q.frames_pending()
    assert q.take(frames, direct=True) == [b"ok1"]  # nothing behind the slot, no frames
    assert q.bytes == 3  # ok3 still counts against the reader's limit
    assert q.left([]) is Wake.NONE
    assert q.fill(slot, [b"ok2"]) is Wake.NOW  # the slot was the head: the writer goes on
    assert q.sleep() is False
    assert q.take(frames) == [b"ok2", b"ok3", b"f1"]
    assert q.sleep() is True


def test_a_slot_filled_behind_another_wakes_no_one():
    q = sleeping()
    first, second = q.reserve(), q.reserve()
    assert q.fill(second, [b"ok2"]) is Wake.NONE
    assert q.take(Frames(), direct=True) is None  # nothing marked ready
    assert q.sleep() is True
    assert q.fill(first, [b"ok1"]) is Wake.NOW
    assert q.take(Frames()) == [b"ok1", b"ok2"]


def test_a_slot_filled_in_parts_sends_each_part_and_holds_what_follows_until_the_last():
    q = sleeping()
    slot = q.reserve()
    q.reply([b"ok2"])
    frames = Frames()
    frames.batches = [b"f1"]
    q.frames_pending()
    assert q.fill(slot, [b"part1"], done=False) is Wake.NOW  # at the head: it goes at once
    assert q.sleep() is False
    assert q.take(frames) == [b"part1"]  # not ok2, not the frames: the reply is not over
    assert q.bytes == 3
    assert q.sleep() is True  # the writer waits for the next part
    assert q.fill(slot, [b"part2a", b"part2b"], done=False) is Wake.NOW
    assert q.fill(slot, [b"part3"]) is Wake.NONE  # the writer is awake already
    assert q.take(frames) == [b"part2a", b"part2b", b"part3", b"ok2", b"f1"]
    assert q.sleep() is True


def test_a_part_filled_while_the_reader_writes_directly_wakes_the_writer():
    q = sleeping()
    q.reply([b"ok1"])
    slot = q.reserve()
    q.fill(slot, [b"part1"], done=False)  # behind ok1: no one to wake
    assert q.take(Frames(), direct=True) == [b"ok1", b"part1"]
    assert q.left([]) is Wake.NONE  # the rest of the reply is not there yet
    assert q.state is State.WAITING
    assert q.fill(slot, [b"part2"]) is Wake.NOW
    assert q.take(Frames()) == [b"part2"]
