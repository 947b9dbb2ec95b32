"""``turbine web`` as its own process, a client of a real ``turbine serve``."""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.request

import pytest

from tests.test_cli import TURBINE, Serve, read_line, stop

pytestmark = pytest.mark.slow


def test_turbine_web_serves_the_api_for_the_broker_it_is_given() -> None:
    broker = Serve()
    try:
        web = subprocess.Popen(
            [TURBINE, "web", "--turbine", broker.address, "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            line = read_line(web.stdout)
            assert line.startswith("turbine web on http://127.0.0.1:"), line
            url = line.split()[3]
            subprocess.run(
                [TURBINE, "put", "--turbine", broker.address, "daq_w_data_source/log", "hi"],
                check=True,
                capture_output=True,
                timeout=20,
            )
            with urllib.request.urlopen(f"{url}api/sources", timeout=10) as r:
                [info] = json.load(r)
            assert info["name"] == "daq_w_data_source"
            assert info["channels"][0]["content_type"] == "text/plain"
        finally:
            stop(web)
    finally:
        broker.stop()


def test_turbine_web_on_a_port_in_use_says_so_without_a_traceback() -> None:
    broker = Serve()
    try:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            done = subprocess.run(
                [TURBINE, "web", "--turbine", broker.address, "--port", str(port)],
                capture_output=True,
                text=True,
                timeout=30,
            )
        assert done.returncode == 1
        assert done.stderr.strip() == (
            f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"
        )
    finally:
        broker.stop()
