"""``clock = "broker"``: a component stamps its frames on the broker's clock (no NTP needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from components.daq.component import Daq
from turbine import Frame
from turbine._clock import wall_time
from turbine.client import open_client
from turbine.mcp import SiteConfigError, load_config
from turbine.testing import follow_trio_clock, next_frames, start_broker

AHEAD = 1000.0  # the broker's clock runs this far ahead of the component's machine


async def first_block(address: str) -> Frame:
    async with open_client(address) as tb:
        (frame,) = await next_frames(tb, "daq_t_data_source/ch0")
    return frame


@pytest.mark.parametrize(("source", "offset"), [("broker", AHEAD), ("local", 0.0)])
async def test_the_daq_s_sample_clock_starts_from_the_clock_it_is_told(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, source: str, offset: float
) -> None:
    follow_trio_clock()
    address = await start_broker(nursery, clock=lambda: wall_time() + AHEAD)
    daq = Daq("t", address, {"channels": "1", "rate": "100", "block_seconds": "0.1"})
    daq.clock_source = source
    with trio.fail_after(30):
        await nursery.start(daq.serve)
        frame = await first_block(address)
        status = daq.status()
    # The virtual clock only moves when everything waits, and the network is
    # loopback: the measured offset is the broker's, to well under a block.
    assert daq.clock_offset == pytest.approx(offset, abs=0.05)
    assert status["clock"] == {"source": source, "offset": daq.clock_offset}
    assert daq.clock is not None and daq.clock.t0 == pytest.approx(wall_time() + offset, abs=5)
    assert frame.timestamp == pytest.approx(wall_time() + offset, abs=5)


def test_the_site_file_passes_clock_on_the_command_line(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text(
        '[broker]\nport = 0\n[[component]]\nkind = "daq"\nname = "t"\nclock = "broker"\n'
    )
    (daq,) = load_config(site).programs
    assert daq.argv("127.0.0.1:1")[-2:] == ["--clock", "broker"]
    site.write_text('[broker]\nport = 0\n[[component]]\nkind = "daq"\nname = "t"\nclock = "gps"\n')
    with pytest.raises(
        SiteConfigError, match='component\\[1\\].clock: expected "local" or "broker"'
    ):
        load_config(site)
