"""A reconnecting producer on one side of a real network boundary, its broker
on the other (two network namespaces, ``tests/netns.py``), the link delayed,
lossy and cut silently for 10 s (``tests/link_emulator.py`` where the kernel
has no netem): the client gives its silent connection up during the cut, the
broker ends its side (TCP keepalive), and after the mend the producer has its
source back and its spool replayed within seconds, every frame once, in order;
and a client that only puts is told within seconds that the link is down.

Needs root (``ip netns``); skipped with the reason where that is not allowed.
"""

from __future__ import annotations

import sys
import textwrap
import time

import pytest

from tests.netns import probe
from tests.test_cli import read_line
from tests.test_mirror_netns import (
    BEFORE_CUT,
    CATCH_UP_S,
    CUT,
    PORT,
    RATE,
    Lossy,
    Steady,
    serve,
)
from turbine._constants import LIVENESS_S

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("shaper", [probe().shaper])
def test_a_reconnecting_producer_across_a_link_cut_silently_is_back_within_seconds(
    link, tmp_path, shaper
):
    """``shaper`` (in the test's name) says what delays and drops the packets here."""
    if probe().why_no_shaper:
        pytest.skip(probe().why_no_shaper)
    path = Lossy.shape(link)
    serve(link, link.a, "0.0.0.0")
    steady = Steady(link, tmp_path, link.a, link.b, f"{link.addr_a}:{PORT}", "--reconnect")
    _, mended, caught_up = steady.cut(path)
    back = caught_up - mended
    print(f"{shaper}: a frame put after the mend was read {back:.1f} s after it")
    # every frame, the spooled ones included, once, in order, numbered from 1
    got, err = steady.frames()
    assert back < CATCH_UP_S, f"back {back:.1f} s after the mend; the producer said: {err}"
    count = len(got)
    assert count >= RATE * (BEFORE_CUT + CUT) / 2  # the producer's pace is real time


PUTTER = textwrap.dedent(
    """
    import sys, time, trio
    from turbine import ConnectionFailed, open_client

    async def main(address):
        async with open_client(address, name="daq") as tb:
            src = await tb.open_source("daq_rig_data_source")
            print("putting", flush=True)
            try:
                while True:  # puts only: no flush, no reply awaited
                    await src.put("x", b"frame")
                    await trio.sleep(0.005)
            except ConnectionFailed as exc:
                print(time.time(), exc, flush=True)

    trio.run(main, sys.argv[1])
    """
)


@pytest.mark.parametrize("shaper", [probe().shaper])
def test_a_client_that_only_puts_across_a_link_cut_silently_fails_within_seconds(
    link, tmp_path, shaper
):
    """It waits for no reply, but what it sent waits for TCP's acknowledgement:
    it is told the link is down (it used to put on into its socket's buffer, with
    no error until TCP gave up, minutes later)."""
    if probe().why_no_shaper:
        pytest.skip(probe().why_no_shaper)
    path = Lossy.shape(link)
    serve(link, link.a, "0.0.0.0")
    script = tmp_path / "putter.py"
    script.write_text(PUTTER)
    putter = link.start(link.b, sys.executable, str(script), f"{link.addr_a}:{PORT}")
    assert read_line(putter.stdout, 30) == "putting\n"
    time.sleep(1)
    path.cut()
    cut = time.time()
    line = read_line(putter.stdout, 20)
    failed_at, _, said = line.partition(" ")
    took = float(failed_at) - cut
    print(f"{shaper}: a client that only puts failed {took:.1f} s into the cut: {said.strip()}")
    assert "nothing heard from" in said and "the link is down" in said, line
    assert took < LIVENESS_S * 1.25 + 1.0
