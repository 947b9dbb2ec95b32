"""A component in a package of its own, outside this repository, runs under ``turbine mcp``.

The test writes the package in a temporary directory, installs it into a
fresh venv layered on this one (offline: ``--no-deps --no-build-isolation``),
and runs a site with it as a ``[[component]]``: its settings are checked before
anything starts, ``turbine components`` names where it comes from, and it
publishes and answers commands like a component of this repository.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
import trio

from turbine import Frame, open_client, send_command

pytestmark = pytest.mark.slow

FILES = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools>=70.1"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "lab-instruments"
        version = "1.2"

        [project.entry-points."turbine.components"]
        blink = "lab_instruments.blink"

        [tool.setuptools.packages.find]
        include = ["lab_instruments*"]
    """,
    "lab_instruments/__init__.py": "",
    "lab_instruments/blink/__init__.py": "",
    "lab_instruments/blink/__main__.py": """
        from lab_instruments.blink.component import Blink

        Blink.main()
    """,
    "lab_instruments/blink/component.py": """
        import attrs
        import trio
        from turbine import Component, command
        from turbine.settings import check


        @attrs.frozen
        class BlinkSettings:
            period: float = attrs.field(default=1.0, validator=check(lambda v: v > 0, "seconds > 0"))


        class Blink(Component):
            type = "daq"
            channels = {"n": "text/plain"}
            Settings = BlinkSettings

            async def run(self) -> None:
                n = 0
                while True:
                    await self.data.put("n", str(n).encode())
                    await self.data.flush()
                    n += 1
                    await trio.sleep(self.config.period)

            @command("blink", help="answer with WORD")
            async def blink(self, word: str) -> str:
                return word.upper()


        COMPONENT = Blink
    """,
}

SITE = """
[mcp]
name = "lab"

[broker]
port = 0

[[component]]
kind = "blink"
name = "b1"
[component.settings]
period = {period}
"""


def _venv(tmp_path: Path) -> Path:
    """A venv that sees this one's packages (turbine included) and installs into its own."""
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        check=True,
    )
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # The packages of the venv running this test, with their own .pth files (editable installs).
    ours = sysconfig.get_paths()["purelib"]
    Path(site, "turbine_base.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    return python


def _turbine(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), "-c", "from turbine.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _install(tmp_path: Path) -> Path:
    """Write the package, install it into a fresh venv; the venv's python."""
    src = tmp_path / "src"
    for rel, text in FILES.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(textwrap.dedent(text).lstrip())
    python = _venv(tmp_path)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q"]
        + ["--no-deps", "--no-build-isolation", "--no-index", str(src)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return python


async def test_a_package_installed_from_outside_runs_under_the_mcp(tmp_path: Path) -> None:
    python = _install(tmp_path)
    listed = _turbine(python, "components")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
    assert rows["blink"][1:] == ["daq", "lab_instruments.blink", "lab-instruments", "1.2"]
    assert rows["daq"][1:3] == ["daq", "components.daq"]
    # The kind is not installed in the venv running this test.
    assert "blink" not in _turbine(Path(sys.executable), "components").stdout

    bad = tmp_path / "bad.toml"
    bad.write_text(SITE.format(period=-1.0))
    refused = _turbine(python, "mcp", str(bad))
    assert refused.returncode != 0
    assert "bad.toml: component[1].settings: setting 'period': expected seconds > 0, got -1.0" in (
        refused.stderr
    )
    assert "turbine listening" not in refused.stdout  # refused before anything started

    site = tmp_path / "site.toml"
    site.write_text(SITE.format(period=0.05))
    log = tmp_path / "mcp.log"
    with log.open("wb") as err:  # noqa: ASYNC230 (creating a local file does not block)
        proc = await trio.lowlevel.open_process(
            [str(python), "-c", "from turbine.cli import main; main()", "mcp", str(site)],
            stdout=subprocess.PIPE,
            stderr=err,
        )
    try:
        assert proc.stdout is not None
        line = b""
        with trio.fail_after(20):
            while not line.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(1)
                assert chunk, f"the MCP exited: {log.read_text()}"
                line += chunk
        address = line.split()[-1].decode()
        with trio.fail_after(30):
            async with open_client(address) as tb:
                async with tb.subscribe("daq_b1_data_source/n", start="oldest") as sub:
                    async for item in sub:
                        if isinstance(item, Frame):
                            assert item.data == b"0"
                            break
                reply = await send_command(tb, "daq_b1", "blink", "hello")
                assert reply.ok and reply.result == "HELLO"
                status = await send_command(tb, "daq_b1", "status")
                assert status.ok and status.result["settings"] == {"period": 0.05}
                mcp = await send_command(tb, "mcp_lab", "status")
                assert mcp.ok
                assert json.dumps(mcp.result).count("daq_b1") >= 1
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(10):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
