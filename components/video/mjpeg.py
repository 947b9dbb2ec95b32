"""Reading MJPEG streams from network cameras (Axis VAPIX and the like).

``read_mjpeg`` (one connection) and ``mjpeg_frames`` (reconnects with capped
exponential backoff, logging every drop and recovery) are async iterators of
``(jpeg_bytes, capture_time)``.  Beneath them: ``components.video.httpclient``
(the GET, on h11), ``components.video.digest`` (camera authentication) and
``components.video.multipart`` (the sans-I/O ``multipart/x-mixed-replace``
parser).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing

import trio

from components.video.errors import (
    CameraDisconnected,
    HttpError,
    HttpStatusError,
    MultipartError,
    VideoError,
)
from components.video.httpclient import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    open_get,
)
from components.video.multipart import (
    DEFAULT_MAX_PART_SIZE,
    MultipartParser,
    content_type_boundary,
)
from turbine import Backoff

__all__ = [
    "CameraDisconnected",
    "HttpError",
    "HttpStatusError",
    "MultipartError",
    "VideoError",
    "mjpeg_frames",
    "read_mjpeg",
]

DEFAULT_INITIAL_BACKOFF = 0.5  # seconds before the first reconnect attempt
DEFAULT_MAX_BACKOFF = 30.0  # seconds, cap of the doubling backoff
ACCEPT = "multipart/x-mixed-replace, image/jpeg"


async def read_mjpeg(
    url: str,
    *,
    max_part_size: int = DEFAULT_MAX_PART_SIZE,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    clock: Callable[[], float] = time.time,
) -> AsyncGenerator[tuple[bytes, float], None]:
    """Connect once to ``url`` and yield ``(jpeg, capture_time)`` per frame.

    ``capture_time`` is ``clock()`` when the frame's last byte arrived.  The
    iterator ends when the server ends the stream.  A response of type
    ``image/jpeg`` (a snapshot URL) gives one frame.  Parts whose
    Content-Type is given and is not ``image/jpeg`` are skipped.  Close the
    iterator with ``contextlib.aclosing`` to release the connection promptly.
    Credentials in the URL (``http://user:password@host/...``) go as Basic;
    a 401 with a Digest challenge (the Axis default) is answered once.

    Raises:
        ValueError: the URL is not ``http://HOST[:PORT]/PATH``.
        CameraDisconnected: the connection could not be made (refused,
            unreachable, name unknown) or took more than ``connect_timeout``,
            nothing arrived for ``idle_timeout`` seconds, or the connection
            broke (or closed in the middle of a chunked or counted body).
        HttpStatusError: the status is not 200.
        HttpError: malformed response, or not an MJPEG or JPEG response.
        MultipartError: malformed stream or a part over ``max_part_size``.
    """
    response = await open_get(
        url, accept=ACCEPT, connect_timeout=connect_timeout, idle_timeout=idle_timeout
    )
    async with response:
        head = response.head
        if head.status != 200:
            raise HttpStatusError(url, head.status, head.reason)
        content_type = head.headers.get("content-type", "")
        media_type = head.media_type
        if media_type == "image/jpeg":
            chunks = []
            size = 0
            while data := await response.receive_some():
                chunks.append(data)
                size += len(data)
                if size > max_part_size:
                    raise MultipartError(f"JPEG from {url} exceeds max_part_size={max_part_size}")
            yield b"".join(chunks), clock()
            return
        boundary = content_type_boundary(content_type)
        if not media_type.startswith("multipart/") or boundary is None:
            raise HttpError(
                f"{url} sent Content-Type {content_type!r}; expected "
                f"multipart/x-mixed-replace with a boundary, or image/jpeg"
            )
        parser = MultipartParser(boundary, max_part_size=max_part_size)
        while not parser.done:
            data = await response.receive_some()
            parts = parser.feed(data) if data else parser.feed_eof()
            if parts:
                now = clock()
                for part in parts:
                    if part.content_type in (None, "image/jpeg", "image/jpg"):
                        yield part.body, now


async def mjpeg_frames(
    url: str,
    log: logging.Logger,
    *,
    initial_backoff: float = DEFAULT_INITIAL_BACKOFF,
    max_backoff: float = DEFAULT_MAX_BACKOFF,
    max_part_size: int = DEFAULT_MAX_PART_SIZE,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    clock: Callable[[], float] = time.time,
    on_state: Callable[[str], None] = lambda state: None,
) -> AsyncGenerator[tuple[bytes, float], None]:
    """Yield ``(jpeg, capture_time)`` from ``url`` forever, reconnecting.

    ``on_state`` hears ``"streaming"`` when frames flow and
    ``"reconnecting: <reason>"`` when the camera drops.

    When the camera drops, refuses or stalls, logs a warning naming the reason
    and the delay, waits, and tries again; the delay doubles from
    ``initial_backoff`` up to ``max_backoff`` and resets once frames flow
    again, which is logged at INFO.

    Raises:
        ValueError: the URL is not ``http://HOST[:PORT]/PATH``.
        HttpStatusError: a 4xx answer other than 408 or 429 (a wrong path or
            credentials: retrying would not help).
    """
    backoff = Backoff(initial_backoff, max_backoff)
    failures = 0
    while True:
        receiving = False
        try:
            async with aclosing(
                read_mjpeg(
                    url,
                    max_part_size=max_part_size,
                    connect_timeout=connect_timeout,
                    idle_timeout=idle_timeout,
                    clock=clock,
                )
            ) as frames:
                async for frame in frames:
                    if not receiving:
                        receiving = True
                        if failures:
                            log.info(
                                "camera %s: recovered after %d failed attempt(s), frames flowing",
                                url,
                                failures,
                            )
                        else:
                            log.info("camera %s: connected, frames flowing", url)
                        failures = 0
                        backoff.reset()
                        on_state("streaming")
                    yield frame
            reason = "the camera ended the stream"
        except HttpStatusError as exc:
            if 400 <= exc.status < 500 and exc.status not in (408, 429):
                raise
            reason = str(exc)
        except (OSError, VideoError) as exc:
            reason = str(exc) or type(exc).__name__
        failures += 1
        delay = backoff.next_delay()
        on_state(f"reconnecting: {reason}")
        log.warning(
            "camera %s: dropped (%s); reconnecting in %.1f s (attempt %d)",
            url,
            reason,
            delay,
            failures,
        )
        await trio.sleep(delay)
