"""The broker's state, without sockets: sources, names, memory, reads, interest."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turbine import RequestFailed, TurbineError
from turbine._constants import (
    CACHE_BYTES,
    CACHE_FRAMES,
    FRAME_OVERHEAD_BYTES,
    HOLDER_GONE_SILENT_S,
    MAX_CHANNELS_PER_SOURCE,
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    MAX_PATTERN_CHARS,
)
from turbine._format import guess_content_type
from turbine._selections import check_start
from turbine.groups import decode_groups
from turbine.hub import Hub
from turbine.names import InvalidName, check_source_name, compile_pattern, split_path
from turbine.origin import Origin
from turbine.payloads import Payloads
from turbine.peer import Peer
from turbine.router import Subscription, collect

SRC = "daq_rig_data_source"
OTHER = "video_cam1_data_source"


class Clock:
    """A settable clock for the hub."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


ALICE, BOB = Peer(1, name="alice"), Peer(2, name="bob")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def hub(clock: Clock) -> Hub:
    return Hub(clock=clock)


def put(hub: Hub, peer: Peer, path: str, *payloads: bytes, ts=None):
    source, channel = path.split("/")
    return hub.put(peer, source, channel, [ts] * len(payloads), list(payloads))


def frames(hub: Hub, pattern: str, **selection):
    groups, payloads = hub.fetch(pattern, **selection)
    sizes = sum((g[5] for g in groups), [])
    assert sizes == [len(p) for p in payloads]
    payload = memoryview(b"".join(payloads))
    return [
        (f"{s}/{c}", seq, ts, bytes(d), writer)
        for s, c, _, seq, ts, d, writer in decode_groups(groups, payload)
    ]


def seqs(hub: Hub, pattern: str, **selection) -> list[int]:
    return [f[1] for f in frames(hub, pattern, **selection)]


# --- names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "video_baseCamera1_data_source",
        "daq_a_b_c_debug_log_source",
        "ntcp_x_command_source",
        "audio_mic_command_sink",
        "thumbnail_cam_1_data_source",
    ],
)
def test_conventional_names_are_accepted(hub, name):
    assert hub.open_source(ALICE, name).name == name


@pytest.mark.parametrize(
    "name",
    [
        "camera1",
        "video_data_source",  # no name between type and detail
        "lidar_x_data_source",  # unknown type
        "video_x_stream",  # unknown detail
    ],
)
def test_other_names_are_refused_stating_the_convention(hub, name):
    with pytest.raises(TurbineError) as info:
        hub.open_source(ALICE, name)
    assert repr(name) in str(info.value)
    assert "<type>_<name>_<detail>" in str(info.value)
    assert "video_baseCamera1_data_source" in str(info.value)  # an example to follow
    assert hub.list_sources() == []


def test_a_refused_name_is_a_request_failure_with_code_name(hub):
    with pytest.raises(RequestFailed) as info:
        hub.open_source(ALICE, "camera1")
    assert info.value.code == "name"


@pytest.mark.parametrize("name", ["", "a/b", "a b", "a*", "x" * 256])
def test_unusable_names_are_refused_even_when_lenient(name):
    with pytest.raises(InvalidName, match="1-255 characters without whitespace"):
        check_source_name(name, lenient=True)


def test_lenient_hub_accepts_any_plain_name():
    hub = Hub(lenient_names=True)
    assert hub.open_source(ALICE, "camera1").name == "camera1"


def test_extra_types_are_configurable():
    hub = Hub(types=("video", "mcp"))
    hub.open_source(ALICE, "mcp_main_command_sink")
    with pytest.raises(TurbineError, match="type one of video, mcp;"):
        hub.open_source(ALICE, "daq_rig_data_source")


def test_channel_names_are_checked(hub):
    with pytest.raises(TurbineError, match="invalid channel name 'a b'"):
        hub.open_source(ALICE, SRC, channels={"a b": "text/plain"})
    hub.open_source(ALICE, SRC)
    with pytest.raises(TurbineError, match="invalid channel name"):
        put(hub, ALICE, f"{SRC}/x y", b"1")


def test_paths_and_patterns():
    assert split_path("a/b") == ("a", "b")
    for bad in ("a", "/b", "a/"):
        with pytest.raises(InvalidName, match="is not a SOURCE/CHANNEL path"):
            split_path(bad)
    assert compile_pattern("video_*/*.jpg").match("video_c_data_source/x.jpg")
    assert not compile_pattern("video_*/*.jpg").match("video_c_data_source/x.png")
    assert compile_pattern("video_*").match("video_c_data_source/any")  # no '/': all channels
    assert not compile_pattern("*").match("a/b/c")  # '*' does not cross '/'
    assert compile_pattern("a.b/c").match("a.b/c") and not compile_pattern("a.b/c").match("axb/c")
    for bad in ("", "a b", "a/b/c"):
        with pytest.raises(InvalidName):
            compile_pattern(bad)


