"""``serve_web``: the viewer as a broker client serving HTTP under Hypercorn's trio worker."""

from __future__ import annotations

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from .._address import fmt_address
from .._errors import TurbineError, unwrap
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
    token: str | None = None,
    tls_ca: str | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Connect to the broker at ``turbine`` and serve the viewer on ``host:port``; never returns.

    ``task_status.started`` gets the viewer's URL (``http://HOST:PORT``, the
    real port when ``port`` is 0).  ``token`` logs the viewer in to a broker
    with access control (else :func:`turbine.auth.find_token`): every page and
    API call can do what that user may, no more; ``tls_ca`` speaks TLS to it.

    A lost broker connection is made again (capped backoff); API calls made
    meanwhile wait for it.

    Raises:
        ConnectionFailed: no broker at ``turbine`` when it starts.
        TurbineError: ``host:port`` cannot be listened on (in use, not this machine's).
    """
    # reconnect: a broker restart costs the page a moment, not the viewer process;
    # open tabs' streams resume where they were (a gap for what the broker lost).
    async with open_client(
        turbine, name="web", token=token, tls_ca=tls_ca, reconnect=True
    ) as client:
        config = Config()
        config.bind = [f"{host}:{port}"]
        config.accesslog = None
        config.graceful_timeout = 1.0
        async with trio.open_nursery() as nursery:
            try:
                urls = await nursery.start(serve, create_app(client, nursery), config)
            except BaseExceptionGroup as group:  # Hypercorn binds inside its own nurseries
                exc = unwrap(group)
                if not isinstance(exc, OSError):
                    raise
                raise TurbineError(
                    f"cannot listen on {fmt_address(host, port)}: {exc.strerror or exc}"
                ) from None
            task_status.started(urls[0])
