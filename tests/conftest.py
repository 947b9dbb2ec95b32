"""Shared fixtures: an in-process broker on a free loopback port (from
turbine.testing); two network namespaces joined by a veth pair (tests/netns.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
import trio

from turbine.testing import start_broker

if TYPE_CHECKING:
    from tests.netns import Link


@pytest.fixture
async def broker(nursery: trio.Nursery) -> str:
    return await start_broker(nursery)


@pytest.fixture
def link() -> Iterator[Link]:
    """Namespaces A and B joined by a veth pair, deleted after the test with
    every process started in them; skipped, saying why, where they cannot be
    made (not root, or not allowed)."""
    from tests import netns  # only here: finding out runs ip as root

    why_not = netns.probe().why_not
    if why_not:
        pytest.skip(why_not)
    with netns.joined_namespaces() as link:
        yield link
