"""Mirrored sources in the hub: the origin's numbers, holes, writers, who may hold them."""

from __future__ import annotations

import array
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from turbine import RequestFailed
from turbine.groups import decode_groups
from turbine.hub import Hub
from turbine.origin import Origin, copy_pieces
from turbine.peer import Peer
from turbine.router import Subscription, collect

SRC = "daq_rig_data_source"
MIRROR, OTHER = Peer(1, name="mirror"), Peer(2, name="other")
ORIGIN = Origin("a0a0a0a0", SRC)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def hub() -> Hub:
    return Hub(clock=Clock(), identity="b1b1b1b1")


def copy(hub: Hub, seqs, writers=None, peer=MIRROR, channel="x"):
    data = [f"f{s}".encode() for s in seqs]
    ts = [float(s) for s in seqs]
    return hub.put(peer, SRC, channel, ts, data, seqs=list(seqs), writers=writers)


def fetched(hub: Hub, pattern: str = f"{SRC}/x", **selection):
    groups, payloads = hub.fetch(pattern, **(selection or {"oldest": 1000}))
    payload = memoryview(b"".join(payloads))
    return [(seq, ts, bytes(d), w) for _, _, _, seq, ts, d, w in decode_groups(groups, payload)]


def test_a_copy_keeps_the_origins_numbers_timestamps_and_writers(hub):
    hub.open_source(MIRROR, SRC, mirror=ORIGIN)
    copy(hub, [5, 6, 7], writers=[[5, "daq#3"], [7, "daq#9"]])
    assert fetched(hub) == [
        (5, 5.0, b"f5", "daq#3"),
        (6, 6.0, b"f6", "daq#3"),
        (7, 7.0, b"f7", "daq#9"),
    ]
    info = hub.list_sources()[0]
    assert info["mirror"] == {"broker": "a0a0a0a0", "source": SRC, "via": []}
    assert info["channels"][0]["first_seq"] == 5


def test_holes_in_a_copy_are_gaps_with_the_same_missing_numbers(hub):
    hub.open_source(MIRROR, SRC, mirror=ORIGIN)
    sub = Subscription(1, None, f"{SRC}/*", start="oldest")
    hub.router.add(sub, hub.channels("*/*"))
    copy(hub, [1, 2, 6, 7], writers=[[1, "w"]])
    copy(hub, [10])
    assert [s for s, *_ in fetched(hub)] == [1, 2, 6, 7, 10]
    seen: list[tuple[str, int, int]] = []
    for _ in range(5):
        groups, _payloads, gaps, *_ = collect(sub.cursors.values(), 100, 1 << 20)
        seen += [("gap", run.missed, run.first_seq) for _, run in gaps]
        seen += [("frames", g[3], len(g[4])) for g in groups]
    assert seen == [
        ("frames", 1, 2),
        ("gap", 3, 6),
        ("frames", 6, 2),
        ("gap", 2, 10),
        ("frames", 10, 1),
    ]
    assert hub.sources[SRC].channels["x"].store.next_seq == 11


def test_a_compact_copy_numbered_from_its_first_seq_stores_what_listed_numbers_store(hub):
    hub.open_source(MIRROR, SRC, mirror=ORIGIN)
    hub.open_source(MIRROR, "daq_listed_data_source", mirror=Origin("a0a0a0a0", "daq_x_source"))
    for source, compact in ((SRC, True), ("daq_listed_data_source", False)):
        for first, n, writers in ((3, 3, [[3, "w1"], [4, "w2"]]), (4, 3, None), (9, 1, None)):
            seqs = range(first, first + n)
            data = [f"f{s}".encode() for s in seqs]
            ts = array.array("d", map(float, seqs))
            if compact:  # (4, 5 held already: skipped; 7, 8: a hole)
                hub.put(MIRROR, source, "x", ts, data, first_seq=first, writers=writers)
            else:
                hub.put(MIRROR, source, "x", ts.tolist(), data, seqs=list(seqs), writers=writers)
    assert fetched(hub) == fetched(hub, "daq_listed_data_source/x")
    assert [(s, t, w) for s, t, _, w in fetched(hub)] == [
        (3, 3.0, "w1"),
        (4, 4.0, "w2"),
        (5, 5.0, "w2"),
        (6, 6.0, "mirror"),
        (9, 9.0, "mirror"),
    ]


@pytest.mark.parametrize(
    ("seqs", "first_seq", "why"),
    [([1], 1, "seqs or first_seq, not both"), (None, 0, "first_seq must be an integer >= 1")],
)
def test_a_compact_copy_with_a_bad_first_seq_is_refused_and_nothing_is_stored(
    hub, seqs, first_seq, why
):
    hub.open_source(MIRROR, SRC, mirror=ORIGIN)
    with pytest.raises(RequestFailed, match=why) as info:
        hub.put(MIRROR, SRC, "x", [1.0], [b"a"], seqs=seqs, first_seq=first_seq)
    assert info.value.code == "request"
    assert fetched(hub) == []


