"""Reply correlation: the synchronous bookkeeping, then waiting under trio (in virtual
time, so that a hang fails at once and a loaded machine cannot trip a bound)."""

import pytest
import trio
import trio.testing

from turbine.correlate import Correlator, ReplyLost

# ------------------------------------------------------------------ sync


def test_a_reply_reaches_the_request_with_its_key_and_no_other():
    replies: Correlator[str, str] = Correlator()
    with replies.expect("a") as a, replies.expect("b") as b:
        assert len(replies) == 2
        assert "a" in replies and "zzz" not in replies
        with pytest.raises(trio.WouldBlock):
            a.result()
        assert replies.deliver("b", "for b")
        assert b.done and b.result() == "for b"
        assert not a.done
        assert not replies.deliver("b", "again")  # answered already: dropped
        assert not replies.deliver("zzz", "stray")  # nobody asked
        assert replies.deliver("a", "for a")
        assert a.result() == "for a"
        assert "a" not in replies
    assert len(replies) == 0


def test_a_request_that_leaves_is_withdrawn_and_its_late_reply_dropped():
    replies: Correlator[int, str] = Correlator()
    with replies.expect(1) as gone:
        pass
    assert len(replies) == 0
    assert not replies.deliver(1, "too late")
    assert not gone.done
    # The key is free again, and a new request under it gets its own reply.
    with replies.expect(1) as again:
        assert replies.deliver(1, "fresh")
    assert again.result() == "fresh"


def test_keys_are_unique_among_waiting_requests():
    replies: Correlator[str, str] = Correlator()
    with replies.expect("k"):
        with pytest.raises(ValueError, match="'k' is already waiting"):
            replies.expect("k")


def test_in_order_replies_go_to_the_oldest_waiting_request():
    lines: Correlator[int, str] = Correlator()
    with lines.expect(1) as first, lines.expect(2) as second, lines.expect(3) as third:
        assert lines.deliver_next("one")
        assert lines.deliver_next("two")
        assert (first.result(), second.result(), third.done) == ("one", "two", False)
        assert lines.deliver_next("three")
        assert not lines.deliver_next("four")  # nobody left waiting
    assert third.result() == "three"


def test_fail_wakes_every_waiter_and_close_refuses_later_requests():
    replies: Correlator[str, str] = Correlator()
    with replies.expect("a") as a, replies.expect("b") as b:
        replies.fail("the broker went away")
        for pending in (a, b):
            assert pending.done
            with pytest.raises(ReplyLost, match="the broker went away"):
                pending.result()
    # fail() is for one connection's waiters; new ones may follow.
    with replies.expect("c") as c:
        replies.close("closed by the translator")
    with pytest.raises(ReplyLost, match="closed by the translator"):
        c.result()
    assert replies.closed == "closed by the translator"
    with pytest.raises(ReplyLost, match="closed by the translator"):
        replies.expect("d")
    replies.close("a second reason")
    assert replies.closed == "closed by the translator"


# ------------------------------------------------------------------ trio


async def test_wait_returns_when_the_reader_delivers(autojump_clock):
    replies: Correlator[str, str] = Correlator()
    got: list[str] = []

    async def requester() -> None:
        with replies.expect("id-1") as pending:
            got.append(await pending.wait())

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(requester)
            await trio.testing.wait_all_tasks_blocked()
            assert len(replies) == 1 and got == []
            assert replies.deliver("id-1", "the reply")
    assert got == ["the reply"]


async def test_waiters_get_reply_lost_when_the_stream_ends(autojump_clock):
    replies: Correlator[int, str] = Correlator()
    errors: list[str] = []

    async def requester(key: int) -> None:
        with replies.expect(key) as pending:
            try:
                await pending.wait()
            except ReplyLost as exc:
                errors.append(f"{key}: {exc.reason}")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for key in (1, 2):
                nursery.start_soon(requester, key)
            await trio.testing.wait_all_tasks_blocked()
            replies.fail("connection closed")
    assert sorted(errors) == ["1: connection closed", "2: connection closed"]


async def test_a_requester_that_times_out_leaves_nothing_behind(autojump_clock):
    replies: Correlator[str, str] = Correlator()
    with trio.move_on_after(3) as waited:
        with replies.expect("slow") as pending:
            await pending.wait()
    assert waited.cancelled_caught
    assert len(replies) == 0
    assert not replies.deliver("slow", "after the deadline")