def regex_oracle(pattern: str) -> re.Pattern[str]:
    """What a pattern means, written the slow way (only for short test inputs)."""
    if "/" not in pattern:
        pattern += "/*"
    return re.compile("[^/]*".join(re.escape(part) for part in pattern.split("*")) + r"\Z")


@settings(max_examples=500, deadline=None)
@given(
    st.text("ab*", min_size=1, max_size=8),
    st.text("ab*", max_size=6),
    st.text("ab/", max_size=10),
)
def test_patterns_match_what_the_wildcard_rule_says(source, channel, path):
    pattern = f"{source}/{channel}" if channel else source
    assert compile_pattern(pattern).match(path) == bool(regex_oracle(pattern).match(path))


def test_pathological_patterns_match_in_linear_time():
    # A backtracking regex takes exponential time on these (the broker froze for
    # minutes); the piece-by-piece matcher does one pass over the path.
    name = "daq_" + "a" * 240 + "_data_source"
    for pattern in ("*" * 1000 + "/nomatch", "*a" * 400 + "Q", "*" * 12 + "Q"):
        assert not compile_pattern(pattern).match(f"{name}/x")
    assert not compile_pattern("*a" * 400 + "*").match_source(name)  # fewer a's than asked
    assert compile_pattern("*a" * 200 + "*").match_source(name)


def test_patterns_have_a_length_limit():
    compile_pattern("*" * MAX_PATTERN_CHARS)
    with pytest.raises(InvalidName, match=f"more than the limit of {MAX_PATTERN_CHARS}"):
        compile_pattern("*" * (MAX_PATTERN_CHARS + 1))


# --- sources, holders, sequence numbers --------------------------------------------------


def test_new_source_has_defaults_and_its_channels(hub):
    hub.open_source(ALICE, SRC, channels={"x": "text/plain"})
    (info,) = hub.list_sources()
    assert info["online"] and info["holder"] == "alice" and not info["shared"]
    assert (info["cache_frames"], info["cache_bytes"]) == (CACHE_FRAMES, CACHE_BYTES)
    assert {c["name"]: c["content_type"] for c in info["channels"]}["x"] == "text/plain"
    assert info["metadata"] is None


def rates(hub: Hub) -> dict[str, float | None]:
    return {c["name"]: c["rate"] for c in hub.list_sources()[0]["channels"]}


def test_a_channels_rate_is_over_the_last_seconds_and_none_once_it_stopped(hub, clock):
    hub.open_source(ALICE, SRC)
    t0 = clock.now
    for k in range(200):  # 10 Hz for 20 s; 1 kHz for its last 0.1 s
        hub.put(ALICE, SRC, "slow", [t0 + k / 10], [b"x"])
    for k in range(100):
        hub.put(ALICE, SRC, "fast", [t0 + 19.9 + k / 1000], [b"x"])
    clock.now = t0 + 20
    assert rates(hub) == {
        "slow": pytest.approx(10, rel=0.02),
        "fast": pytest.approx(1000, rel=0.02),
    }
    clock.now = t0 + 25  # both stopped 5 s ago: half of the 10 s window
    assert rates(hub)["slow"] == 5.0
    clock.now = t0 + 31  # nothing in the window
    assert rates(hub) == {"slow": None, "fast": None}


def test_a_burst_of_log_lines_is_no_huge_rate(hub, clock):
    hub.open_source(ALICE, SRC)
    now = clock.now
    hub.put(ALICE, SRC, "log.txt", [now - 35e-6, now], [b"first line", b"second line"])
    assert rates(hub) == {"log.txt": 1.0}  # not 28,571 a second: over 1 s at least
    hub.put(ALICE, SRC, "one", [now], [b"x"])
    assert rates(hub)["one"] is None  # one frame has no rate
    clock.now = now + 60
    hub.put(ALICE, SRC, "log.txt", [clock.now + i * 1e-6 for i in range(5)], [b"x"] * 5)
    assert rates(hub)["log.txt"] == 0.5  # five lines over the last 10 s


def test_content_types_are_guessed_from_channel_names(hub):
    assert guess_content_type("metadata.txt") == "application/json"
    assert guess_content_type("image.jpg") == "image/jpeg"
    assert guess_content_type("log.txt") == "text/plain"
    assert guess_content_type("samples") == "application/octet-stream"
    hub.open_source(ALICE, SRC)
    put(hub, ALICE, f"{SRC}/frame.jpg", b"\xff\xd8")
    hub.put(ALICE, SRC, "notes", [None], [b"hi"], "text/markdown")
    types = {c["name"]: c["content_type"] for c in hub.list_sources()[0]["channels"]}
    assert types["frame.jpg"] == "image/jpeg"
    assert types["notes"] == "text/markdown"


