"""End-to-end tests of the NetDVD device: real TCP, real xorriso, real images.

Each test runs a device on port 0 with an emulated drive whose discs are a
few MiB, talks to it through the client library, and checks the images it
wrote with xorriso and with pycdlib (an ISO 9660 reader written by others).
"""

from __future__ import annotations

import calendar
import datetime as dt
import io
import os
import shutil
from functools import partial
from pathlib import Path

import pycdlib
import pytest
import trio

from components.netdvd import (
    EmulatedDrive,
    NetDVDBusyError,
    NetDVDError,
    open_netdvd,
    serve_netdvd,
)

pytestmark = pytest.mark.skipif(shutil.which("xorriso") is None, reason="needs xorriso")

MiB = 1024 * 1024
CAPACITY = 4 * MiB
CLIENT_TIME = dt.datetime(2001, 2, 3, 4, 5, 6, tzinfo=dt.UTC)
LIMIT = 20  # seconds any one test may take


class Device:
    """A running device and where its tray is."""

    def __init__(self, port: int, tray: Path, spool: Path) -> None:
        self.port = port
        self.tray = tray
        self.spool = spool

    def open(self, **kw):  # type: ignore[no-untyped-def]
        return open_netdvd("127.0.0.1", self.port, **kw)

    def disc(self) -> Path:
        (disc,) = (self.tray / "drive").glob("*.iso")
        return disc

    def written(self) -> list[Path]:
        return sorted((self.tray / "written").glob("*.iso"))


async def start_device(
    nursery: trio.Nursery, tmp_path: Path, *, capacity: int = CAPACITY, auto_blank: bool = True
) -> Device:
    tray = tmp_path / "tray"
    drive = EmulatedDrive.open(tray, capacity=capacity, auto_blank=auto_blank)
    spool = tmp_path / "spool"
    port = await nursery.start(partial(serve_netdvd, drive, spool, host="127.0.0.1", port=0))
    return Device(port, tray, spool)


@pytest.fixture
async def device(nursery: trio.Nursery, tmp_path: Path) -> Device:
    return await start_device(nursery, tmp_path)


async def xorriso_toc(image: Path) -> str:
    result = await trio.run_process(
        ["xorriso", "-indev", f"stdio:{image}", "-toc"], capture_stdout=True, capture_stderr=True
    )
    return result.stdout.decode() + result.stderr.decode()


def iso_files(image: Path) -> dict[str, bytes]:
    """Every file of the image's newest tree (by Rock Ridge name) with its content."""
    iso = pycdlib.PyCdlib()
    iso.open(str(image))
    try:
        files = {}
        for root, _dirs, names in iso.walk(rr_path="/"):
            for name in names:
                path = f"{root.rstrip('/')}/{name}"
                out = io.BytesIO()
                iso.get_file_from_iso_fp(out, rr_path=path)
                files[path.lstrip("/")] = out.getvalue()
        return files
    finally:
        iso.close()


