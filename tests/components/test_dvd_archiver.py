"""The DVD archiver end to end: a real broker, a real NetDVD device, and the archiver.

Most tests run the device on a folder drive (discs are directories, no
xorriso, no threads) under ``autojump_clock``: the archiver's logic, fast and
deterministic.  One test runs the archiver as a real process, killed and
restarted, over the emulated drive (real ISO images written by xorriso) on
the real clock, and reads its discs back with xorriso (``-toc``, ``-extract``).

Every frame found on a disc is compared with what the turbine holds: same
sequence numbers, timestamps and bytes, none missing, none twice.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from PIL import Image

from components.dvd_archiver.component import DISC_FULL, DvdArchiver
from components.netdvd import EmulatedDrive, FolderDrive, serve_netdvd
from turbine import FLOAT64_CONTENT_TYPE, layout
from turbine.client import Client, Frame, open_client
from turbine.command import NoReply, Reply, send_command
from turbine.testing import follow_trio_clock, run_blocking_inline, start_broker

needs_xorriso = pytest.mark.skipif(shutil.which("xorriso") is None, reason="needs xorriso")

MiB = 2**20
LIMIT = 20  # seconds any one test may take
SOURCE = "daq_src_data_source"
TYPES = ("video", "thumbnail", "daq", "ntcp", "audio", "dvd")
REPO = Path(__file__).resolve().parents[2]


# --- the rig -----------------------------------------------------------------------


async def start_device(nursery: trio.Nursery, tmp_path: Path, capacity: int) -> tuple[int, Path]:
    """A NetDVD device on an ISO-writing emulated drive (xorriso), for the real clock."""
    tray = tmp_path / "tray"
    drive = EmulatedDrive.open(tray, capacity=capacity)
    port = await nursery.start(partial(serve_netdvd, drive, tmp_path / "spool", port=0))
    return port, tray


async def start_folder_device(
    nursery: trio.Nursery, tmp_path: Path, capacity: int
) -> tuple[int, Path]:
    """A NetDVD device on a folder drive, and the turbine's clock and blocking work
    made fit for ``autojump_clock`` (wall time follows trio's, no worker threads)."""
    follow_trio_clock()
    run_blocking_inline()
    tray = tmp_path / "tray"
    drive = FolderDrive.open(tray, capacity=capacity)
    port = await nursery.start(partial(serve_netdvd, drive, tmp_path / "spool", port=0))
    return port, tray


def disc_files(root: Path) -> dict[str, bytes]:
    """Every file under a disc's tree, by path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def settings(tmp_path: Path, port: int, **extra: Any) -> dict[str, Any]:
    return {
        "netdvd": f"127.0.0.1:{port}",
        "patterns": [f"{SOURCE}/*"],
        "staging": str(tmp_path / "staging"),
        "state_dir": str(tmp_path / "state"),
        "segment_seconds": 0.05,
        "command_wait": 15.0,
        **extra,
    }


def jpeg(i: int, size: int = 64) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), ((i * 37) % 256, (i * 11) % 256, 99)).save(out, "JPEG")
    return out.getvalue()


async def open_src(tb: Client, **kw: Any):  # type: ignore[no-untyped-def]
    return await tb.open_source(
        SOURCE,
        channels={"x": FLOAT64_CONTENT_TYPE, "cam.jpg": "image/jpeg", "note.txt": "text/plain"},
        **kw,
    )


#: When the test's pictures were "taken": long before they are archived.
CAPTURED = 1_767_225_600.0  # 2026-01-01T00:00:00Z


async def publish(src: Any, start: int, count: int) -> None:
    """``count`` frames on each of x, cam.jpg and note.txt."""
    for i in range(start, start + count):
        await src.put("x", struct.pack("<4d", i, i + 0.5, -i, 1e-3 * i))
        await src.put("cam.jpg", jpeg(i), timestamp=CAPTURED + i)  # taken in the past
        await src.put("note.txt", f"note {i} \N{DEGREE SIGN}".encode())
    await src.flush()


async def held(tb: Client) -> dict[tuple[str, int], Frame]:
    frames = await tb.fetch(f"{SOURCE}/*", oldest=100_000)
    return {(f.channel, f.seq): f for f in frames}


async def wait_staged(arch: DvdArchiver, tb: Client) -> None:
    """Until the archiver has taken in every frame the turbine holds."""
    newest = {f.channel: f.seq for f in await tb.fetch(f"{SOURCE}/*", newest=1)}
    while True:
        positions = arch.intake.positions
        if all(
            (pos := positions.get(f"{SOURCE}/{ch}")) is not None and pos.seq >= seq
            for ch, seq in newest.items()
        ):
            return
        await trio.sleep(0.02)


async def command(tb: Client, verb: str, *args: Any, wait: float = 20) -> Any:
    """``wait`` must outlast the archiver's ``command_wait`` (it answers "running"
    after it): 20 s against the 15 s of :func:`settings`."""
    reply = await send_command(tb, "dvd_test", verb, *args, wait=wait)
    assert reply.ok, reply.error
    return reply.result


async def toc(image: Path) -> str:
    result = await trio.run_process(
        ["xorriso", "-indev", f"stdio:{image}", "-toc"], capture_stdout=True, capture_stderr=True
    )
    return result.stdout.decode() + result.stderr.decode()


async def extract(image: Path, dest: Path) -> Path:
    await trio.run_process(
        ["xorriso", "-osirrox", "on", "-indev", f"stdio:{image}", "-extract", "/", str(dest)],
        capture_stdout=True,
        capture_stderr=True,
    )
    make_readable(dest)
    return dest


def make_readable(root: Path) -> None:
    """xorriso extracts with the disc's modes; let pytest clean up afterwards."""
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def read_disc(root: Path) -> list[tuple[str, int, float | None, bytes]]:
    """Every frame found on an extracted disc: (channel, seq, timestamp or None, data)."""
    found: list[tuple[str, int, float | None, bytes]] = []
    for path in layout.walk_files(root / SOURCE):
        channel = path.relative_to(root / SOURCE).parts[0]
        if path.suffix in (".jpg", ".json", ".bin"):
            seq = int(re.search(r"_s(\d+)\.\w+$", path.name).group(1))  # type: ignore[union-attr]
            data = path.read_bytes()
            if path.suffix == ".json":
                doc = json.loads(data)
                found.append((channel, seq, doc["timestamp"], json.dumps(doc["metadata"]).encode()))
            else:
                found.append((channel, seq, None, data))
        elif path.suffix == ".csv":
            blocks: dict[tuple[int, float], list[float]] = {}
            for row in csv.DictReader(io.StringIO(path.read_text())):
                key = (int(row["seq"]), float(row["timestamp"]))
                blocks.setdefault(key, []).append(float(row["value"]))
            for (seq, ts), values in blocks.items():
                found.append((channel, seq, ts, struct.pack(f"<{len(values)}d", *values)))
        elif path.suffix == ".jsonl":
            for line in path.read_text().splitlines():
                row = json.loads(line)
                found.append((channel, row["seq"], row["timestamp"], row["text"].encode()))
    return found