def test_seq_per_channel_from_one(hub):
    hub.open_source(ALICE, SRC)
    put(hub, ALICE, f"{SRC}/a", b"1", b"2")
    put(hub, ALICE, f"{SRC}/b", b"1")
    put(hub, ALICE, f"{SRC}/a", b"3")
    assert hub.sources[SRC].channels["a"].store.last_seq == 3  # the first put only
    assert seqs(hub, f"{SRC}/b", oldest=10) == [1]


def test_second_holder_is_refused_naming_the_first(hub):
    alice = Peer(1, "127.0.0.1:5000")
    alice.named("alice")
    hub.open_source(alice, SRC)
    with pytest.raises(RequestFailed) as info:
        hub.open_source(BOB, SRC)
    assert info.value.code == "held"
    assert "held by alice#1 (127.0.0.1:5000)" in str(info.value)
    with pytest.raises(RequestFailed, match="you already hold source"):
        hub.open_source(alice, SRC)


def test_a_reconnecting_client_takes_its_source_over_from_its_own_silent_connection(hub):
    """Its lost connection (from another host), which the broker has not seen
    end: TCP has heard nothing from it for HOLDER_GONE_SILENT_S despite probing."""
    silence = {"s": HOLDER_GONE_SILENT_S - 1}
    old = Peer(1, "10.0.0.2:5000", silent=lambda: silence["s"])
    old.named("daq")
    hub.open_source(old, SRC)
    put(hub, old, f"{SRC}/a", b"1")
    back = Peer(2, "10.0.0.2:5001", reconnects=True)
    back.named("daq")
    other = Peer(3, "10.0.0.3:5000", reconnects=True)
    other.named("viewer")
    with pytest.raises(RequestFailed, match="held by daq#1"):
        hub.open_source(back, SRC)  # heard from lately: alive, maybe another daq
    silence["s"] = HOLDER_GONE_SILENT_S
    for stranger in (other, Peer(4, "10.0.0.2:5002", name="daq#4")):  # another name; no reconnect
        with pytest.raises(RequestFailed, match="held by daq#1"):
            hub.open_source(stranger, SRC)
    hub.open_source(back, SRC)
    put(hub, back, f"{SRC}/a", b"2")
    assert [(s, w) for _, s, _, _, w in frames(hub, f"{SRC}/a", oldest=10)] == [
        (1, "daq#1 (10.0.0.2:5000)"),
        (2, "daq#2 (10.0.0.2:5001)"),
    ]
    with pytest.raises(RequestFailed, match="held"):
        put(hub, old, f"{SRC}/a", b"late")
    hub.release(old)  # its end, seen at last, leaves the source with its new holder
    assert hub.list_sources()[0]["holder"] == "daq#2 (10.0.0.2:5001)"


def test_a_hand_over_is_logged_once_it_is_made_and_not_when_a_later_check_refuses_it(hub, caplog):
    """Two mirrors of one name copy a source of one name from two origins: the
    second, finding the first's connection silent, is refused as another
    origin's copy, and nothing says it took the copy over."""
    old = Peer(1, "10.0.0.2:5000", silent=lambda: HOLDER_GONE_SILENT_S)
    old.named("turbine-mirror")
    hub.open_source(old, SRC, mirror=Origin("a1", SRC))
    other = Peer(2, "10.0.0.3:5000", reconnects=True)
    other.named("turbine-mirror")
    with pytest.raises(RequestFailed) as info:
        hub.open_source(other, SRC, mirror=Origin("a2", SRC))
    assert info.value.code == "mirror"
    assert hub.list_sources()[0]["holder"] == old.name
    assert not [r for r in caplog.records if "takes source" in r.getMessage()]
    back = Peer(3, "10.0.0.2:5001", reconnects=True)
    back.named("turbine-mirror")
    hub.open_source(back, SRC, mirror=Origin("a1", SRC))
    (said,) = [r.getMessage() for r in caplog.records if "takes source" in r.getMessage()]
    assert said.startswith(f"{back.name} takes source {SRC} over from {old.name}, silent for")


def test_released_source_stays_readable_and_reopening_continues_seqs(hub, clock):
    hub.open_source(ALICE, SRC)
    put(hub, ALICE, f"{SRC}/a", b"1", b"2")
    clock.now = 2000.0
    hub.release(ALICE)
    (info,) = hub.list_sources()
    assert not info["online"]
    assert seqs(hub, f"{SRC}/a", oldest=10) == [1, 2]
    hub.open_source(BOB, SRC)
    put(hub, BOB, f"{SRC}/a", b"3")
    assert [(s, w) for _, s, _, _, w in frames(hub, f"{SRC}/a", oldest=10)] == [
        (1, "alice"),
        (2, "alice"),
        (3, "bob"),
    ]


