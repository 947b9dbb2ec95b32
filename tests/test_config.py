"""Site files for the MCP: what loads, and how each mistake is reported before anything starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import pytest
from click.testing import CliRunner

from components.daq.component import Daq
from turbine._keepalive import RemoteLiveness
from turbine.cli import main
from turbine.mcp import SiteConfigError, load_config

REPO = Path(__file__).resolve().parent.parent

GOOD = """
[mcp]
name = "lab"

[broker]
port = 0
types = ["mcp", "dvd"]

[[process]]
name = "sim"
kind = "daq"
args = ["--name", "x", "--turbine", "{turbine}"]

[[component]]
kind = "daq"
name = "rig1"
args = ["--log-level", "DEBUG"]
[component.settings]
rate = 500
channels = 2
loop = false
channel_settings = { ch1 = { signal = "square" } }
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(SiteConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") or message.startswith(f"cannot read {path}")
    return message[len(str(path)) + 2 :]


def test_the_demo_site_loads() -> None:
    site = load_config(REPO / "configs" / "demo.toml")
    assert site.mcp.name == "demo"
    assert site.embedded and site.broker is not None
    assert (site.broker.host, site.broker.port) == ("127.0.0.1", 3333)
    assert {"mcp", "dvd", "daq", "video"} <= set(site.broker.types)
    assert site.data_dir == os.path.abspath("var/turbine")  # frames and numbers survive restarts
    labels = [p.label for p in site.programs]
    assert "daq_demo" in labels
    assert {"camera", "video_cam1", "video_axis", "thumbnail_thumbnailer", "ntcp_rig"} <= set(
        labels
    )
    assert {"audio_tone", "video_door"} <= set(labels)  # the seed's audio and still camera


def test_a_site_becomes_command_lines(tmp_path: Path) -> None:
    site = load_config(write(tmp_path, GOOD))
    sim, rig = site.programs
    assert (sim.label, sim.component) == ("sim", False)
    assert sim.argv("127.0.0.1:4000") == [
        sys.executable,
        "-m",
        "components.daq",
        "--name",
        "x",
        "--turbine",
        "127.0.0.1:4000",
    ]
    assert rig.label == "daq_rig1" and rig.component
    assert rig.settings["rate"] == 500.0 and isinstance(rig.settings["rate"], float)
    assert rig.settings == {
        "rate": 500.0,
        "channels": 2,
        "loop": False,
        "channel_settings": {"ch1": {"signal": "square"}},
    }
    # Settings never travel on the command line (every user's `ps` shows it):
    # the MCP writes them to a pipe the child inherits as --settings-fd.
    assert rig.argv("127.0.0.1:4000", settings_fd=7) == [
        sys.executable,
        "-m",
        "components.daq",
        "--name",
        "rig1",
        "--turbine",
        "127.0.0.1:4000",
        "--settings-fd",
        "7",
        "--log-level",
        "DEBUG",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[[component]]\nkind = "daq"\nname = "a"\n[[component]]\nkind = "daq"\nname = "b"\n'
            'settings = { rate = "fast" }\n',
            "component[2].settings.rate: expected float, got 'fast'",
        ),
        (
            '[[component]]\nkind = "daq"\nname = "a"\nsettings = { channels = 2.5 }\n',
            "component[1].settings.channels: expected int, got 2.5",
        ),
        (
            '[[component]]\nkind = "daq"\nname = "a"\nsettings = { speed = 1 }\n',
            "component[1].settings.speed: unknown setting; daq components take: amplitude, autostart,",
        ),
        (
            '[[component]]\nkind = "daq"\nname = "a"\nsettings = { rate = 50000.0 }\n',
            "component[1].settings: rate 50000 Hz is out of range: use 1 to 10000 Hz per channel",
        ),
        (
            '[[component]]\nkind = "daq"\nname = "tone_1"\n',
            "component[1].name: invalid component name 'tone_1': names are <type>_<name>_<detail>",
        ),
        (
            '[[component]]\nkind = "spectrometer"\nname = "a"\n',
            "component[1].kind: unknown component kind 'spectrometer'; expected one of ",
        ),
        (
            '[[component]]\nname = "a"\n',
            "component[1].kind: missing; expected a component kind",
        ),
        (
            '[[component]]\nkind = "daq"\n',
            "component[1].name: missing; expected a name (e.g. rig1)",
        ),
        (
            '[[component]]\nkind = "daq"\nname = "bad name"\n',
            "component[1].name: expected a name of letters, digits, '_', '.' and '-'",
        ),
        (
            '[[component]]\nkind = "daq"\nname = "a"\nrestart = "yes"\n',
            "component[1].restart: expected bool, got 'yes'",
        ),
        (
            '[[component]]\nkind = "daq"\nname = "a"\ncolour = "red"\n',
            "component[1].colour: unknown key; expected one of ",
        ),
        (
            '[[component]]\nkind = "daq"\nname = "a"\n[[component]]\nkind = "daq"\nname = "a"\n',
            "component[2].name: 'daq_a' is already taken by component[1]",
        ),
        (
            '[[process]]\nname = "p"\nkind = "daq"\ncommand = ["true"]\n',
            "process[1].command: give kind or command, not both",
        ),
        ("[broker]\nembedded = false\n", "broker.address: missing; expected HOST:PORT"),
        (
            '[broker]\ntypes = ["Dvd drive"]\n',
            "broker.types: expected source types like 'dvd', got 'Dvd drive'",
        ),
        (
            '[broker]\nembedded = false\naddress = "h:1"\ndata_dir = "d"\n',
            "broker.data_dir: only with embedded = true",
        ),
        ("[broker]\nport = 70000\n", "broker.port: expected a port number 0-65535, got 70000"),
        (
            "[broker]\nmax_disk = 1000000\n",
            "broker.max_disk: only with data_dir: without one the broker keeps nothing on disk",
        ),
        (
            '[broker]\ndata_dir = "d"\narchive_bytes = -1\n',
            "broker.archive_bytes: expected a number of bytes (0 or more), got -1",
        ),
        (
            "[broker]\nrestart_first = 2.0\nrestart_max = 1.0\n",
            "broker.restart_max: expected at least restart_first (2 s)",
        ),
        (
            '[broker]\nembedded = false\naddress = "h:1"\nrestart_first = 1.0\n',
            "broker.restart_first: only with embedded = true; the MCP restarts only its own broker",
        ),
        ('[mcp]\nname = "a b"\n', "mcp.name: expected a name of letters"),
        ("[mcp]\ngrace = -1\n", "mcp.grace: expected a number of seconds (0 or more), got -1.0"),
        (
            '[[process]]\nname = "p"\ncommand = ["true"]\ngrace = -1\n',
            "process[1].grace: expected a number of seconds (0 or more), got -1.0",
        ),
        (
            '[broker]\nembedded = false\naddress = "h:1"\ngrace = 90.0\n',
            "broker.grace: only with embedded = true; the MCP restarts only its own broker",
        ),
        (
            "[broker]\nkeepalive_idle = 2.5\n",
            "broker.keepalive_idle: expected int, got 2.5",
        ),
        (
            "[broker]\nkeepalive_probes = 0\n",
            "broker: setting 'keepalive_probes': expected whole probes, 1 to 127, got 0",
        ),
        (
            "[broker]\nkeepalive_idle = 10\n",
            "broker: setting 'holder_silence': expected more than 'keepalive_idle' + "
            "'keepalive_interval' (11 s), got 5.0",
        ),
        (
            '[broker]\nembedded = false\naddress = "h:1"\nholder_silence = 9\n',
            "broker.holder_silence: only with embedded = true; the broker at address has its own",
        ),
        ("[site]\n", "site.site: unknown key; expected one of "),
        ("[broker\n", "not valid TOML: "),
    ],
)
def test_mistakes_name_the_file_the_key_and_what_is_expected(
    tmp_path: Path, text: str, expected: str
) -> None:
    assert expected in error(tmp_path, text)