def manifests(root: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_bytes()) for p in sorted(root.glob("sessions/*/manifest.json"))]


def check_manifests(root: Path) -> None:
    """Every file a session lists is on the disc with its SHA-256."""
    for manifest in manifests(root):
        for name, entry in manifest["files"].items():
            assert layout.sha256_file(root / name) == entry["sha256"], name


def compare(
    found: list[tuple[str, int, float | None, bytes]],
    expected: dict[tuple[str, int], Frame],
    skip: set[str] = frozenset(),  # type: ignore[assignment]
) -> None:
    """The disc holds exactly the expected frames, each once, with its bytes."""
    keys = [(ch, seq) for ch, seq, _, _ in found if ch not in skip]
    assert len(keys) == len(set(keys)), "a frame is on the disc twice"
    want = {k for k in expected if k[0] not in skip}
    assert set(keys) == want
    for ch, seq, ts, data in found:
        if ch in skip:
            continue
        frame = expected[(ch, seq)]
        if ch == "metadata.txt":
            assert json.loads(data) == json.loads(frame.data)
        else:
            assert data == frame.data, (ch, seq)
        if ts is not None:
            assert ts == frame.timestamp


# --- tests -------------------------------------------------------------------------


async def test_burn_now_appends_sessions_that_match_the_turbine(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(LIMIT):
        broker = await start_broker(nursery, types=TYPES)
        port, tray = await start_folder_device(nursery, tmp_path, 8 * MiB)
        arch = DvdArchiver("test", broker, settings(tmp_path, port))
        nursery.start_soon(arch.serve)
        async with open_client(broker) as tb:
            src = await open_src(tb)
            await src.set_metadata({"rate": 4.0, "units": {"x": "V"}})
            await publish(src, 0, 10)
            await wait_staged(arch, tb)
            first = await command(tb, "burn-now")
            assert [s["session"] for s in first["sessions"]] == [1]
            (disc,) = (tray / "drive").iterdir()
            assert len(FolderDrive.sessions(disc)) == 1

            await publish(src, 10, 7)
            await src.set_metadata({"rate": 8.0})
            await wait_staged(arch, tb)
            second = await command(tb, "burn-now")
            assert [s["session"] for s in second["sessions"]] == [2]
            assert len(FolderDrive.sessions(disc)) == 2

            status = await command(tb, "status")
            channels = status["archiver"]["channels"]
            assert channels[f"{SOURCE}/cam.jpg"] == {"staged_seq": 17, "archived_seq": 17}
            assert status["archiver"]["staged_bytes"] == 0
            expected = await held(tb)

        root = disc / "tree"
        compare(read_disc(root), expected)
        # A person browsing the disc sees each picture dated when it was taken.
        pictures = list((root / SOURCE / "cam.jpg").rglob("*.jpg"))
        assert pictures
        for path in pictures:
            seq = int(re.search(r"_s(\d+)\.jpg$", path.name).group(1))  # type: ignore[union-attr]
            assert abs(path.stat().st_mtime - expected[("cam.jpg", seq)].timestamp) <= 1
        check_manifests(root)
        assert "SOURCE/CHANNEL/YYYY-MM-DD/" in (root / "README.txt").read_text()
        assert [m["session"] for m in manifests(root)] == [1, 2]
        assert manifests(root)[1]["channels"][f"{SOURCE}/x"]["first_seq"] == 11
        # staged data is gone once it is verified on disc
        assert not list((tmp_path / "staging" / "segments").iterdir())
        nursery.cancel_scope.cancel()


async def test_a_full_disc_is_copied_ejected_and_the_rest_goes_on_the_next(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(LIMIT):
        broker = await start_broker(nursery, types=TYPES)
        port, tray = await start_folder_device(nursery, tmp_path, 2 * MiB)
        arch = DvdArchiver(
            "test", broker, settings(tmp_path, port, copies=2, segment_bytes=96 * 1024)
        )
        nursery.start_soon(arch.serve)
        async with open_client(broker) as tb:
            src = await tb.open_source(SOURCE, channels={"cam.jpg": "image/jpeg"})
            for i in range(48):  # 48 x 48 KiB: more than a 2 MiB disc takes
                await src.put("cam.jpg", os.urandom(48 * 1024))
                if i % 8 == 7:
                    await src.flush()
                    await trio.sleep(0.06)  # a few segments, not one big one
            await src.flush()
            await wait_staged(arch, tb)
            result = await command(tb, "burn-now")
            sessions = result["sessions"]
            assert [s["disc"] for s in sessions] == ["disc-0001", "disc-0003"]
            assert [s["mode"] for s in sessions] == ["new", "new"]
            notices = [
                Reply.from_json(f.data)
                for f in await tb.fetch("dvd_test_command_source/command.txt", oldest=100)
            ]
            assert [n.result["message"] for n in notices if n.verb == "notice"] == [DISC_FULL]
            log = await tb.fetch("dvd_test_debug_log_source/log.txt", oldest=1000)
            assert any(DISC_FULL in json.loads(f.data)["message"] for f in log)
            expected = await held(tb)

        written = sorted(p.name for p in (tray / "written").iterdir())
        assert written == ["disc-0001", "disc-0002"]  # the full disc and its copy
        full, copy = tray / "written" / "disc-0001", tray / "written" / "disc-0002"
        assert disc_files(full / "tree") == disc_files(copy / "tree")
        found = []
        for disc in (full, tray / "drive" / "disc-0003"):
            check_manifests(disc / "tree")
            found += read_disc(disc / "tree")
        compare(found, expected)
        nursery.cancel_scope.cancel()


async def test_frames_evicted_before_archiving_are_a_gap_in_the_manifest(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(LIMIT):
        broker = await start_broker(nursery, types=TYPES)
        port, tray = await start_folder_device(nursery, tmp_path, 4 * MiB)
        config = settings(tmp_path, port)
        async with open_client(broker) as tb:
            src = await tb.open_source(SOURCE, channels={"note.txt": "text/plain"}, cache_frames=10)
            for i in range(5):
                await src.put("note.txt", b"before %d" % i)
            await src.flush()
            scope = trio.CancelScope()
            arch = DvdArchiver("test", broker, config)
            nursery.start_soon(run_until, arch, scope)
            await wait_staged(arch, tb)
            await trio.sleep(0.2)  # committed to staging (segment_seconds 0.05)
            scope.cancel()
            for i in range(30):  # the ring keeps the newest 10: seqs 26 to 35
                await src.put("note.txt", b"while away %d" % i)
            await src.flush()
            arch = DvdArchiver("test", broker, config)
            nursery.start_soon(arch.serve)
            await wait_staged(arch, tb)
            await command(tb, "burn-now")

        (disc,) = (tray / "drive").iterdir()
        root = disc / "tree"
        seqs = sorted(seq for _, seq, _, _ in read_disc(root))
        assert seqs == [*range(1, 6), *range(26, 36)]
        (manifest,) = manifests(root)
        (gap,) = manifest["gaps"]
        assert gap["channel"] == f"{SOURCE}/note.txt"
        assert (gap["kind"], gap["first_missed"], gap["last_missed"], gap["missed"]) == (
            "evicted",
            6,
            25,
            20,
        )
        nursery.cancel_scope.cancel()


async def run_until(arch: DvdArchiver, scope: trio.CancelScope) -> None:
    with scope:
        await arch.serve()


@pytest.mark.slow
@needs_xorriso
async def test_killed_and_restarted_the_archiver_loses_and_duplicates_nothing(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The archiver runs as a real process, killed with SIGKILL twice while
    frames flow and sessions burn (the second time while a burn runs)."""
    # A hang detector on real time: three archiver processes start and xorriso
    # burns; 15 s alone at load 12, over 20 s in a full run.  A lost frame or a
    # stuck burn fails an assertion or never ends, so 180 s costs nothing.
    with trio.fail_after(180):
        broker = await start_broker(nursery, types=TYPES)
        port, tray = await start_device(nursery, tmp_path, 16 * MiB)
        # The last burn-now is answered when its burn ends: under load that can
        # take longer than 15 s, and a "burn is running" answer would leave the
        # disc unfinished when the test reads it.
        config = settings(
            tmp_path, port, burn_size=24 * 1024, segment_seconds=0.1, command_wait=120.0
        )
        argv = [sys.executable, "-m", "components.dvd_archiver", "--name", "test"]
        argv += ["--turbine", broker, "--log-level", "WARNING"]
        for key, value in config.items():
            argv += ["--set", f"{key}={json.dumps(value) if isinstance(value, list) else value}"]

        procs: list[trio.Process] = []

        async def spawn() -> trio.Process:
            proc = await trio.lowlevel.open_process(argv, cwd=REPO, stdin=subprocess.DEVNULL)
            procs.append(proc)
            return proc

        async def kill(proc: trio.Process) -> None:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()

        async with open_client(broker) as tb:
            src = await open_src(tb)
            done = trio.Event()

            async def feed() -> None:
                for i in range(0, 120, 2):
                    await publish(src, i, 2)
                    await trio.sleep(0.04)
                done.set()

            try:
                proc = await spawn()
                nursery.start_soon(feed)
                await trio.sleep(0.8)  # running, staging, probably burning
                await kill(proc)
                proc = await spawn()
                # the second kill lands while a burn job runs on the device
                with trio.move_on_after(5):
                    async with tb.subscribe("dvd_test_data_source/progress.json") as sub:
                        async for item in sub:
                            if isinstance(item, Frame) and json.loads(item.data).get("job"):
                                break
                await kill(proc)
                await done.wait()
                await spawn()
                newest = {f.channel: f.seq for f in await tb.fetch(f"{SOURCE}/*", newest=1)}
                while True:
                    try:
                        reply = await send_command(tb, "dvd_test", "status", wait=3)
                    except NoReply:
                        continue
                    staged = reply.result["archiver"]["channels"]
                    if all(
                        staged.get(f"{SOURCE}/{ch}", {}).get("staged_seq") == seq
                        for ch, seq in newest.items()
                    ):
                        break
                    await trio.sleep(0.05)
                await command(tb, "burn-now", wait=130)
                expected = await held(tb)
            finally:
                with trio.CancelScope(shield=True):
                    for proc in procs:
                        if proc.returncode is None:
                            await kill(proc)

        (disc,) = (tray / "drive").glob("*.iso")
        assert not list((tray / "written").glob("*.iso"))
        assert "ISO session  :" in await toc(disc)
        root = await extract(disc, tmp_path / "disc")
        check_manifests(root)
        # How many sessions there are depends on where the kills landed; what
        # matters is that together they hold every frame exactly once.
        assert manifests(root)
        compare(read_disc(root), expected)
        nursery.cancel_scope.cancel()
