"""A real viewer on loopback, serving the real in-process broker of ``tests/conftest.py``."""

from __future__ import annotations

import pytest
import trio

from turbine.web.serve import serve_web


@pytest.fixture
async def web(nursery: trio.Nursery, broker: str) -> str:
    """The viewer's base URL, serving ``broker``."""
    url: str = await nursery.start(serve_web, broker, "127.0.0.1", 0)
    return url
