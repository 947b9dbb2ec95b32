"""A reconnecting producer on one side of a real network boundary, its broker
on the other (two network namespaces, ``tests/netns.py``), the link delayed,
lossy and cut silently for 10 s (``tests/link_emulator.py`` where the kernel
has no netem): the client gives its silent connection up during the cut, the
broker ends its side (TCP keepalive), and after the mend the producer has its
source back and its spool replayed within seconds, every frame once, in order.

Needs root (``ip netns``); skipped with the reason where that is not allowed.
"""

from __future__ import annotations

import json
import sys
import time

import pytest

from tests.netns import probe
from tests.test_cli import read_line
from tests.test_mirror_netns import (
    AFTER_CAUGHT_UP,
    BEFORE_CUT,
    CATCH_UP_S,
    CUT,
    PORT,
    RATE,
    STEADY,
    Lossy,
    serve,
    tell,
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
    script = tmp_path / "steady.py"
    script.write_text(STEADY)
    here = f"127.0.0.1:{PORT}"
    watcher = link.start(link.a, sys.executable, str(script), here, "watch", stdin=True)
    assert read_line(watcher.stdout, 30) == "watching\n"
    across = f"{link.addr_a}:{PORT}"
    producer = link.start(
        link.b, sys.executable, str(script), across, "produce", str(RATE), "--reconnect", stdin=True
    )
    assert read_line(producer.stdout, 30) == "producing\n"
    # real time: a steady producer, and the link cut for 10 s
    time.sleep(BEFORE_CUT)
    path.cut()
    time.sleep(CUT)
    path.mend()
    mended = time.time()
    tell(watcher, repr(mended))
    line = read_line(watcher.stdout, 30)
    assert line.startswith("caught up"), line
    back = float(line.split()[-1]) - mended
    print(f"{shaper}: a frame put after the mend was read {back:.1f} s after it")
    time.sleep(AFTER_CAUGHT_UP)
    out, err = producer.communicate("stop\n", timeout=30)
    assert producer.returncode == 0, err
    assert back < CATCH_UP_S, f"back {back:.1f} s after the mend; the producer said: {err}"
    count = int(out)
    out, err = watcher.communicate(f"{count}\n", timeout=60)
    assert watcher.returncode == 0, err
    got = json.loads(out)
    # every frame, the spooled ones included, once, in order, numbered from 1
    assert [row[0] for row in got] == list(range(1, count + 1))
    assert count >= RATE * (BEFORE_CUT + CUT) / 2  # the producer's pace is real time
