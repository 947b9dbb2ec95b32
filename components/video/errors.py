"""The errors raised by the video sources."""

from __future__ import annotations

from turbine import TurbineError


class VideoError(TurbineError):
    """Base class of the errors raised by the video sources."""


class MultipartError(VideoError):
    """The multipart stream is malformed or a part is too large."""


class HttpError(VideoError):
    """The HTTP response is malformed or not what a camera should send."""


class HttpStatusError(HttpError):
    """The server answered with a status other than 200."""

    def __init__(self, url: str, status: int, reason: str) -> None:
        super().__init__(f"{url} answered {status} {reason}")
        self.status = status
        self.reason = reason


class CameraDisconnected(VideoError):
    """The connection broke or went silent."""
