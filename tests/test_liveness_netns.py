"""A reconnecting producer on one side of a real network boundary, its broker
on the other (two network namespaces, ``tests/netns.py``), the link delayed,
lossy and cut silently for 10 s (``tests/link_emulator.py`` where the kernel
has no netem): the client gives its silent connection up during the cut, the
broker ends its side (TCP keepalive), and after the mend the producer has its
source back and its spool replayed within seconds, every frame once, in order.

Needs root (``ip netns``); skipped with the reason where that is not allowed.
"""

from __future__ import annotations

import pytest

from tests.netns import probe
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
