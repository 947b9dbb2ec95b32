"""The ``turbine`` command end to end: a real ``turbine serve`` driven by real commands."""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
from click.testing import CliRunner

import turbine
from tests.ports import free_port
from turbine import ConnectionFailed
from turbine.cli import main
from turbine.cli._common import run as cli_run

pytestmark = pytest.mark.slow

TURBINE = str(Path(sys.executable).parent / "turbine")
SRC = "daq_rig_data_source"


def read_line(stream, timeout: float = 10.0) -> str:
    """One line from a child's pipe, or fail after ``timeout`` seconds."""
    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            raise AssertionError(f"no line within {timeout} s")
        return stream.readline()
    finally:
        sel.close()


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


class Serve:
    """A ``turbine serve --port 0`` child process and the address it announced."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [TURBINE, "serve", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            line = read_line(self.proc.stdout)
            assert line.startswith("turbine listening on 127.0.0.1:"), line
            self.address = line.split()[-1]
        except BaseException:
            stop(self.proc)
            raise

    def stop(self) -> None:
        stop(self.proc)


@pytest.fixture(scope="module")
def serve() -> Iterator[Serve]:
    server = Serve("--type", "mcp")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def address(serve: Serve) -> str:
    return serve.address


def tb(address: str | None, *args: str, input: bytes | None = None, timeout: float = 20):
    """Run ``turbine ARGS`` against the broker at ``address``; return the finished process."""
    env = dict(os.environ)
    env.pop("TURBINE_ADDRESS", None)
    if address is not None:
        env["TURBINE_ADDRESS"] = address
    return subprocess.run(
        [TURBINE, *args], input=input, capture_output=True, env=env, timeout=timeout
    )


def ok(address: str, *args: str, input: bytes | None = None) -> str:
    done = tb(address, *args, input=input)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def fails(address: str | None, *args: str, code: int = 1) -> str:
    """Run a command that must fail with ``code``; return its one-line error."""
    done = tb(address, *args)
    err = done.stderr.decode()
    assert done.returncode == code, (done.returncode, err, done.stdout)
    assert "Traceback" not in err
    return err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: ")
    return lines[0]


# --- writing and reading ------------------------------------------------------------------


def test_put_ls_fetch(address):
    src = "daq_cli1_data_source"
    done = tb(address, "put", f"{src}/log.txt", "first line", "second line")
    assert done.returncode == 0
    assert done.stderr.decode().strip() == f"put 2 frames on {src}/log.txt"

    listing = ok(address, "ls", "daq_cli1_*")
    assert f"{src}  [offline]" in listing  # put lets go of the source it opened
    assert "log.txt" in listing and "text/plain" in listing
    assert "2 frames #1-2" in listing
    # Two lines microseconds apart: a rate a person can read (over 1 s at least), not 28,000/s.
    (line,) = [line for line in listing.splitlines() if "log.txt" in line]
    rate = next(word for word in line.split() if word.endswith("/s"))
    assert 0 < float(rate.removesuffix("/s")) <= 1.0, line

    (info,) = json.loads(ok(address, "ls", "--json", src))
    assert info["name"] == src and info["online"] is False
    (channel,) = info["channels"]
    assert (channel["name"], channel["content_type"], channel["frames"]) == (
        "log.txt",
        "text/plain",
        2,
    )
    assert (channel["first_seq"], channel["last_seq"]) == (1, 2)

    text = ok(address, "fetch", f"{src}/log.txt", "--newest", "1").splitlines()
    assert len(text) == 1
    assert text[0].endswith(f"{src}/log.txt #2 second line")

    rows = [
        json.loads(line)
        for line in ok(address, "fetch", src, "--oldest", "5", "--format", "json").splitlines()
    ]
    assert [(r["seq"], r["text"], r["content_type"]) for r in rows] == [
        (1, "first line", "text/plain"),
        (2, "second line", "text/plain"),
    ]
    after = ok(address, "fetch", f"{src}/*", "--after", "1", "--format", "json")
    assert [json.loads(line)["seq"] for line in after.splitlines()] == [2]
    raw = tb(address, "fetch", f"{src}/log.txt", "--oldest", "2", "--format", "raw")
    assert raw.stdout == b"first linesecond line"


def test_put_from_stdin_and_a_file_with_a_content_type(address, tmp_path):
    src = "daq_cli2_data_source"
    ok(address, "put", f"{src}/lines", input=b"a\nb\r\nc\n")
    image = tmp_path / "pic.bin"
    image.write_bytes(bytes(range(256)))
    ok(address, "put", f"{src}/blob", "--file", str(image), "--type", "application/x-test")
    lines = [
        json.loads(x)
        for x in ok(
            address, "fetch", f"{src}/lines", "--oldest", "9", "--format", "json"
        ).splitlines()
    ]
    # Lines typed or piped in are text unless --type says otherwise (a tap shows them as such).
    assert [(row["text"], row["content_type"]) for row in lines] == [
        ("a", "text/plain"),
        ("b", "text/plain"),
        ("c", "text/plain"),
    ]
    ok(address, "put", f"{src}/words", "x", "y")
    assert ok(address, "fetch", f"{src}/words", "--newest", "1").rstrip().endswith("#2 y")
    ok(address, "put", f"{src}/octets", "--type", "application/octet-stream", "z")
    assert "[1 bytes application/octet-stream]" in ok(
        address, "fetch", f"{src}/octets", "--newest", "1"
    )
    (blob,) = [
        json.loads(x)
        for x in ok(
            address, "fetch", f"{src}/blob", "--newest", "1", "--format", "json"
        ).splitlines()
    ]
    assert blob["content_type"] == "application/x-test"
    assert tb(address, "fetch", f"{src}/blob", "--newest", "1", "--format", "raw").stdout == bytes(
        range(256)
    )
    text = ok(address, "fetch", f"{src}/blob", "--newest", "1")
    assert "[256 bytes application/x-test]" in text


def test_seqs_continue_across_puts_and_after_rm(address):
    src = "daq_cli3_data_source"
    ok(address, "put", f"{src}/x", "1")
    ok(address, "put", f"{src}/x", "2")
    assert ok(address, "rm", src).strip().startswith(f"deleted {src} (freed ")
    assert tb(address, "ls", src).stderr.decode().strip() == f"no sources match {src}"
    ok(address, "put", f"{src}/x", "3")
    rows = ok(address, "fetch", f"{src}/x", "--oldest", "10", "--format", "json").splitlines()
    assert [(json.loads(r)["seq"], json.loads(r)["text"]) for r in rows] == [(3, "3")]


def test_fetch_a_time_range(address):
    src = "daq_cli4_data_source"
    with turbine.connect(address) as client:
        s = client.open_source(src)
        for t in (1_700_000_000.0, 1_700_000_001.0, 1_700_000_002.0):
            s.put("x", b"%d" % t, t)
        s.flush()
    rows = ok(
        address,
        "fetch",
        f"{src}/x",
        "--start",
        "2023-11-14T22:13:21Z",
        "--duration",
        "1.5",
        "--format",
        "json",
    )
    assert [json.loads(r)["timestamp"] for r in rows.splitlines()] == [
        1_700_000_001.0,
        1_700_000_002.0,
    ]
    rows = ok(address, "fetch", f"{src}/x", "--start", "1700000002", "--format", "json")
    assert [json.loads(r)["seq"] for r in rows.splitlines()] == [3]


def test_fetch_usage_errors_and_nothing_found(address):
    err = fails(address, "fetch", f"{SRC}/x", code=2)
    assert "give exactly one of --newest N" in err
    err = fails(address, "fetch", f"{SRC}/x", "--newest", "1", "--oldest", "1", code=2)
    assert "give exactly one of" in err
    err = fails(address, "fetch", f"{SRC}/x", "--newest", "1", "--duration", "2", code=2)
    assert "--duration goes with --start" in err
    err = fails(address, "fetch", f"{SRC}/x", "--start", "yesterday", code=2)
    assert "neither seconds since the epoch nor an ISO 8601 time" in err
    err = fails(address, "fetch", f"{SRC}/x", "--start", "-10x", code=2)
    assert "Invalid value: '-10x' is not a time ago (e.g. -90s, -10m, -2h, -1d)" in err
    err = fails(address, "fetch", "daq_nothing_data_source/x", "--newest", "1")
    assert one_line_error(err) == (
        "Error: no source matches daq_nothing_data_source ('turbine ls' lists the sources there are)"
    )
    src = "daq_cli13_data_source"
    ok(address, "put", f"{src}/x", "1")
    err = fails(address, "fetch", f"{src}/y", "--newest", "1")
    assert one_line_error(err) == f"Error: {src} has no channel y; its channels: x"
    done = tb(address, "fetch", f"{src}/x", "--start", "1", "--duration", "1")
    assert done.returncode == 0 and done.stdout == b""
    assert done.stderr.decode().strip() == f"no frames for {src}/x"


def test_meta(address):
    src = "daq_cli5_data_source"
    ok(address, "put", f"{src}/x", "1")
    assert "has published no metadata" in one_line_error(fails(address, "meta", src))
    ok(address, "put", f"{src}/metadata.txt", '{"units": "V"}', '{"units": "mV", "rate": 5}')
    assert json.loads(ok(address, "meta", src)) == {"units": "mV", "rate": 5}
    assert 'metadata: {"rate": 5, "units": "mV"}' in ok(address, "ls", src)
    rows = ok(address, "fetch", f"{src}/metadata.txt", "--oldest", "9", "--format", "json")
    assert [json.loads(r)["seq"] for r in rows.splitlines()] == [1, 2]  # versioned
    assert "no source named 'daq_none_data_source'" in one_line_error(
        fails(address, "meta", "daq_none_data_source")
    )


# --- tap --------------------------------------------------------------------------------


def test_tap_count_and_formats(address):
    src = "daq_cli6_data_source"
    ok(address, "put", f"{src}/log.txt", "a", "b", "c")
    text = ok(address, "tap", f"{src}/*", "--from", "oldest", "--count", "2").splitlines()
    assert [line.split(" ", 1)[1] for line in text] == [
        f"{src}/log.txt #1 a",
        f"{src}/log.txt #2 b",
    ]
    rows = ok(address, "tap", src, "--from", "2", "--count", "2", "--format", "json").splitlines()
    assert [(json.loads(r)["seq"], json.loads(r)["text"]) for r in rows] == [(2, "b"), (3, "c")]
    newest = ok(address, "tap", src, "--from", "newest", "--count", "1").splitlines()
    assert newest[0].endswith("#3 c")
    monitor = ok(address, "tap", src, "--monitor", "--from", "newest", "--count", "1").splitlines()
    assert monitor[0].endswith("#3 c")


def test_tap_timeout(address):
    src = "daq_cli7_data_source"
    ok(address, "put", f"{src}/x.txt", "only")
    err = one_line_error(
        fails(address, "tap", src, "--from", "oldest", "--count", "2", "--timeout", "0.5")
    )
    assert err == f"Error: only 1 of 2 frames arrived from {src} within 0.5 s"
    done = tb(address, "tap", "daq_none_data_source/*", "--timeout", "0.2")
    assert done.returncode == 1
    assert "waiting for daq_none_data_source/* (nothing matches it yet)" in done.stderr.decode()
    assert "only 0 frames arrived" in done.stderr.decode()


def test_tap_waits_for_a_source_that_does_not_exist_yet(address):
    src = "daq_cli8_data_source"
    env = dict(os.environ, TURBINE_ADDRESS=address)
    tap = subprocess.Popen(
        [TURBINE, "tap", f"{src}/x.txt", "--count", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert "nothing matches it yet" in read_line(tap.stderr)
        ok(address, "put", f"{src}/x.txt", "first", "second")
        out, _ = tap.communicate(timeout=10)
        assert tap.returncode == 0
        assert [line.split(" ", 1)[1] for line in out.splitlines()] == [
            f"{src}/x.txt #1 first",
            f"{src}/x.txt #2 second",
        ]
    finally:
        stop(tap)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "term"])
def test_a_signal_ends_a_tap_cleanly(address, signum):
    src = "daq_cli9_data_source"
    env = dict(os.environ, TURBINE_ADDRESS=address)
    ok(address, "put", f"{src}/x.txt", "before")
    tap = subprocess.Popen(
        [TURBINE, "tap", f"{src}/x.txt", "--from", "oldest"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
        # Ctrl-C as a terminal delivers it: a test run started in the background
        # (nohup, "&" in a script) ignores SIGINT, and the tap would inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert read_line(tap.stdout).endswith(f"{src}/x.txt #1 before\n")
        tap.send_signal(signum)
        _, err = tap.communicate(timeout=10)
        assert (tap.returncode, err) == (0, "")
    finally:
        stop(tap)


def test_ctrl_c_that_a_background_task_met_is_still_an_interrupt():
    # Ctrl-C raised in a task beside the main one, with what it broke beside it
    # in the group: "interrupted" (130), not a traceback.
    async def interrupted() -> None:
        raise BaseExceptionGroup("", [KeyboardInterrupt(), ConnectionFailed("lost")])

    with pytest.raises(SystemExit) as exc:
        cli_run(interrupted)
    assert exc.value.code == 130


def test_tap_bad_start_is_a_usage_error(address):
    assert "one of now, newest, oldest or a sequence number >= 1" in fails(
        address, "tap", "*", "--from", "later", code=2
    )


# --- status and rm -------------------------------------------------------------------------


def test_status(address):
    with turbine.connect(address, name="holder") as client:
        client.open_source("daq_cli9_data_source")
        text = ok(address, "status")
        st = json.loads(ok(address, "status", "--json"))
    assert text.startswith(f"turbine {turbine.__version__} (protocol 1)")
    assert "memory:" in text and "clients: 2" in text
    assert "holds: daq_cli9_data_source" in text
    assert st["version"] == turbine.__version__
    assert {"used", "reserved", "limit"} <= set(st["memory"])
    names = [c["name"].split("#")[0] for c in st["clients"]]
    assert sorted(names) == ["holder", "turbine"]


def test_rm_refusals(address):
    err = one_line_error(fails(address, "rm", "daq_missing_data_source"))
    assert "no source named 'daq_missing_data_source'" in err
    with turbine.connect(address, name="holder") as client:
        client.open_source("daq_cli10_data_source")
        err = one_line_error(fails(address, "rm", "daq_cli10_data_source"))
    assert "held by holder#" in err


# --- bad input ------------------------------------------------------------------------------


def test_no_broker_is_one_line_and_exit_1():
    address = f"127.0.0.1:{free_port()}"
    for args in (
        ["ls"],
        ["status"],
        ["put", f"{SRC}/x", "1"],
        ["tap", "*"],
        ["fetch", "*", "--newest", "1"],
    ):
        err = one_line_error(fails(address, *args))
        assert f"no broker at {address}" in err
        assert "start one with 'turbine serve'" in err


def test_a_bad_address_says_what_is_wrong_with_it():
    for address, why in (
        ("127.0.0.1:99999", "a port is 1 to 65535"),
        ("127.0.0.1:0", "a port is 1 to 65535"),
        ("127.0.0.1:port", "expected HOST:PORT"),
    ):
        err = one_line_error(fails(None, "ls", "--turbine", address))
        assert err == f"Error: bad broker address {address!r}: {why}"


def test_invalid_names(address):
    err = one_line_error(fails(address, "put", "camera1/x", "1"))
    assert "invalid source name 'camera1'" in err and "<type>_<name>_<detail>" in err
    assert "is not a SOURCE/CHANNEL path" in fails(address, "put", "nochannel", "1")
    err = fails(address, "ls", "a b")
    assert "invalid pattern" in one_line_error(err)
    ok(address, "put", "mcp_main_command_sink/x", "extra types are configurable")


def test_put_to_a_held_source(address):
    private, shared = "daq_cli11_data_source", "daq_cli12_data_source"
    with turbine.connect(address, name="component") as client:
        client.open_source(private)
        client.open_source(shared, shared=True)
        err = one_line_error(fails(address, "put", f"{private}/x", "1"))
        assert "held by component#" in err and "not shared" in err
        ok(address, "put", f"{shared}/x", "welcome")
        (frame,) = client.fetch(f"{shared}/x", newest=1)
        (info,) = client.list_sources(shared)
    assert frame.data == b"welcome" and frame.writer.startswith("turbine#")
    assert info.online  # the component still holds it


def test_garbage_on_the_socket_is_answered_and_the_broker_carries_on(address):
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: turbine\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    messages = []
    while data:
        head_len = int.from_bytes(data[:4], "big")
        pay_len = int.from_bytes(data[4:8], "big")
        messages.append(msgpack.unpackb(data[8 : 8 + head_len]))
        data = data[8 + head_len + pay_len :]
    assert [m["type"] for m in messages] == ["hello", "error"]
    assert messages[1]["code"] == "protocol"
    assert "garbage on the wire" in messages[1]["message"]
    ok(address, "ls")  # still serving
    closed = json.loads(ok(address, "status", "--json"))["closed"]
    assert any("garbage on the wire" in c["reason"] for c in closed)


# --- serve ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_shut_serve_down_cleanly(sig):
    server = Serve()
    try:
        ok(server.address, "put", f"{SRC}/x", "1")
        server.proc.send_signal(sig)
        out, err = server.proc.communicate(timeout=10)
    finally:
        server.stop()
    assert server.proc.returncode == 0, err
    assert "turbine: shutting down" in err
    assert "Traceback" not in err


def test_serve_options(tmp_path):
    server = Serve("--max-memory", "20MiB", "--max-frame", "1000", "--lenient-names")
    try:
        address = server.address
        ok(address, "put", "camera1/x", "lenient")  # reserves the default 16 MiB
        big = tmp_path / "big"
        big.write_bytes(bytes(1001))
        err = one_line_error(fails(address, "put", "camera2/x", "--file", str(big)))
        assert "over the broker's limit of 1000 bytes" in err
        # camera1 went offline after its put, so it made room for camera2.
        assert [s["name"] for s in json.loads(ok(address, "ls", "--json"))] == ["camera2"]
        with turbine.connect(address, name="turbine") as client:  # camera2's owner
            client.open_source("camera3")  # held: not evictable
            err = one_line_error(fails(address, "put", "camera4/x", "1"))
        assert "only 4.0 MiB of the broker's 20.0 MiB are left" in err
        st = json.loads(ok(address, "status", "--json"))
        assert st["memory"]["limit"] == 20 * 2**20
    finally:
        server.stop()


@pytest.mark.parametrize("data_dir", [False, True], ids=["memory", "data-dir"])
def test_serve_on_a_port_in_use_is_one_line_and_exit_1(data_dir: bool, tmp_path: Path):
    archive = ["--data-dir", str(tmp_path / "data")] if data_dir else []
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        done = subprocess.run(
            [TURBINE, "serve", "--port", str(port), *archive],
            capture_output=True,
            timeout=20,
            text=True,
        )
    assert done.returncode == 1
    assert (
        done.stderr.strip() == f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"
    )


def test_serve_takes_how_it_finds_clients_on_other_hosts_gone_and_status_says_it():
    server = Serve(
        *("--keepalive-idle", "10", "--keepalive-interval", "2", "--keepalive-probes", "5"),
        *("--holder-silence", "15"),
    )
    try:
        st = json.loads(ok(server.address, "status", "--json"))
        assert st["remote"] == {
            "keepalive_idle": 10,
            "keepalive_interval": 2,
            "keepalive_probes": 5,
            "holder_silence": 15.0,
        }
        assert (
            "clients on other hosts: probed after 10 s of silence, every 2 s, ended after 5 "
            "unanswered; their sources go to their reconnect after 15 s of silence"
        ) in ok(server.address, "status")
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("args", "refused"),
    [
        (["--keepalive-idle", "-1"], "--keepalive-idle: expected whole seconds, 0 to 32767"),
        (["--keepalive-probes", "0"], "--keepalive-probes: expected whole probes, 1 to 127, got 0"),
        (
            ["--holder-silence", "3"],
            "--holder-silence: expected more than --keepalive-idle + --keepalive-interval (4 s)",
        ),
        (["--keepalive-idle", "0"], "--holder-silence: expected 0 with --keepalive-idle 0"),
    ],
)
def test_keepalive_and_holder_silence_that_cannot_work_are_usage_errors(args, refused):
    done = CliRunner().invoke(main, ["serve", "--port", "0", *args])
    assert done.exit_code == 2, done.output
    assert refused in done.output


def test_bad_sizes_are_usage_errors():
    done = subprocess.run(
        [TURBINE, "serve", "--max-memory", "lots"], capture_output=True, timeout=20, text=True
    )
    assert done.returncode == 2
    assert "'lots' is not a size" in done.stderr


def test_a_killed_server_leaves_clients_with_a_clear_error():
    server = Serve()
    env = dict(os.environ, TURBINE_ADDRESS=server.address)
    tap = subprocess.Popen(
        [TURBINE, "tap", "*/*"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True
    )
    try:
        assert "nothing matches it yet" in read_line(tap.stderr)
        server.stop()
        _, err = tap.communicate(timeout=10)
        assert tap.returncode == 1
        assert "Traceback" not in err
        assert "closed the connection" in err or "lost the connection" in err
    finally:
        stop(tap)
        server.stop()
