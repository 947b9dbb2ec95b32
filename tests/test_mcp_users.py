"""A site with ``[auth]``: the users, rights and tokens the MCP makes (no processes)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from turbine.auth import AuthTable, token_hash
from turbine.mcp import SiteConfigError, load_config
from turbine.mcp.users import prepare_users, program_env, site_rights

REPO = Path(__file__).resolve().parent.parent

SITE = """
[mcp]
name = "lab"

[broker]
port = 0
types = ["mcp", "dvd"]

[auth]
dir = "{dir}"

[[process]]
name = "web"
kind = "web"
user = "viewer"
rights = {{ read = ["*"] }}

[[process]]
name = "camera"
kind = "camera_sim"

[[component]]
kind = "video"
name = "cam1"
settings = {{ mode = "synthetic" }}

[[component]]
kind = "thumbnailer"
name = "thumbs"

[[component]]
kind = "ntcp_translator"
name = "rig"
settings = {{ control = "127.0.0.1:6000" }}

[[component]]
kind = "ntcp_serdes"
name = "rigSerdes"
settings = {{ translator = "rig", port = 6001 }}

[[component]]
kind = "dvd_archiver"
name = "arch"
rights = {{ command = ["daq_extra_command_sink"] }}
settings = {{ netdvd = "127.0.0.1:4444", patterns = ["daq_*_data_source/*", "*_data_source/metadata.txt"] }}
"""


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config home of our own, with no token in the environment."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("TURBINE_TOKEN", raising=False)
    monkeypatch.delenv("TURBINE_TOKEN_FILE", raising=False)
    return tmp_path / "config"


def site(tmp_path: Path, text: str = SITE) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(text.format(dir=tmp_path / "auth"))
    return path


def test_each_kind_gets_what_its_settings_say_and_only_the_serdes_commands_the_rig(
    tmp_path: Path,
) -> None:
    rights = site_rights(load_config(site(tmp_path)))
    assert set(rights) == {
        "mcp_lab",
        "viewer",
        "video_cam1",
        "thumbnail_thumbs",
        "ntcp_rig",
        "ntcp_rigSerdes",
        "dvd_arch",
        "operator",
    }
    cam = rights["video_cam1"]
    own = [f"video_cam1_{e}" for e in ("data_source", "debug_log_source", "command_sink")]
    assert all(cam.allows("write", s) and cam.allows("read", s) for s in own)
    assert not cam.allows("read", "video_cam2_data_source")
    assert not cam.allows("command", "video_cam1_command_sink")
    thumbs = rights["thumbnail_thumbs"]
    assert thumbs.allows("read", "video_cam1_data_source")
    assert thumbs.allows("write", "thumbnail_cam1_data_source")
    assert not thumbs.allows("write", "video_cam1_data_source")
    assert not thumbs.allows("read", "daq_x_data_source")
    serdes = rights["ntcp_rigSerdes"]
    assert serdes.allows("command", "ntcp_rig_command_sink")
    assert serdes.allows("read", "ntcp_rig_command_source")
    arch = rights["dvd_arch"]
    assert arch.allows("read", "daq_x_data_source") and arch.allows(
        "read", "video_cam1_data_source"
    )
    assert not arch.allows("read", "video_cam1_debug_log_source")
    assert arch.allows("command", "daq_extra_command_sink")  # the table's extra pattern
    assert rights["viewer"].allows("read", "ntcp_rig_data_source")
    assert not rights["viewer"].allows("command", "daq_extra_command_sink")
    op = rights["operator"]
    assert op.admin and op.allows("read", "anything_data_source")
    assert op.allows("command", "video_cam1_command_sink")
    assert op.allows("command", "mcp_lab_command_sink")
    # Nobody but its serdes plugin may command the rig.
    holders = [u for u, r in rights.items() if r.allows("command", "ntcp_rig_command_sink")]
    assert holders == ["ntcp_rigSerdes"]


def test_tokens_are_made_once_kept_private_and_the_operator_s_left_for_the_cli(
    tmp_path: Path, home: Path
) -> None:
    config = load_config(site(tmp_path))
    users = prepare_users(config)
    token_file = home / "turbine" / "token"
    assert users.operator_file == token_file
    operator = token_file.read_text().strip()
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    auth_dir = tmp_path / "auth"
    assert stat.S_IMODE(auth_dir.stat().st_mode) == 0o700
    table = AuthTable.load(auth_dir / "auth.toml")
    assert table.login(operator).name == "operator"  # type: ignore[union-attr]
    cam = (auth_dir / "tokens" / "video_cam1").read_text().strip()
    assert table.login(cam).name == "video_cam1"  # type: ignore[union-attr]
    assert table.login(users.mcp_token).name == "mcp_lab"  # type: ignore[union-attr]
    # Only hashes in the auth file.
    text = (auth_dir / "auth.toml").read_text()
    assert operator not in text and cam not in text and token_hash(cam) in text
    # A user added by hand is kept; a second start keeps every token.
    with (auth_dir / "auth.toml").open("a") as fh:
        fh.write(f'\n[users.guest]\ntoken_sha256 = "{token_hash("guest-token")}"\nread = ["*"]\n')
    again = prepare_users(config)
    assert again.mcp_token == users.mcp_token
    assert token_file.read_text().strip() == operator
    assert (auth_dir / "tokens" / "video_cam1").read_text().strip() == cam
    assert again.table.login("guest-token").name == "guest"  # type: ignore[union-attr]


def test_an_operator_token_already_in_the_environment_is_used_and_no_file_written(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TURBINE_TOKEN", "the-operators-own")
    users = prepare_users(load_config(site(tmp_path)))
    assert users.operator_file is None
    assert users.table.login("the-operators-own").name == "operator"  # type: ignore[union-attr]
    assert not (home / "turbine" / "token").exists()


def test_each_program_gets_the_path_of_its_own_token_and_no_other(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(site(tmp_path))
    prepare_users(config)
    parent = {"TURBINE_TOKEN": "operator-secret", "PATH": "/bin"}
    by_label = {p.label: p for p in config.programs}
    cam = program_env(config, by_label["video_cam1"], parent)
    assert cam == {"PATH": "/bin", "TURBINE_TOKEN_FILE": str(tmp_path / "auth/tokens/video_cam1")}
    web = program_env(config, by_label["web"], parent)
    assert web["TURBINE_TOKEN_FILE"] == str(tmp_path / "auth/tokens/viewer")
    # A process without a user gets no token at all (not the operator's file either).
    sim = program_env(config, by_label["camera"], parent)
    assert sim["TURBINE_TOKEN_FILE"] == os.devnull and "TURBINE_TOKEN" not in sim
    # Without [auth], the environment is the parent's.
    plain = load_config(site(tmp_path, SITE.replace('[auth]\ndir = "{dir}"\n', "")))
    assert plain.auth is None
    assert program_env(plain, plain.programs[0], parent) is parent


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('[auth]\ndir = "{dir}"', '[auth]\nfolder = "x"'), "auth.folder: unknown key"),
        (
            ("embedded = true", "embedded = false\naddress = '127.0.0.1:1'"),
            "auth: only with [broker] embedded = true",
        ),
        (
            ('name = "camera"\n', 'name = "camera"\nrights = {{ read = ["*"] }}\n'),
            "process[2].user: missing",
        ),
        (('read = ["*"]', 'read = ["a b"]'), "process[1].rights.read: invalid pattern 'a b'"),
        (('read = ["*"]', 'reed = ["*"]'), "process[1].rights.reed: unknown key"),
        (('user = "viewer"', 'user = "../x"'), "process[1].user: expected a name"),
        (
            ('user = "viewer"', 'user = "operator"'),
            "process[1].user: 'operator' is the site's operator",
        ),
        (('user = "viewer"', 'user = "mcp_lab"'), "process[1].user: 'mcp_lab' is the site's MCP"),
    ],
)
def test_auth_mistakes_in_the_site_file_are_reported(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    text = SITE.replace("[broker]\n", "[broker]\nembedded = true\n").replace(*change)
    with pytest.raises(SiteConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(site(tmp_path, text))


def test_a_process_s_command_line_is_not_a_right(tmp_path: Path) -> None:
    text = SITE.replace(
        'name = "camera"\nkind = "camera_sim"', 'name = "camera"\ncommand = ["true"]\nuser = "sim"'
    )
    rights = site_rights(load_config(site(tmp_path, text)))
    assert rights["sim"].command == () and rights["sim"].read == ()


def test_the_demo_site_has_auth_on() -> None:
    demo = load_config(REPO / "configs" / "demo.toml")
    assert demo.auth is not None
    rights = site_rights(demo)
    assert rights["web"].allows("read", "daq_demo_data_source")
    assert rights["web"].allows("command", "mcp_demo_command_sink")  # the viewer's site panel
    holders = [u for u, r in rights.items() if r.allows("command", "ntcp_rig_command_sink")]
    assert holders == ["ntcp_rigSerdes"]