def test_release_of_one_source_leaves_the_others_held(hub):
    hub.open_source(ALICE, SRC)
    hub.open_source(ALICE, OTHER)
    hub.release(ALICE, SRC)
    online = {s["name"]: s["online"] for s in hub.list_sources()}
    assert online == {SRC: False, OTHER: True}


def test_seqs_are_never_reused_after_delete(hub):
    hub.open_source(ALICE, SRC)
    put(hub, ALICE, f"{SRC}/a", b"1", b"2", b"3")
    put(hub, ALICE, f"{SRC}/metadata.txt", b"{}")
    assert seqs(hub, f"{SRC}/metadata.txt", newest=1) == [1]
    hub.delete(SRC, ALICE)
    assert hub.list_sources() == []
    assert frames(hub, f"{SRC}/a", oldest=10) == []
    src = hub.open_source(BOB, SRC, channels={"b": "text/plain"})
    # A producer learns where its numbers continue, on channels not yet re-created too.
    assert hub.next_seqs(src) == {"b": 1, "a": 4, "metadata.txt": 2}
    put(hub, BOB, f"{SRC}/a", b"4")
    put(hub, BOB, f"{SRC}/metadata.txt", b"{}")
    assert seqs(hub, f"{SRC}/a", oldest=10) == [4]
    assert seqs(hub, f"{SRC}/metadata.txt", oldest=10) == [2]
    assert hub.next_seqs(src) == {"b": 1, "a": 5, "metadata.txt": 3}


def test_delete_rules(hub):
    with pytest.raises(RequestFailed, match="no source named") as info:
        hub.delete(SRC)
    assert info.value.code == "missing"
    hub.open_source(ALICE, SRC)
    with pytest.raises(RequestFailed, match="held by alice; stop that client first"):
        hub.delete(SRC, BOB)
    hub.release(ALICE)
    hub.delete(SRC, BOB)  # offline sources may be deleted by anyone


def test_reopen_keeps_or_changes_limits(hub):
    hub.open_source(ALICE, SRC, cache_frames=10, cache_bytes=100_000, shared=True)
    put(hub, ALICE, f"{SRC}/a", *[b"x"] * 10)
    hub.release(ALICE)
    hub.open_source(ALICE, SRC)
    (info,) = hub.list_sources()
    assert (info["cache_frames"], info["cache_bytes"], info["shared"]) == (10, 100_000, True)
    hub.release(ALICE)
    hub.open_source(ALICE, SRC, cache_frames=4)
    assert seqs(hub, f"{SRC}/a", oldest=100) == [7, 8, 9, 10]


@pytest.mark.parametrize("limits", [{"cache_frames": 0}, {"cache_bytes": 0}])
def test_limits_must_be_positive(hub, limits):
    with pytest.raises(RequestFailed, match="must be at least 1"):
        hub.open_source(ALICE, SRC, **limits)


# --- writing -------------------------------------------------------------------------


def test_only_the_holder_puts_to_a_private_source(hub):
    with pytest.raises(RequestFailed, match="no source named .* open it first") as info:
        put(hub, ALICE, f"{SRC}/a", b"1")
    assert info.value.code == "missing"
    hub.open_source(ALICE, SRC)
    with pytest.raises(RequestFailed, match="is held by alice and not shared") as info:
        put(hub, BOB, f"{SRC}/a", b"1")
    assert info.value.code == "held"
    hub.release(ALICE)
    with pytest.raises(RequestFailed, match="is offline and not shared"):
        put(hub, ALICE, f"{SRC}/a", b"1")


def test_shared_source_accepts_anyone_and_records_each_writer(hub):
    hub.open_source(ALICE, SRC, shared=True)
    put(hub, ALICE, f"{SRC}/a", b"1")
    put(hub, BOB, f"{SRC}/a", b"2", b"3")
    hub.release(ALICE)
    put(hub, BOB, f"{SRC}/a", b"4")  # still shared when offline
    got = frames(hub, f"{SRC}/a", oldest=10)
    assert [(s, d, w) for _, s, _, d, w in got] == [
        (1, b"1", "alice"),
        (2, b"2", "bob"),
        (3, b"3", "bob"),
        (4, b"4", "bob"),
    ]


