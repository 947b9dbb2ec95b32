"""The conformance suite (``conformance/``) against a real ``turbine serve`` process.

The runner is a separate program that speaks the protocol over a raw socket
without the turbine package, as a client in another language would.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_cli import Serve

pytestmark = pytest.mark.slow

CONFORMANCE = Path(__file__).resolve().parent.parent / "conformance"
RUNNER = CONFORMANCE / "run.py"


def test_conformance_suite_passes_against_the_broker() -> None:
    serve = Serve()
    try:
        done = subprocess.run(
            [sys.executable, str(RUNNER), serve.address],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        serve.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    assert " 0 of " not in done.stdout
    assert "transcripts passed" in done.stdout.splitlines()[-1]


def test_the_auth_transcripts_pass_against_a_broker_with_their_auth_file(tmp_path: Path) -> None:
    auth = tmp_path / "auth.toml"  # a copy: the broker may rewrite its auth file
    auth.write_bytes((CONFORMANCE / "auth.toml").read_bytes())
    serve = Serve("--auth", str(auth))
    try:
        done = subprocess.run(
            [sys.executable, str(RUNNER), serve.address]
            + sorted(str(p) for p in (CONFORMANCE / "transcripts" / "auth").glob("*.json")),
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        serve.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1].startswith("2 of 2 transcripts passed")


def test_the_runner_reports_a_broker_that_breaks_a_transcript(tmp_path: Path) -> None:
    """A transcript the broker cannot satisfy fails, naming the step and the difference."""
    bad = tmp_path / "bad.json"
    bad.write_text(
        '{"title": "t", "steps": [{"connect": "a"}, {"send": {"type": "flush", "id": 1}},'
        ' {"expect": {"type": "ok", "id": 2}}]}'
    )
    serve = Serve()
    try:
        done = subprocess.run(
            [sys.executable, str(RUNNER), serve.address, str(bad)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        serve.stop()
    assert done.returncode == 1
    assert "FAIL bad: step 3: id: want 2, got 1" in done.stdout


def test_a_client_codec_plays_the_suite_and_its_mistakes_fail_it(tmp_path: Path) -> None:
    """``--codec`` packs and unpacks through another program, as a client author's code would."""
    sloppy = tmp_path / "sloppy.py"
    # Like a JavaScript packer: a whole float64 goes out as an integer.
    sloppy.write_text(
        (CONFORMANCE / "codec.py")
        .read_text()
        .replace(
            'return float(value["$float"])',
            'f = float(value["$float"])\n            return int(f) if f.is_integer() else f',
        )
    )
    serve = Serve()
    try:
        runs = [
            subprocess.run(
                [
                    sys.executable,
                    str(RUNNER),
                    serve.address,
                    "--codec",
                    f"{sys.executable} {codec}",
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
            for codec in (CONFORMANCE / "codec.py", sloppy)
        ]
    finally:
        serve.stop()
    good, bad = runs
    assert good.returncode == 0, good.stdout + good.stderr
    assert bad.returncode == 1
    assert "FAIL protocol_errors: step" in bad.stdout
    # The step that sends {"$float": 1} for an id got ok where the broker must refuse it.
    assert "type: want 'error', got 'ok'" in bad.stdout
