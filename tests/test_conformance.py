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

RUNNER = Path(__file__).resolve().parent.parent / "conformance" / "run.py"


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
