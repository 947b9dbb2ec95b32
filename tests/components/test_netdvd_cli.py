"""The device as a user starts it: ``python -m components.netdvd``."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from components.netdvd import open_netdvd
from turbine.testing import printed_line

pytestmark = pytest.mark.skipif(shutil.which("xorriso") is None, reason="needs xorriso")

ROOT = Path(__file__).resolve().parents[2]


async def test_cli_serves_and_prints_its_address(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "components.netdvd", "--port", "0"]
    command += ["--tray", str(tmp_path / "tray"), "--capacity", str(2 * 1024 * 1024)]
    with trio.fail_after(20):
        process = await trio.lowlevel.open_process(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            line = await printed_line(process, "the device")
            words = line.decode().split()
            assert words[:3] == ["netdvd", "listening", "on"]
            host, port = words[3].rsplit(":", 1)
            async with open_netdvd(host, int(port)) as dvd:
                status = await dvd.status()
                assert status.media.blank and status.media.capacity_bytes == 2 * 1024 * 1024
                assert "emulated drive" in status.drive
            assert (tmp_path / "tray" / "drive").is_dir()
            assert (tmp_path / "tray" / "spool" / "work").is_dir()
        finally:
            process.kill()
            await process.wait()
            if process.stdout is not None:
                await process.stdout.aclose()
            if process.stderr is not None:
                await process.stderr.aclose()


def test_cli_rejects_an_unusable_capacity(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from components.netdvd.__main__ import main

    result = CliRunner().invoke(main, ["--tray", str(tmp_path / "t"), "--capacity", "1000"])
    assert result.exit_code == 1
    assert "too small" in result.output