def test_timestamps_given_or_stamped(hub, clock):
    hub.open_source(ALICE, SRC)
    hub.put(ALICE, SRC, "a", [5.5, None], [b"1", b"2"])
    clock.now = 1234.5
    put(hub, ALICE, f"{SRC}/a", b"3")
    assert [ts for _, _, ts, _, _ in frames(hub, f"{SRC}/a", oldest=10)] == [5.5, 1000.0, 1234.5]


def test_frame_over_the_size_limit_is_refused():
    hub = Hub(max_frame=100)
    hub.open_source(ALICE, SRC)
    put(hub, ALICE, f"{SRC}/a", b"x" * 100)
    with pytest.raises(
        RequestFailed, match="a frame of 101 bytes .* over the limit of 100"
    ) as info:
        put(hub, ALICE, f"{SRC}/a", b"x" * 101)
    assert info.value.code == "too_large"
    assert seqs(hub, f"{SRC}/a", oldest=10) == [1]


def test_a_put_kept_whole_is_refused_for_its_largest_frame_not_its_total():
    hub = Hub(max_frame=100)
    hub.open_source(ALICE, SRC)
    small = Payloads([b"x" * 300], [100] * 3)  # 300 bytes in all, no frame over 100
    hub.put(ALICE, SRC, "a", [None] * 3, small, None, small.sizes)
    big = Payloads([b"x" * 160], [50, 101, 9])
    with pytest.raises(RequestFailed, match="a frame of 101 bytes .* over the limit of 100"):
        hub.put(ALICE, SRC, "a", [None] * 3, big, None, big.sizes)
    assert hub.sources[SRC].channels["a"].store.last_seq == 3  # the first put only


def test_frame_bigger_than_the_source_ring_is_refused(hub):
    hub.open_source(ALICE, SRC, cache_bytes=1000)
    with pytest.raises(RequestFailed, match=f"over the limit of {1000 - FRAME_OVERHEAD_BYTES}"):
        put(hub, ALICE, f"{SRC}/a", b"x" * 1000)


def test_ring_bounded_by_frames_per_channel(hub):
    hub.open_source(ALICE, SRC, cache_frames=3)
    put(hub, ALICE, f"{SRC}/a", *[b"%d" % i for i in range(10)])
    put(hub, ALICE, f"{SRC}/b", b"only")
    assert seqs(hub, f"{SRC}/a", oldest=100) == [8, 9, 10]
    assert seqs(hub, f"{SRC}/b", oldest=100) == [1]


def test_ring_bounded_by_bytes_per_source_oldest_first_across_channels(hub):
    frame = 100 + FRAME_OVERHEAD_BYTES
    hub.open_source(ALICE, SRC, cache_bytes=5 * frame)
    for _ in range(4):
        put(hub, ALICE, f"{SRC}/a", b"a" * 100)
        put(hub, ALICE, f"{SRC}/b", b"b" * 100)
    # Arrival order a1 b1 a2 b2 a3 b3 a4 b4; five fit, the three oldest went.
    assert seqs(hub, f"{SRC}/a", oldest=100) == [3, 4]
    assert seqs(hub, f"{SRC}/b", oldest=100) == [2, 3, 4]
    (info,) = hub.list_sources()
    assert info["bytes"] == 5 * frame <= info["cache_bytes"]
    assert hub.used == 5 * frame


def test_each_channel_keeps_its_newest_frame_so_metadata_survives(hub):
    frame = 100 + FRAME_OVERHEAD_BYTES
    hub.open_source(ALICE, SRC, cache_bytes=3 * frame)
    put(hub, ALICE, f"{SRC}/metadata.txt", b'{"k":' + b" " * 93 + b"1}")
    for _ in range(10):
        put(hub, ALICE, f"{SRC}/a", b"a" * 100)
    assert seqs(hub, f"{SRC}/metadata.txt", oldest=10) == [1]
    assert seqs(hub, f"{SRC}/a", oldest=10) == [9, 10]
    assert hub.list_sources()[0]["metadata"] == {"k": 1}


# --- memory --------------------------------------------------------------------------


def test_source_that_does_not_fit_is_refused_saying_what_is_left():
    hub = Hub(max_memory=10_000)
    hub.open_source(ALICE, SRC, cache_bytes=8_000)
    with pytest.raises(RequestFailed) as info:
        hub.open_source(BOB, OTHER, cache_bytes=4_000)
    assert info.value.code == "memory"
    message = str(info.value)
    assert "only 2.0 KiB of the broker's 9.8 KiB are left" in message
    assert "--max-memory" in message
    assert [s["name"] for s in hub.list_sources()] == [SRC]  # online: never evicted


