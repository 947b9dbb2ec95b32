"""The folder drive keeps the Drive contract the emulated (xorriso) drive keeps:
blank and appendable discs, sessions, a full disc refused whole, eject, copies."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from components.netdvd import FolderDrive, NetDVDError, Progress
from turbine.testing import run_blocking_inline

MiB = 2**20


def tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


async def test_sessions_add_up_and_a_full_disc_refuses_the_whole_session(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    run_blocking_inline()
    drive = FolderDrive.open(tmp_path / "tray", capacity=MiB)
    blank = await drive.media()
    assert (blank.present, blank.blank, blank.sessions, blank.free_bytes) == (True, True, 0, MiB)
    one = tree(tmp_path / "one", {"a/x.bin": b"1" * 5000})
    with pytest.raises(NetDVDError) as exc:
        await drive.burn(one, append=True, stamp=0, volume_id="V", progress=Progress("burn"))
    assert exc.value.code == "blank_disc"
    await drive.burn(one, append=False, stamp=0, volume_id="V", progress=Progress("burn"))
    two = tree(tmp_path / "two", {"b/y.bin": b"2" * 3000})
    await drive.burn(two, append=True, stamp=0, volume_id="V", progress=Progress("burn"))
    media = await drive.media()
    assert (media.blank, media.sessions, media.name) == (False, 2, "disc-0001")
    assert media.used_bytes + media.free_bytes == MiB
    files = {e.path: e.size for e in await drive.list_files() if e.kind == "file"}
    assert files == {"a/x.bin": 5000, "b/y.bin": 3000}  # the newest session shows both
    big = tree(tmp_path / "big", {"z.bin": bytes(MiB)})
    with pytest.raises(NetDVDError) as exc:
        await drive.burn(big, append=True, stamp=0, volume_id="V", progress=Progress("burn"))
    assert exc.value.code == "disc_full"
    assert (await drive.media()).sessions == 2  # unchanged
    await drive.extract("a/x.bin", tmp_path / "x.bin")
    assert (tmp_path / "x.bin").read_bytes() == b"1" * 5000


async def test_a_copy_through_an_image_is_the_same_disc(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    run_blocking_inline()
    drive = FolderDrive.open(tmp_path / "tray", capacity=MiB)
    with pytest.raises(NetDVDError, match="blank"):
        await drive.read_image(tmp_path / "image", Progress("copy"))
    source = tree(tmp_path / "s", {"d/f.txt": b"hello"})
    await drive.burn(source, append=False, stamp=0, volume_id="V", progress=Progress("burn"))
    await drive.read_image(tmp_path / "image", Progress("copy"))
    with pytest.raises(NetDVDError) as exc:
        await drive.write_image(tmp_path / "image", Progress("copy"))
    assert exc.value.code == "not_blank"
    await drive.eject()
    assert (await drive.media()).name == "disc-0002" and (await drive.media()).blank
    await drive.write_image(tmp_path / "image", Progress("copy"))
    copy = await drive.media()
    assert (copy.sessions, copy.name) == (1, "disc-0002")
    assert [e.path for e in await drive.list_files() if e.kind == "file"] == ["d/f.txt"]
    assert sorted(p.name for p in (tmp_path / "tray" / "written").iterdir()) == ["disc-0001"]