def make_tree(base: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return base


async def test_burn_new_then_append_keeps_both_sessions_readable(
    device: Device, tmp_path: Path
) -> None:
    first = {"run-1/a.txt": b"alpha\n", "run-1/deep/b.bin": os.urandom(300_000)}
    second = {"run-2/c.txt": b"gamma\n", "run-2/d.bin": os.urandom(100_000)}
    with trio.fail_after(LIMIT):
        async with device.open(client_time=CLIENT_TIME) as dvd:
            await dvd.upload(make_tree(tmp_path / "one", first) / "run-1")
            assert [e.path for e in await dvd.list()] == [
                "run-1",
                "run-1/a.txt",
                "run-1/deep",
                "run-1/deep/b.bin",
            ]
            await dvd.burn("new")
            assert await dvd.list() == []  # the burned files leave the working directory
            await dvd.upload(make_tree(tmp_path / "two", second) / "run-2")
            await dvd.burn("append")
            status = await dvd.status()
            assert status.state == "idle"
            assert status.media.sessions == 2
            assert status.media.used_bytes == device.disc().stat().st_size
            assert status.media.free_bytes == CAPACITY - status.media.used_bytes

            await dvd.mount()
            listed = {e.path: e for e in await dvd.disc_list()}
            assert listed["run-1/deep/b.bin"].size == 300_000
            assert listed["run-2"].kind == "dir"
            assert await dvd.read("run-1/deep/b.bin") == first["run-1/deep/b.bin"]
            assert await dvd.read_to("run-2/c.txt", tmp_path / "c.txt") == 6
            assert (tmp_path / "c.txt").read_bytes() == b"gamma\n"
            await dvd.unmount()

        toc = await xorriso_toc(device.disc())
    assert "ISO session  :   1 ," in toc and "ISO session  :   2 ," in toc
    assert "2 sessions" in toc
    assert iso_files(device.disc()) == first | second


async def test_timestamps_follow_the_clients_clock(device: Device) -> None:
    explicit = calendar.timegm((1999, 12, 31, 23, 59, 58))
    with trio.fail_after(LIMIT):
        async with device.open(client_time=CLIENT_TIME) as dvd:
            await dvd.put_bytes("now.txt", b"written at the client's now")
            await dvd.put_bytes("old.txt", b"kept mtime", mtime=explicit)
            await dvd.burn("new", volume_id="CLOCK_TEST")
    iso = pycdlib.PyCdlib()
    iso.open(str(device.disc()))
    try:
        created = iso.pvd.volume_creation_date
        assert (created.year, created.month, created.dayofmonth) == (2001, 2, 3)
        assert iso.pvd.volume_identifier.rstrip() == b"CLOCK_TEST"
        for name, expected in (("/now.txt", (101, 2, 3, 4, 5)), ("/old.txt", (99, 12, 31, 23, 59))):
            record = iso.get_record(rr_path=name)
            date = record.date
            got = (date.years_since_1900, date.month, date.day_of_month, date.hour, date.minute)
            assert got == expected, name
            mtime = record.rock_ridge.dr_entries.tf_record.modification_time
            assert (mtime.years_since_1900, mtime.month, mtime.day_of_month) == expected[:3]
            ctime = record.rock_ridge.dr_entries.tf_record.attribute_change_time
            assert (ctime.years_since_1900, ctime.month, ctime.day_of_month) == (101, 2, 3)
    finally:
        iso.close()


async def test_a_second_client_gets_busy(device: Device) -> None:
    with trio.fail_after(LIMIT):
        async with device.open() as first:
            with pytest.raises(NetDVDBusyError, match="busy"):
                async with device.open():
                    pass
            assert (await first.status()).state == "idle"
        async with device.open() as again:  # free once the first one left
            assert (await again.status()).media.blank


async def test_full_disc_is_refused_and_changes_nothing(device: Device) -> None:
    with trio.fail_after(LIMIT):
        async with device.open() as dvd:
            await dvd.put_bytes("small.bin", os.urandom(100_000))
            await dvd.burn("new")
            before = device.disc().read_bytes()
            await dvd.put_bytes("huge.bin", os.urandom(CAPACITY))
            listing = await dvd.list()
            with pytest.raises(NetDVDError, match="disc full") as caught:
                await dvd.burn("append")
            assert caught.value.code == "disc_full"
            assert await dvd.list() == listing
            status = await dvd.status()
            assert status.last_job is not None and status.last_job["code"] == "disc_full"
            assert status.media.sessions == 1
    assert device.disc().read_bytes() == before
    assert list((device.tray / "drive").iterdir()) == [device.disc()]


async def test_failed_burn_restores_disc_and_working_directory(
    device: Device, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fake xorriso: the real one, except that a commit scribbles on the
    # disc image and then fails, as a drive dying mid-write would.
    fake = tmp_path / "bad-xorriso"
    fake.write_text(
        "#!/bin/sh\n"
        'case " $* " in *" -commit "*)\n'
        '  for a in "$@"; do case "$a" in stdio:*) printf junk >> "${a#stdio:}";; esac; done\n'
        '  echo "xorriso : FAILURE : Simulated write error on the medium" >&2; exit 5;;\n'
        "esac\n"
        f'exec {shutil.which("xorriso")} "$@"\n'
    )
    fake.chmod(0o755)
    with trio.fail_after(LIMIT):
        async with device.open() as dvd:
            await dvd.put_bytes("one.txt", b"first session")
            await dvd.burn("new")
            before = device.disc().read_bytes()
            await dvd.put_bytes("two.txt", b"second session")
            listing = await dvd.list()
            monkeypatch.setenv("NETDVD_XORRISO", str(fake))
            with pytest.raises(NetDVDError, match="Simulated write error") as caught:
                await dvd.burn("append")
            assert caught.value.code == "burn_failed"
            monkeypatch.delenv("NETDVD_XORRISO")
            assert await dvd.list() == listing
            assert device.disc().read_bytes() == before
            await dvd.burn("append")  # the same disc and files burn fine afterwards
    assert iso_files(device.disc()) == {"one.txt": b"first session", "two.txt": b"second session"}


async def test_eject_moves_the_disc_out_and_loads_a_blank(device: Device) -> None:
    with trio.fail_after(LIMIT):
        async with device.open() as dvd:
            await dvd.put_bytes("x.txt", b"x")
            await dvd.burn("new")
            burned = device.disc().name
            media = await dvd.eject()
            assert media.present and media.blank and media.name != burned
            assert [p.name for p in device.written()] == [burned]
            assert iso_files(device.written()[0]) == {"x.txt": b"x"}
            assert device.disc().stat().st_size == 0


async def test_copy_then_burn_copy_twice_gives_identical_discs(
    device: Device, tmp_path: Path
) -> None:
    files = {"data/a.bin": os.urandom(200_000), "data/b.txt": b"bee\n"}
    with trio.fail_after(LIMIT):
        async with device.open() as dvd:
            await dvd.upload(make_tree(tmp_path / "src", files) / "data")
            await dvd.burn("new")
            await dvd.put_bytes("later.txt", b"second session")
            await dvd.burn("append")
            original = device.disc().read_bytes()
            await dvd.copy()
            assert (await dvd.status()).staged_copy_bytes == len(original)
            await dvd.eject()
            seen = []
            await dvd.burn_copy(2, progress=seen.append, poll_interval=0.01)
            status = await dvd.status()
            assert status.last_job is not None and status.last_job["ok"]
            assert status.media.blank  # both copies were ejected
    copies = device.written()[1:]
    assert len(copies) == 2
    for copy in copies:
        assert copy.read_bytes() == original
        assert "2 sessions" in await xorriso_toc(copy)
        assert iso_files(copy) == files | {"later.txt": b"second session"}


async def test_burn_copy_needs_a_staged_copy_and_a_blank_disc(device: Device) -> None:
    with trio.fail_after(LIMIT):
        async with device.open() as dvd:
            with pytest.raises(NetDVDError, match="no staged copy"):
                await dvd.burn_copy(1)
            await dvd.put_bytes("x", b"x")
            await dvd.burn("new")
            await dvd.copy()
            with pytest.raises(NetDVDError, match="not blank") as caught:
                await dvd.burn_copy(1)
            assert caught.value.code == "not_blank"


async def test_bad_commands_get_clear_errors(device: Device) -> None:
    with trio.fail_after(LIMIT):
        async with device.open(init=False) as dvd:
            with pytest.raises(NetDVDError, match="send 'init' first"):
                await dvd.list()
            with pytest.raises(NetDVDError, match="version 7 is not spoken") as caught:
                await dvd.request("init", version=7, time=0)
            assert caught.value.code == "bad_version"
            await dvd.init()
            with pytest.raises(NetDVDError, match="unknown command 'frobnicate'") as caught:
                await dvd.request("frobnicate")
            assert caught.value.code == "bad_command"
            with pytest.raises(NetDVDError, match="'mode' must be 'new' or 'append'"):
                await dvd.request("burn", mode="sideways")
            with pytest.raises(NetDVDError, match="without '.', '..'") as caught:
                await dvd.put_bytes("../escape.txt", b"no")
            assert caught.value.code == "bad_path"
            with pytest.raises(NetDVDError, match="working directory is empty"):
                await dvd.burn("new")
            await dvd.put_bytes("a.txt", b"a")
            with pytest.raises(NetDVDError, match="blank; burn it as a new disc"):
                await dvd.burn("append")
            with pytest.raises(NetDVDError, match="not in the working directory"):
                await dvd.delete("nothing")
            with pytest.raises(NetDVDError, match="blank"):
                await dvd.mount()
            with pytest.raises(NetDVDError, match="not mounted"):
                await dvd.disc_list()
            await dvd.burn("new", keep=True)
            with pytest.raises(NetDVDError, match="not blank"):
                await dvd.burn("new")
            await dvd.mount()
            with pytest.raises(NetDVDError, match="'missing.txt' is not on the disc"):
                await dvd.read("missing.txt")
            assert await dvd.read("a.txt") == b"a"
            await dvd.delete("a.txt")
            assert await dvd.list() == []


async def test_a_broken_frame_gets_a_protocol_error_and_a_hangup(device: Device) -> None:
    with trio.fail_after(LIMIT):
        stream = await trio.open_tcp_stream("127.0.0.1", device.port)
        async with stream:
            await stream.receive_some(100)  # hello
            await stream.send_all(b"\xff\xff\xff\xff")
            received = b""
            while chunk := await stream.receive_some(1000):
                received += chunk
        assert b"protocol" in received and b"limit" in received
        # the device is free again for the next client
        async with device.open() as dvd:
            assert (await dvd.status()).state == "idle"


async def test_missing_disc_is_reported(nursery: trio.Nursery, tmp_path: Path) -> None:
    device = await start_device(nursery, tmp_path, auto_blank=False)
    with trio.fail_after(LIMIT):
        async with device.open() as dvd:
            # no blank in the supply and none made up: the drive starts empty
            status = await dvd.status()
            assert status.media.present is False
            await dvd.put_bytes("a.txt", b"a")
            for call in (partial(dvd.burn, "new"), dvd.mount, dvd.copy, dvd.eject):
                with pytest.raises(NetDVDError, match="no disc") as caught:
                    await call()
                assert caught.value.code == "no_disc"
            assert [e.path for e in await dvd.list()] == ["a.txt"]
            # an operator loads a blank disc by hand
            (device.tray / "drive" / "disc-0100.iso").touch()
            await dvd.burn("new")
            assert (await dvd.status()).media.sessions == 1


async def test_status_reports_progress_while_a_burn_runs(device: Device) -> None:
    with trio.fail_after(LIMIT):
        async with device.open() as dvd:
            await dvd.put_bytes("big.bin", os.urandom(3 * MiB))
            await dvd.start_burn("new")
            status = await dvd.status()
            assert status.state == "burning"
            job = status.job
            assert job is not None and job.op == "burn"
            assert 0.0 <= job.percent <= 100.0
            assert job.bytes_done >= 0 and job.bytes_total >= 0
            assert job.seconds_left is None or job.seconds_left >= 0
            with pytest.raises(NetDVDError, match="busy with 'burn'"):
                await dvd.start_burn("new")
            with pytest.raises(NetDVDError, match="being burned"):
                await dvd.put_bytes("more.txt", b"not now")
            outcome = await dvd.wait()
            assert outcome["ok"] is True
            status = await dvd.status()
            assert status.state == "idle" and status.job is None
            assert status.media.sessions == 1
