"""Shared fixtures: an in-process broker on a free loopback port."""

from __future__ import annotations

import pytest
import trio

from turbine import BrokerConfig, serve_turbine


async def start_broker(nursery: trio.Nursery, **config: object) -> str:
    """Start a broker in ``nursery`` on 127.0.0.1, port 0; return its address."""
    addresses = await nursery.start(serve_turbine, BrokerConfig(host="127.0.0.1", port=0, **config))
    host, port = addresses[0]
    return f"{host}:{port}"


@pytest.fixture
async def broker(nursery: trio.Nursery) -> str:
    return await start_broker(nursery)
