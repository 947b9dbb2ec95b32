"""``serve_web``: the viewer as a broker client serving HTTP under Hypercorn's trio worker."""

from __future__ import annotations

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from ..client import open_client
from .api import create_app

#: Where ``turbine web`` listens unless told otherwise (loopback: the viewer has no auth of its own).
DEFAULT_WEB_HOST = "127.0.0.1"
DEFAULT_WEB_PORT = 8080


async def serve_web(
    turbine: str,
    host: str = DEFAULT_WEB_HOST,
    port: int = DEFAULT_WEB_PORT,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Connect to the broker at ``turbine`` and serve the viewer on ``host:port``; never returns.

    ``task_status.started`` gets the viewer's URL (``http://HOST:PORT``, the
    real port when ``port`` is 0).

    Raises:
        ConnectionFailed: no broker at ``turbine``, or the connection to it was lost.
    """
    async with open_client(turbine, name="web") as client:
        config = Config()
        config.bind = [f"{host}:{port}"]
        config.accesslog = None
        config.graceful_timeout = 1.0
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(serve, create_app(client), config)
            task_status.started(urls[0])
