"""Mirrored sources through a real broker: the client's calls, identities, ``turbine ls``."""

from __future__ import annotations

import array
import json
import signal
import struct
import subprocess
import sys

import pytest
import trio
from click.testing import CliRunner

from tests.test_cli import TURBINE, Serve, ok, read_line, stop, tb
from turbine import FrameGroup, RequestFailed, open_client
from turbine._client_writes import copy_put
from turbine.cli import main
from turbine.mcp.config import load_config
from turbine.mirror import group_puts
from turbine.origin import IDENTITY_FILE, Origin, load_identity

SRC = "daq_rig_data_source"
ORIGIN = Origin("a0a0a0a0a0a0a0a0", "daq_far_data_source")


async def test_a_mirror_writes_the_origins_numbers_and_readers_see_the_same_gaps(broker):
    with trio.fail_after(10):
        async with open_client(broker, name="mirror") as tb_, open_client(broker) as viewer:
            nexts = await tb_.open_mirror(SRC, {"x": "text/plain"}, ORIGIN)
            assert nexts == {"x": 1}
            async with viewer.subscribe(f"{SRC}/x", start="oldest") as sub:
                await tb_.put_copy(SRC, "x", [1.0, 2.0], [b"a", b"b"], [1, 2], [[1, "daq#1"]])
                await tb_.put_copy(SRC, "x", [5.0], [b"e"], [5], [[5, "daq#2"]])
                await tb_.flush()
                got = [await sub.receive() for _ in range(4)]
            assert [(f.seq, f.data, f.writer) for f in got[:2]] == [
                (1, b"a", "daq#1"),
                (2, b"b", "daq#1"),
            ]
            assert (got[2].missed, got[2].next_seq) == (2, 5)
            assert (got[3].seq, got[3].timestamp, got[3].writer) == (5, 5.0, "daq#2")
            (info,) = await viewer.list_sources(SRC)
            assert info.mirror == ORIGIN.to_wire()
            with pytest.raises(RequestFailed, match="must carry the origin's seqs"):
                await tb_.put(f"{SRC}/x", b"plain")


async def test_groups_carry_a_subscriptions_frames_as_columns_that_put_copy_takes_whole(broker):
    path = "daq_a_data_source/x"
    with trio.fail_after(10):
        async with (
            open_client(broker, name="daq") as one,
            open_client(broker, name="daq") as two,
            open_client(broker, name="mirror") as tb_,
        ):
            src = await one.open_source(path.split("/")[0], {"x": "text/plain"}, shared=True)
            async with tb_.subscribe(path, start=1, groups=True) as sub:
                for i in range(3):
                    await src.put("x", b"f%d" % i, timestamp=float(i))
                await one.flush()
                await two.put(path, b"other", timestamp=9.0)  # another writer
                got = []
                while sum(len(g.sizes) for g in got) < 4:
                    got += await sub.receive_batch()
            assert all(isinstance(g, FrameGroup) and g.path == path for g in got)
            assert [s for g in got for s in g.seqs] == [1, 2, 3, 4]
            assert [n for g in got for n in g.sizes] == [2, 2, 2, 5]
            assert b"".join(g.payload for g in got) == b"f0f1f2other"
            assert got[0].content_type == "text/plain" and got[0].writer != got[-1].writer

            await tb_.open_mirror(SRC, {"x": "text/plain"}, ORIGIN)
            (put,) = group_puts(got)  # one content type: one put
            assert list(put.seqs) == [1, 2, 3, 4]
            assert put.timestamps.tolist() == [0.0, 1.0, 2.0, 9.0]
            assert [w for _, w in put.writers] == [got[0].writer, got[-1].writer]
            await tb_.put_copy(
                SRC, "x", put.timestamps, put.pieces, put.seqs, put.writers, sizes=put.sizes
            )
            frames = await tb_.fetch(f"{SRC}/x", oldest=10)
            assert [(f.seq, f.data, f.timestamp, f.writer) for f in frames] == [
                (1, b"f0", 0.0, got[0].writer),
                (2, b"f1", 1.0, got[0].writer),
                (3, b"f2", 2.0, got[0].writer),
                (4, b"other", 9.0, got[-1].writer),
            ]