def test_frames_a_copy_holds_already_are_skipped_not_stored_twice(hub):
    hub.open_source(MIRROR, SRC, mirror=ORIGIN)
    copy(hub, [1, 2, 3])
    copy(hub, [2, 3, 4, 5])  # a resend after a reconnect
    assert [s for s, *_ in fetched(hub)] == [1, 2, 3, 4, 5]
    copy(hub, [4, 5])
    assert len(fetched(hub)) == 5


def test_only_the_mirror_that_holds_it_may_write_a_mirrored_source(hub):
    hub.open_source(MIRROR, SRC, mirror=ORIGIN)
    with pytest.raises(RequestFailed, match="only its holder may put") as info:
        copy(hub, [1], peer=OTHER)
    assert info.value.code == "held"
    with pytest.raises(RequestFailed, match="must carry the origin's seqs") as info:
        hub.put(MIRROR, SRC, "x", [1.0], [b"a"])
    assert info.value.code == "mirror"
    hub.release(MIRROR)
    with pytest.raises(RequestFailed, match="is a mirror of .* only a mirror may hold it") as info:
        hub.open_source(OTHER, SRC)
    assert info.value.code == "mirror"
    with pytest.raises(RequestFailed, match="not of"):
        hub.open_source(OTHER, SRC, mirror=Origin("c2c2", SRC))
    hub.open_source(OTHER, SRC, mirror=ORIGIN)  # another mirror of the same origin takes over
    assert fetched(hub) == []


def test_a_source_of_its_own_takes_no_origin_numbers_and_no_mirror(hub):
    hub.open_source(OTHER, SRC)
    with pytest.raises(RequestFailed, match="not a mirror; only a mirrored source takes seqs"):
        copy(hub, [1], peer=OTHER)
    hub.release(OTHER)
    with pytest.raises(RequestFailed, match="is not a mirror; a mirror cannot take it over"):
        hub.open_source(MIRROR, SRC, mirror=ORIGIN)


@pytest.mark.parametrize(
    "origin",
    [Origin("b1b1b1b1", SRC), Origin("a0a0a0a0", SRC, ("b1b1b1b1", "c2c2c2c2"))],
)
def test_a_broker_refuses_a_mirror_of_frames_that_came_from_itself(hub, origin):
    with pytest.raises(RequestFailed, match="came from this broker") as info:
        hub.open_source(MIRROR, SRC, mirror=origin)
    assert info.value.code == "loop"
    assert hub.list_sources() == []


@pytest.mark.parametrize(
    ("frames", "seqs", "writers", "why"),
    [
        (2, [2, 1], None, "seqs must increase"),
        (2, [1, 1], None, "seqs must increase"),
        (1, [0], None, "one integer >= 1 per frame"),
        (1, [1, 2], None, "one integer >= 1 per frame \\(1\\)"),
        (1, [3], [[4, "w"]], "name the first frame's writer"),
        (1, [3], [["x", "w"]], "increasing \\[seq, name\\] pairs"),
        (2, [3, 4], [[3, "w"], [3, "v"]], "increasing \\[seq, name\\] pairs"),
    ],
)
def test_bad_numbers_or_writers_are_refused_and_nothing_is_stored(hub, frames, seqs, writers, why):
    hub.open_source(MIRROR, SRC, mirror=ORIGIN)
    with pytest.raises(RequestFailed, match=why):
        hub.put(MIRROR, SRC, "x", [1.0] * frames, [b"a"] * frames, seqs=seqs, writers=writers)
    assert fetched(hub) == []


def test_a_mirrored_source_cannot_be_shared(hub):
    with pytest.raises(RequestFailed, match="cannot be shared"):
        hub.open_source(MIRROR, SRC, mirror=ORIGIN, shared=True)


def test_each_hub_has_an_identity_of_its_own():
    assert Hub().identity != Hub().identity


def _pieces_by_frame(seqs, marks, default_writer, next_seq):
    """What copy_pieces promises, one frame at a time: runs of frames numbered one
    after another by one writer, leaving out those below ``next_seq``."""
    pieces: list[list] = []
    for i, s in enumerate(seqs):
        if s < next_seq:
            continue
        writer = next((w for m, w in reversed(marks) if m <= s), default_writer)
        last = pieces[-1] if pieces else None
        if last and last[1] == i and seqs[i - 1] == s - 1 and last[3] == writer:
            last[1] = i + 1
        else:
            pieces.append([i, i + 1, s, writer])
    return [tuple(p) for p in pieces]


@given(
    first=st.integers(1, 40),
    gaps=st.lists(st.sampled_from([1, 1, 1, 2, 5]), max_size=30),
    names=st.lists(st.sampled_from(["a", "b"]), min_size=1, max_size=6),
    mark_steps=st.lists(st.integers(1, 8), max_size=5),
    next_seq=st.integers(1, 80),
)
def test_copy_pieces_cuts_runs_by_number_and_writer(first, gaps, names, mark_steps, next_seq):
    seqs = list(itertools.accumulate(gaps, initial=first))
    marks = list(zip(itertools.accumulate(mark_steps, initial=first - 1), names, strict=False))
    writers = [list(m) for m in marks]
    got = copy_pieces("s/x", len(seqs), seqs, writers, "d", next_seq)
    assert got == _pieces_by_frame(seqs, marks, "d", next_seq)
