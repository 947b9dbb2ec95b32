"""The viewer as an MCP ``[[process]]`` kind (``kind = "web"``), as configs/demo.toml runs it."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.ports import free_port
from tests.test_mcp import run_mcp, running, wait_state
from tests.web.helpers import http
from turbine import open_client

pytestmark = pytest.mark.slow


async def test_the_mcp_runs_the_viewer_for_its_broker(tmp_path: Path) -> None:
    port = free_port()
    extra = f'[[process]]\nname = "web"\nkind = "web"\nargs = ["--port", "{port}"]\n'
    with trio.fail_after(60):
        async with run_mcp(tmp_path, extra) as site, open_client(site.address) as tb:
            await wait_state(tb, running("web"), seconds=30)
            while True:  # the process is running; wait until it listens
                try:
                    r = await http(f"http://127.0.0.1:{port}/api/sources?pattern=mcp_t_*")
                    break
                except OSError:
                    await trio.sleep(0.1)
            assert r.status == 200
            assert "mcp_t_data_source" in [s["name"] for s in r.json()]
            lines = (await http(f"http://127.0.0.1:{port}/metrics")).body.decode().splitlines()
    # The MCP's programs, as its state.json says, in the metrics of the viewer it runs.
    assert 'turbine_mcp_program_state{mcp="mcp_t",program="web",state="running"} 1.0' in lines
    assert 'turbine_mcp_program_restarts_total{mcp="mcp_t",program="web"} 0.0' in lines
    assert any(
        line.startswith('turbine_mcp_program_uptime_seconds{mcp="mcp_t",program="daq_t"}')
        for line in lines
    )