async def test_a_copy_in_the_compact_form_and_in_lists_stores_the_same_frames(broker):
    listed = "daq_listed_data_source"
    with trio.fail_after(10):
        async with open_client(broker, name="mirror") as tb_:
            await tb_.open_mirror(SRC, {"x": "text/plain"}, ORIGIN)
            await tb_.open_mirror(listed, {"x": "text/plain"}, Origin(ORIGIN.broker, listed))
            assert SRC in tb_._compact  # noqa: SLF001 - the broker said it takes the compact form
            stamps = array.array("d", [1.5, 2.5, 3.5])
            writers = [[4, "daq#1"], [6, "daq#2"]]
            await tb_.put_copy(SRC, "x", stamps, [b"a", b"bb", b"c"], range(4, 7), writers)
            await tb_.put_copy(
                listed, "x", stamps.tolist(), [b"a", b"bb", b"c"], [4, 5, 6], writers
            )
            await tb_.flush()
            got = [
                [
                    (f.seq, f.timestamp, f.data, f.writer)
                    for f in await tb_.fetch(f"{s}/x", oldest=9)
                ]
                for s in (SRC, listed)
            ]
    assert (
        got[0]
        == got[1]
        == [
            (4, 1.5, b"a", "daq#1"),
            (5, 2.5, b"bb", "daq#1"),
            (6, 3.5, b"c", "daq#2"),
        ]
    )


def test_put_copy_sends_the_compact_form_only_to_a_broker_that_takes_it():
    stamps, writers = array.array("d", [1.5, 2.5]), [[4, "w"]]
    compact = copy_put(SRC, "x", stamps, [1, 1], range(4, 6), writers, None, compact=True)
    assert (compact.ts, compact.first_seq, compact.seqs) == (struct.pack("<2d", 1.5, 2.5), 4, None)
    old = copy_put(SRC, "x", stamps, [1, 1], range(4, 6), writers, None, compact=False)
    assert (old.ts, old.first_seq, old.seqs) == ([1.5, 2.5], None, [4, 5])
    listed = copy_put(SRC, "x", [1.5, None], [1, 1], [4, 6], writers, None, compact=True)
    assert (listed.ts, listed.first_seq, listed.seqs) == ([1.5, None], None, [4, 6])


async def test_a_broker_refuses_to_hold_a_copy_of_its_own_frames(broker):
    with trio.fail_after(10):
        async with open_client(broker) as tb_:
            me = (await tb_.status())["identity"]
            with pytest.raises(RequestFailed, match="came from this broker") as info:
                await tb_.open_mirror(SRC, {}, Origin("elsewhere", SRC, (me,)))
            assert info.value.code == "loop"


def test_an_identity_is_kept_in_the_data_dir(tmp_path):
    first = load_identity(tmp_path)
    assert (tmp_path / IDENTITY_FILE).read_text().strip() == first
    assert load_identity(tmp_path) == first
    (tmp_path / IDENTITY_FILE).write_text("two words\n")
    with pytest.raises(ValueError, match="does not hold a broker identity"):
        load_identity(tmp_path)


@pytest.mark.slow
def test_serve_keeps_its_identity_across_restarts_only_with_a_data_dir(tmp_path):
    def identity(*args: str) -> str:
        server = Serve(*args)
        try:
            return json.loads(ok(server.address, "status", "--json"))["identity"]
        finally:
            server.stop()

    data = str(tmp_path / "data")
    kept = identity("--data-dir", data)
    assert identity("--data-dir", data) == kept
    assert identity() != identity()
    server = Serve("--data-dir", data)
    try:
        assert f"identity {kept}" in ok(server.address, "status")
    finally:
        server.stop()