def test_a_site_sets_its_embedded_brokers_disk_budget(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text('[broker]\ndata_dir = "d"\narchive_bytes = 1048576\nmax_disk = 8388608\n')
    site = load_config(path)
    assert (site.archive_bytes, site.max_disk) == (2**20, 2**23)
    path.write_text('[broker]\ndata_dir = "d"\n')
    site = load_config(path)
    assert (site.archive_bytes, site.max_disk) == (2**30, None)  # turbine serve's defaults


def test_a_site_sets_how_its_embedded_broker_finds_clients_on_other_hosts_gone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "site.toml"
    path.write_text("[broker]\nkeepalive_idle = 10\nkeepalive_interval = 2\nholder_silence = 15\n")
    site = load_config(path)
    assert site.broker is not None
    assert site.broker.remote == RemoteLiveness(10, 2, 3, 15.0)
    command = site.broker_program().command
    given = command[command.index("--keepalive-idle") :]
    assert given == (
        "--keepalive-idle",
        "10",
        "--keepalive-interval",
        "2",
        "--holder-silence",
        "15.0",
    )
    path.write_text("[broker]\n")
    assert not [a for a in load_config(path).broker_program().command if "keepalive" in a]


def test_a_site_sets_its_embedded_brokers_restart_delay(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text("[broker]\n")
    site = load_config(path)
    assert site.broker_restart == (0.1, 1.0)  # not [mcp]'s
    path.write_text("[mcp]\nrestart_first = 3.0\n[broker]\nrestart_first = 1.5\n")
    site = load_config(path)
    assert site.broker_restart == (1.5, 1.5)
    assert site.mcp.restart_first == 3.0


def test_the_broker_and_a_program_that_asks_get_a_stop_grace_of_their_own(
    tmp_path: Path,
) -> None:
    path = tmp_path / "site.toml"
    path.write_text('[[process]]\nname = "p"\ncommand = ["true"]\n')
    site = load_config(path)
    # The broker syncs its archive on the way down: not the programs' 5 s.
    assert (site.mcp.grace, site.broker_program().grace) == (5.0, 60.0)
    assert site.programs[0].grace is None  # the site's
    path.write_text(
        "[mcp]\ngrace = 2.0\n[broker]\ngrace = 120.0\n"
        '[[process]]\nname = "p"\ncommand = ["true"]\ngrace = 30\n'
    )
    site = load_config(path)
    assert (site.mcp.grace, site.broker_program(4000).grace, site.programs[0].grace) == (
        2.0,
        120.0,
        30.0,
    )


def test_a_replay_without_its_file_is_caught_before_starting(tmp_path: Path) -> None:
    text = '[[component]]\nkind = "daq"\nname = "a"\nsettings = { mode = "replay", file = "nope.csv" }\n'
    # The site file's directory: where the site means the recording to be.
    missing = tmp_path / "nope.csv"
    assert f"component[1].settings: cannot read recording '{missing}'" in error(tmp_path, text)


def test_a_missing_file() -> None:
    with pytest.raises(SiteConfigError, match="cannot read /nonexistent/site.toml: No such file"):
        load_config("/nonexistent/site.toml")


def test_the_cli_reports_config_errors_and_starts_nothing(tmp_path: Path) -> None:
    path = write(
        tmp_path, '[[component]]\nkind = "daq"\nname = "a"\nsettings = { rate = "fast" }\n'
    )
    result = CliRunner().invoke(main, ["mcp", str(path)])
    assert result.exit_code == 1
    assert f"Error: {path}: component[1].settings.rate: expected float, got 'fast'" in result.output
    assert "listening" not in result.output


def test_a_site_is_checked_without_constructing_its_components(tmp_path: Path) -> None:
    # The DAQ reads its recording when it starts; checking the site only asks
    # whether the file is there (this one is no CSV at all).
    junk = tmp_path / "junk.csv"
    junk.write_bytes(b"\xff\xfe not a recording")
    text = f'[[component]]\nkind = "daq"\nname = "a"\nsettings = {{ mode = "replay", file = "{junk}" }}\n'
    (rig,) = load_config(write(tmp_path, text)).programs
    assert rig.settings == {"mode": "replay", "file": str(junk)}


def test_a_component_reads_its_settings_from_the_inherited_fd() -> None:
    read, write = os.pipe()
    os.write(write, json.dumps({"channels": 2, "rate": 50000.0}).encode())
    os.close(write)
    result = CliRunner().invoke(Daq.cli(), ["--name", "x", "--settings-fd", str(read)])
    assert result.exit_code == 2
    assert "rate 50000 Hz is out of range" in result.output
    with pytest.raises(OSError):
        os.fstat(read)  # read to its end and closed: the component's children never see it
    result = CliRunner().invoke(Daq.cli(), ["--name", "x", "--settings-fd", "999"])
    assert result.exit_code == 2 and "cannot read settings from fd 999" in result.output


def test_the_component_command_line_refuses_an_underscore_in_the_name() -> None:
    result = CliRunner().invoke(Daq.cli(), ["--name", "tone_1"])
    assert result.exit_code == 2 and "may not hold '_'" in result.output


def test_an_unknown_component_kind_lists_component_kinds_only(tmp_path: Path) -> None:
    # A real process: under pytest, `components` may resolve to tests/components.
    site = write(tmp_path, '[[component]]\nkind = "spectrometer"\nname = "a"\n')
    turbine = str(Path(sys.executable).parent / "turbine")
    done = subprocess.run([turbine, "mcp", str(site)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    known = done.stderr.split("expected one of ")[1].strip().split(", ")
    assert "daq" in known and "video" in known
    assert "camera_sim" not in known and "netdvd" not in known  # processes, not components


def test_relative_paths_in_settings_are_relative_to_the_site_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site_dir = tmp_path / "lab" / "site"
    (site_dir / "sounds").mkdir(parents=True)
    with wave.open(str(site_dir / "sounds" / "a.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\0\0" * 80)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the MCP started from another directory
    text = """
[broker]
port = 0
types = ["mcp", "dvd"]

[[component]]
kind = "audio"
name = "mic"
[component.settings]
source = "wav"
file = "{file}"

[[component]]
kind = "dvd_archiver"
name = "a"
[component.settings]
state_dir = "{state}"
netdvd = "127.0.0.1:4444"
"""
    site = site_dir / "site.toml"
    site.write_text(text.format(file="sounds/a.wav", state="/srv/dvd"))
    mic, archiver = load_config(site).programs
    assert mic.settings == {"source": "wav", "file": str(site_dir / "sounds" / "a.wav")}
    assert archiver.settings["state_dir"] == "/srv/dvd"  # absolute: as it is
    assert archiver.settings["netdvd"] == "127.0.0.1:4444"  # not a path: untouched

    site.write_text(text.format(file="../sounds/a.wav", state="var/dvd"))
    with pytest.raises(SiteConfigError) as info:
        load_config(site)
    missing = tmp_path / "lab" / "sounds" / "a.wav"
    assert f"setting 'file': no such file: '{missing}'" in str(info.value)
