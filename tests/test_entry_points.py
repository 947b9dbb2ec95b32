"""A component in a package of its own, outside this repository, runs under ``turbine mcp``.

The test writes the package in a temporary directory, installs it into a
fresh venv layered on this one (offline: ``--no-deps --no-build-isolation``),
and runs a site with it as a ``[[component]]``: its settings are checked before
anything starts, ``turbine components`` names where it comes from, and it
publishes and answers commands like a component of this repository.  The
second test does the same with the package ``turbine new component`` writes,
and runs that package's own generated test in the venv it is installed in.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import sysconfig
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from tests.test_mcp import open_mcp_process
from turbine import open_client, send_command
from turbine.testing import next_frames

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
        video = "lab_instruments.blink"

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
kind = "{kind}"
name = "b1"
[component.settings]
{key} = {value}
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


def _install(tmp_path: Path, src: Path) -> Path:
    """Install the package in ``src`` into a fresh venv; the venv's python."""
    python = _venv(tmp_path)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q"]
        + ["--no-deps", "--no-build-isolation", "--no-index", str(src)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return python


@contextlib.asynccontextmanager
async def _running_site(python: Path, site: Path) -> AsyncIterator[str]:
    """``turbine mcp site`` run by ``python``; yields its broker's address, stops it on exit."""
    argv = [str(python), "-c", "from turbine.cli import main; main()", "mcp", str(site)]
    async with open_mcp_process(argv, site.with_suffix(".log"), started_within=20) as (_, address):
        yield address


async def test_a_package_installed_from_outside_runs_under_the_mcp(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for rel, text in FILES.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(textwrap.dedent(text).lstrip())
    python = _install(tmp_path, src)
    listed = _turbine(python, "components")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
    assert rows["blink"][1:] == ["daq", "lab_instruments.blink", "lab-instruments", "1.2"]
    assert rows["daq"][1:3] == ["daq", "components.daq"]
    # Two distributions giving one kind name: one is used, and the listing says so.
    used = rows["video"][2]
    lost = "lab_instruments.blink" if used == "components.video" else "components.video"
    assert (
        "warning: kind 'video' of " in listed.stderr and f"({lost}) is hidden by" in listed.stderr
    )
    assert f"({used}): rename one of them or uninstall one" in listed.stderr
    # The kind is not installed in the venv running this test.
    ours = _turbine(Path(sys.executable), "components")
    assert "blink" not in ours.stdout
    as_json = json.loads(_turbine(python, "components", "--json").stdout)
    (blink,) = [row for row in as_json if row["kind"] == "blink"]
    assert blink["path"].startswith(str(tmp_path / "venv" / "lib"))  # installed there
    assert blink["path"].endswith("site-packages/lab_instruments/blink")
    # One distribution found twice (its egg-info beside its install) is no clash.
    assert "warning" not in ours.stderr

    bad = tmp_path / "bad.toml"
    bad.write_text(SITE.format(kind="blink", key="period", value=-1.0))
    refused = _turbine(python, "mcp", str(bad))
    assert refused.returncode != 0
    assert "bad.toml: component[1].settings: setting 'period': expected seconds > 0, got -1.0" in (
        refused.stderr
    )
    assert "turbine listening" not in refused.stdout  # refused before anything started
    # A site naming the clashing kind is told which package runs it.
    clash = tmp_path / "clash.toml"
    clash.write_text(SITE.format(kind="video", key="nosuch", value=1))
    told = _turbine(python, "mcp", str(clash)).stderr
    assert f"component[1].kind 'video' runs {used} (" in told
    assert f"{lost} (" in told and "registers the same name and is not used" in told

    site = tmp_path / "site.toml"
    site.write_text(SITE.format(kind="blink", key="period", value=0.05))
    async with _running_site(python, site) as address:
        with trio.fail_after(30):
            async with open_client(address) as tb:
                (first,) = await next_frames(tb, "daq_b1_data_source/n", start="oldest")
                assert first.data == b"0"
                reply = await send_command(tb, "daq_b1", "blink", "hello")
                assert reply.ok and reply.result == "HELLO"
                status = await send_command(tb, "daq_b1", "status")
                assert status.ok and status.result["settings"] == {"period": 0.05}
                mcp = await send_command(tb, "mcp_lab", "status")
                assert mcp.ok
                assert json.dumps(mcp.result).count("daq_b1") >= 1


async def test_a_new_component_passes_its_own_test_and_runs_under_the_mcp(tmp_path: Path) -> None:
    """``turbine new component``, installed as a lab would: its test passes, the MCP runs it."""
    made = _turbine(Path(sys.executable), "new", "component", "spectro", "--dir", str(tmp_path))
    assert made.returncode == 0, made.stderr
    root = tmp_path / "spectro"
    assert f"wrote {root / 'spectro' / 'component.py'}" in made.stdout
    python = _install(tmp_path, root)
    listed = _turbine(python, "components").stdout.splitlines()
    assert ["spectro", "daq", "spectro", "spectro", "0.1.0"] in [line.split() for line in listed]

    # Its own test, as generated, run by the venv it is installed in.
    with trio.fail_after(120):
        ran = await trio.run_process(
            [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider"],
            cwd=root,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    out = (ran.stdout + ran.stderr).decode()
    assert ran.returncode == 0, out
    assert "2 passed" in out

    bad = tmp_path / "bad.toml"
    bad.write_text(SITE.format(kind="spectro", key="interval", value=0))
    refused = _turbine(python, "mcp", str(bad))
    assert "component[1].settings: setting 'interval': expected seconds > 0, got 0" in (
        refused.stderr
    )

    site = tmp_path / "site.toml"
    site.write_text(SITE.format(kind="spectro", key="interval", value=0.05))
    async with _running_site(python, site) as address:
        with trio.fail_after(30):
            async with open_client(address) as tb:
                (first,) = await next_frames(tb, "daq_b1_data_source/count", start="oldest")
                assert first.data == b"0"
                reply = await send_command(tb, "daq_b1", "set-step", 7)
                assert reply.ok and reply.result == "step 7"
                status = await send_command(tb, "daq_b1", "status")
                assert status.result["settings"] == {"interval": 0.05, "step": 7}

    again = _turbine(Path(sys.executable), "new", "component", "spectro", "--dir", str(tmp_path))
    assert again.returncode == 2 and "exists already" in again.stderr
    taken = _turbine(Path(sys.executable), "new", "component", "daq", "--dir", str(tmp_path))
    assert taken.returncode == 2 and "kind 'daq' is installed already" in taken.stderr
    bad_kind = _turbine(Path(sys.executable), "new", "component", "Spec-1")
    assert bad_kind.returncode == 2 and "lowercase letters, digits and '_'" in bad_kind.stderr