def test_offline_sources_are_evicted_first_oldest_offline_first(clock):
    hub = Hub(max_memory=10_000, clock=clock)
    names = ["daq_one_data_source", "daq_two_data_source", "daq_three_data_source"]
    for n in names:
        hub.open_source(ALICE, n, cache_bytes=3_000)
    clock.now = 1.0
    hub.release(ALICE, names[1])
    clock.now = 2.0
    hub.release(ALICE, names[0])
    hub.open_source(BOB, OTHER, cache_bytes=1_000)  # fits without evicting
    assert len(hub.list_sources()) == 4
    hub.open_source(BOB, "video_big_data_source", cache_bytes=3_000)
    assert sorted(s["name"] for s in hub.list_sources()) == sorted(
        [names[0], names[2], OTHER, "video_big_data_source"]
    )
    with pytest.raises(RequestFailed, match="only 2.9 KiB of the broker"):
        hub.open_source(BOB, "video_huge_data_source", cache_bytes=6_000)


def test_a_refused_source_evicts_nothing():
    hub = Hub(max_memory=10_000)
    hub.open_source(ALICE, SRC, cache_bytes=4_000)
    put(hub, ALICE, f"{SRC}/x", b"keep me")
    hub.release(ALICE)
    hub.open_source(ALICE, OTHER, cache_bytes=5_000)
    with pytest.raises(RequestFailed, match="cannot reserve"):
        hub.open_source(BOB, "video_huge_data_source", cache_bytes=7_000)
    assert seqs(hub, f"{SRC}/x", oldest=10) == [1]


def test_reopening_a_source_counts_its_own_reservation_as_free():
    hub = Hub(max_memory=10_000)
    hub.open_source(ALICE, SRC, cache_bytes=10_000)
    hub.release(ALICE)
    hub.open_source(BOB, SRC, cache_bytes=10_000)
    assert hub.reserved == 10_000


# --- metadata ---------------------------------------------------------------------------


def test_listing_shows_the_newest_metadata(hub):
    hub.open_source(ALICE, SRC)
    put(hub, ALICE, f"{SRC}/metadata.txt", json.dumps({"v": 1}).encode())
    put(hub, ALICE, f"{SRC}/metadata.txt", json.dumps({"v": 2}).encode())
    assert hub.list_sources()[0]["metadata"] == {"v": 2}
    assert seqs(hub, f"{SRC}/metadata.txt", oldest=10) == [1, 2]
    with pytest.raises(RequestFailed, match="must be UTF-8 JSON") as refused:
        put(hub, ALICE, f"{SRC}/metadata.txt", b"{not json")
    assert refused.value.code == "metadata"
    assert hub.list_sources()[0]["metadata"] == {"v": 2}


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        (b"[" * 30_000 + b"]" * 30_000, "nest arrays and objects at most"),
        (b"[" * 100_000 + b"]" * 100_000, "over the limit"),
        (b"[" * (MAX_METADATA_DEPTH + 1) + b"]" * (MAX_METADATA_DEPTH + 1), "at most"),
        (b'{"a":' * 600 + b"1" + b"}" * 600, "at most"),
        (json.dumps({"k": "x" * MAX_METADATA_BYTES}).encode(), "over the limit"),
    ],
)
def test_a_bad_metadata_frame_is_refused_and_listing_keeps_working(hub, frame, why):
    hub.open_source(ALICE, SRC)
    hub.open_source(BOB, OTHER)
    put(hub, BOB, f"{OTHER}/metadata.txt", b'{"ok": 1}')
    with pytest.raises(RequestFailed, match=why):
        put(hub, ALICE, f"{SRC}/metadata.txt", b"{}", frame)  # the whole put is refused
    assert seqs(hub, f"{SRC}/metadata.txt", oldest=10) == []
    assert [s["metadata"] for s in hub.list_sources()] == [None, {"ok": 1}]
    nested = b"[" * MAX_METADATA_DEPTH + b"]" * MAX_METADATA_DEPTH
    put(hub, ALICE, f"{SRC}/metadata.txt", nested)  # as deep as allowed
    assert hub.list_sources(SRC)[0]["metadata"] is not None


def test_a_source_has_at_most_so_many_channels(hub):
    hub.open_source(ALICE, SRC)
    for i in range(MAX_CHANNELS_PER_SOURCE):
        put(hub, ALICE, f"{SRC}/c{i}", b"1")
    with pytest.raises(RequestFailed, match="the most a source may have") as refused:
        put(hub, ALICE, f"{SRC}/one_more", b"1")
    assert refused.value.code == "limits"


def test_listing_by_pattern(hub):
    hub.open_source(ALICE, SRC)
    hub.open_source(ALICE, OTHER)
    assert [s["name"] for s in hub.list_sources("daq_*")] == [SRC]
    assert [s["name"] for s in hub.list_sources("video_*/whatever")] == [OTHER]
    assert hub.list_sources("nothing_*") == []