@pytest.mark.slow
def test_ls_says_where_a_mirrored_source_comes_from():
    server = Serve()
    try:

        async def mirror() -> None:
            async with open_client(server.address, name="mirror") as c:
                await c.open_mirror(SRC, {"x": "text/plain"}, ORIGIN.passed("b1b1"))
                await c.put_copy(SRC, "x", [1.0], [b"a"], [7], [[7, "daq#1"]])
                await c.flush()
                done = await trio.to_thread.run_sync(tb, server.address, "ls")
                assert done.returncode == 0, done.stderr
                out = done.stdout.decode()
                assert "  mirror of daq_far_data_source on broker a0a0a0a0a0a0a0a0 via b1b1" in out
                assert "#7-7" in out

        trio.run(mirror)
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [
        [TURBINE, "mirror"],
        [sys.executable, "-m", "components.mirror"],
        [TURBINE, "mirror", "--inside"],
        [TURBINE, "mirror", "--inside", "from"],
    ],
    ids=["turbine mirror", "mcp program kind mirror", "inside the target", "inside the origin"],
)  # (the pattern comes right after the command: after a bare --inside it is a pattern)
def test_a_mirror_copies_between_two_serve_processes_and_stops_on_sigterm(command):
    a, b = Serve(), Serve()
    proc = subprocess.Popen(
        [*command, "daq_*", "--from", a.address, "--to", b.address, "--poll", "0.05"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert "mirror: copying daq_* from" in read_line(proc.stderr)
        ok(a.address, "put", f"{SRC}/log.txt", "first", "second")
        ok(a.address, "put", "video_cam_data_source/log.txt", "not matched")
        assert "mirror: copying daq_rig_data_source to" in read_line(proc.stderr)
        done = tb(b.address, "tap", f"{SRC}/log.txt", "--from", "oldest", "--count", "2")
        assert done.returncode == 0, done.stderr
        lines = done.stdout.decode().splitlines()
        assert [line.split(" ", 1)[1] for line in lines] == [
            f"{SRC}/log.txt #1 first",
            f"{SRC}/log.txt #2 second",
        ]
        listing = ok(b.address, "ls")
        assert "video_cam" not in listing
        assert f"mirror of {SRC} on broker" in listing
        assert f"{SRC}  [online] held by turbine-mirror#" in listing  # (its program, inside too)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        stop(proc)
        a.stop()
        b.stop()


def test_turbine_mirror_refuses_a_bad_pattern():
    done = tb(None, "mirror", "--from", "x:1", "--to", "y:2", "bad pattern")
    assert done.returncode == 2
    assert "invalid pattern 'bad pattern'" in done.stderr.decode()


@pytest.mark.parametrize(
    "args",
    [
        ["--inside", "bad pattern"],
        ["--inside", "daq_*", "bad pattern"],
        ["daq_*", "--inside", "from", "bad pattern"],
        ["--inside", "--poll", "1", "bad pattern"],
    ],
)
def test_a_word_after_a_bare_inside_that_is_not_to_or_from_is_a_pattern(args):
    result = CliRunner().invoke(main, ["mirror", "--from", "x:1", "--to", "y:2", *args])
    assert result.exit_code == 2
    assert "Invalid value for 'PATTERNS...': invalid pattern 'bad pattern'" in result.output


def test_inside_with_a_value_other_than_to_or_from_is_refused():
    result = CliRunner().invoke(main, ["mirror", "--from", "x:1", "--to", "y:2", "--inside=daq_*"])
    assert result.exit_code == 2
    assert "Invalid value for '--inside': 'daq_*' is not one of 'to', 'from'" in result.output


def test_turbine_mirror_refuses_a_token_file_it_cannot_read(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    missing = tmp_path / "missing"
    for option, path, says in (
        ("--from-token-file", missing, f"token file {missing}, which does not exist"),
        ("--to-token-file", empty, f"token file {empty} is empty"),
    ):
        done = tb(None, "mirror", "--from", "x:1", "--to", "y:2", option, str(path), "daq_*")
        assert done.returncode == 2
        assert says in done.stderr.decode()


def test_a_site_may_run_a_mirror_as_a_process(tmp_path):
    site = tmp_path / "site.toml"
    site.write_text(
        '[mcp]\nname = "lab"\n[[process]]\nname = "to_central"\nkind = "mirror"\n'
        'args = ["--from", "{turbine}", "--to", "central:3333", "daq_*"]\n'
    )
    (spec,) = load_config(site).programs
    assert spec.argv("127.0.0.1:3333")[1:] == [
        "-m",
        "components.mirror",
        "--from",
        "127.0.0.1:3333",
        "--to",
        "central:3333",
        "daq_*",
    ]
