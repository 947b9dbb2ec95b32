"""Shared fixtures: an in-process broker on a free loopback port (from turbine.testing)."""

from __future__ import annotations

import pytest
import trio

from turbine.testing import start_broker


@pytest.fixture
async def broker(nursery: trio.Nursery) -> str:
    return await start_broker(nursery)