def test_channel_info_counts_and_rate(hub, clock):
    hub.open_source(ALICE, SRC)
    now = clock.now
    hub.put(ALICE, SRC, "a", [now - 1.0, now - 0.5, now], [b"ab", b"cd", b"ef"])
    info = next(c for c in hub.list_sources()[0]["channels"] if c["name"] == "a")
    assert info["frames"] == 3
    assert (info["first_seq"], info["last_seq"]) == (1, 3)
    assert (info["first_time"], info["last_time"]) == (now - 1.0, now)
    assert info["rate"] == 2.0
    assert info["bytes"] == 6 + 3 * FRAME_OVERHEAD_BYTES


# --- fetch ---------------------------------------------------------------------------


@pytest.fixture
def stocked(hub) -> Hub:
    hub.open_source(ALICE, SRC, cache_frames=8)
    hub.put(ALICE, SRC, "a", [float(t) for t in range(10)], [b"%d" % t for t in range(10)])
    hub.put(ALICE, SRC, "b", [100.0], [b"b"])
    return hub


def test_fetch_newest_oldest_after(stocked):
    assert seqs(stocked, f"{SRC}/a", newest=2) == [9, 10]
    assert seqs(stocked, f"{SRC}/a", oldest=2) == [3, 4]
    assert seqs(stocked, f"{SRC}/a", after=7) == [8, 9, 10]
    assert seqs(stocked, f"{SRC}/a", after=0) == list(range(3, 11))
    assert seqs(stocked, f"{SRC}/a", after=10) == []
    assert seqs(stocked, f"{SRC}/*", newest=1) == [10, 1]


def test_fetch_time_range(stocked):
    got = frames(stocked, f"{SRC}/a", start=4.0, duration=3.0)
    assert [(s, ts, d) for _, s, ts, d, _ in got] == [
        (5, 4.0, b"4"),
        (6, 5.0, b"5"),
        (7, 6.0, b"6"),
    ]
    assert seqs(stocked, f"{SRC}/*", start=8.0) == [9, 10, 1]  # no duration: up to the newest


@pytest.mark.parametrize(
    "selection", [{}, {"newest": 1, "oldest": 1}, {"start": 1.0, "after": 3}, {"duration": 3.0}]
)
def test_fetch_needs_exactly_one_selection(stocked, selection):
    with pytest.raises(RequestFailed, match="exactly one of newest, oldest, start"):
        stocked.fetch(f"{SRC}/a", **selection)


def test_fetch_refuses_negative_counts(stocked):
    with pytest.raises(RequestFailed, match="must not be negative"):
        stocked.fetch(f"{SRC}/a", newest=-1)


def test_fetch_of_a_pattern_that_matches_nothing_is_empty(stocked):
    assert frames(stocked, "nothing_*/*", newest=5) == []


# --- interest: the router and delivery ------------------------------------------------------


def subscribe(hub: Hub, pattern: str, start="now", monitor=False, sid=1) -> Subscription:
    sub = Subscription(sid, None, pattern, check_start(start), monitor)
    hub.router.add(sub, hub.channels("*/*"))
    return sub


def pull(sub: Subscription, max_frames: int = 1000, max_bytes: int = 10**9):
    """What the broker would deliver now: gaps as (path, missed, next_seq), frames as (path, seq)."""
    groups, payloads, gaps, n = collect(sub.cursors.values(), max_frames, max_bytes)[:4]
    out = [(c.channel.path, run.missed, run.first_seq) for c, run in gaps]
    payload = memoryview(b"".join(payloads))
    got = [(f"{s}/{c}", seq) for s, c, _, seq, _, _, _ in decode_groups(groups, payload)]
    assert len(got) == n
    return out, got


def test_subscription_starts(stocked):
    assert pull(subscribe(stocked, f"{SRC}/a", "now"))[1] == []
    assert pull(subscribe(stocked, f"{SRC}/a", "newest"))[1] == [(f"{SRC}/a", 10)]
    assert [s for _, s in pull(subscribe(stocked, f"{SRC}/a", "oldest"))[1]] == list(range(3, 11))
    assert [s for _, s in pull(subscribe(stocked, f"{SRC}/a", 9))[1]] == [9, 10]


def test_subscription_from_an_evicted_seq_reports_a_gap_first(stocked):
    gaps, got = pull(subscribe(stocked, f"{SRC}/a", 1))
    assert gaps == [(f"{SRC}/a", 2, 3)]
    assert [s for _, s in got] == list(range(3, 11))


def test_subscription_to_a_source_not_there_yet_gets_every_frame(hub):
    sub = subscribe(hub, "video_*/*.jpg", "now")
    assert sub.cursors == {}
    hub.open_source(ALICE, OTHER)
    put(hub, ALICE, f"{OTHER}/a.jpg", b"1", b"2")
    put(hub, ALICE, f"{OTHER}/notes", b"x")
    assert pull(sub) == ([], [(f"{OTHER}/a.jpg", 1), (f"{OTHER}/a.jpg", 2)])
    put(hub, ALICE, f"{OTHER}/a.jpg", b"3")
    assert pull(sub)[1] == [(f"{OTHER}/a.jpg", 3)]


def test_subscription_follows_a_source_through_delete_and_re_creation(hub):
    sub = subscribe(hub, SRC)
    hub.open_source(ALICE, SRC)
    put(hub, ALICE, f"{SRC}/a", b"1")
    assert pull(sub)[1] == [(f"{SRC}/a", 1)]
    hub.delete(SRC, ALICE)
    hub.open_source(BOB, SRC)
    put(hub, BOB, f"{SRC}/a", b"2")
    assert pull(sub)[1] == [(f"{SRC}/a", 2)]


def test_a_subscriber_behind_a_deleted_source_is_told_what_went_with_it(hub):
    hub.open_source(ALICE, SRC, cache_frames=10)
    sub = subscribe(hub, SRC)
    put(hub, ALICE, f"{SRC}/a", b"1", b"2", b"3")
    assert [s for _, s in pull(sub, max_frames=1)[1]] == [1]  # 2 and 3 not read yet
    hub.delete(SRC, ALICE)
    hub.open_source(BOB, SRC)
    put(hub, BOB, f"{SRC}/a", b"4")
    assert pull(sub) == ([(f"{SRC}/a", 2, 4)], [(f"{SRC}/a", 4)])  # not a silent skip
    hub.delete(SRC, BOB)  # read to the end this time: no place kept
    hub.open_source(BOB, SRC)
    put(hub, BOB, f"{SRC}/a", b"5")
    assert pull(sub) == ([], [(f"{SRC}/a", 5)])
    mon = subscribe(hub, SRC, monitor=True, sid=2)
    put(hub, BOB, f"{SRC}/a", b"6", b"7")
    hub.delete(SRC, BOB)
    hub.open_source(BOB, SRC)
    put(hub, BOB, f"{SRC}/a", b"8", b"9")
    assert pull(mon) == ([], [(f"{SRC}/a", 9)]) and mon.resume is None  # a monitor: the newest


def test_a_falling_behind_cursor_gets_a_gap_then_carries_on(hub):
    hub.open_source(ALICE, SRC, cache_frames=5)
    sub = subscribe(hub, f"{SRC}/a")
    put(hub, ALICE, f"{SRC}/a", b"1", b"2")
    assert [s for _, s in pull(sub)[1]] == [1, 2]
    put(hub, ALICE, f"{SRC}/a", *[b"x"] * 10)  # seqs 3..12; 8..12 kept
    gaps, got = pull(sub)
    assert gaps == [(f"{SRC}/a", 5, 8)]
    assert [s for _, s in got] == [8, 9, 10, 11, 12]
    assert sub.cursors[next(iter(sub.cursors))].next_seq == 13


def test_delivery_budget_splits_and_resumes_without_loss(stocked):
    sub = subscribe(stocked, SRC, "oldest")
    first = pull(sub, max_frames=3)[1]
    rest = pull(sub)[1]
    assert len(first) == 3
    assert sorted(first + rest) == sorted(
        [(f"{SRC}/a", s) for s in range(3, 11)] + [(f"{SRC}/b", 1)]
    )


def test_monitor_gives_only_the_newest(hub):
    hub.open_source(ALICE, SRC)
    sub = subscribe(hub, f"{SRC}/a", "newest", monitor=True)
    put(hub, ALICE, f"{SRC}/a", b"1", b"2", b"3")
    assert pull(sub) == ([], [(f"{SRC}/a", 3)])
    assert pull(sub) == ([], [])
    put(hub, ALICE, f"{SRC}/a", *[b"x"] * 20)
    assert pull(sub) == ([], [(f"{SRC}/a", 23)])


def test_removed_subscription_gets_nothing(hub):
    hub.open_source(ALICE, SRC)
    sub = subscribe(hub, SRC)
    hub.router.remove(sub)
    put(hub, ALICE, f"{SRC}/a", b"1")
    assert sub.cursors == {} and pull(sub) == ([], [])
    assert all(not hub.router.cursors(ch) for ch in hub.channels("*/*"))


@pytest.mark.parametrize("start", ["later", 0, -1, True, 1.5])
def test_bad_starts_are_refused(start):
    with pytest.raises(ValueError, match="start must be one of now, newest, oldest"):
        check_start(start)
