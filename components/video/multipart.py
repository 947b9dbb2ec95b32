"""A sans-I/O parser of ``multipart/x-mixed-replace`` bodies (MJPEG streams).

Feed ``MultipartParser`` bytes, get back complete parts.  It tolerates what
real cameras send: a boundary declared with or without a leading ``--``,
parts with or without ``Content-Length`` (then the body runs to the next
boundary line), LF-only line endings, and a missing CRLF between a body and
the next boundary.  Its buffer is capped.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from components.video.errors import MultipartError

DEFAULT_MAX_PART_SIZE = 8 * 1024 * 1024  # bytes; a 4K JPEG at high quality fits
DEFAULT_MAX_HEADER_SIZE = 16 * 1024  # bytes of one part's headers, or of junk between parts
_MAX_DELIMITER_TAIL = 128  # bytes allowed after the boundary on its line


def content_type_boundary(content_type: str) -> str | None:
    """The ``boundary`` parameter of a Content-Type value, unquoted."""
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "boundary":
            return value.strip().strip('"') or None
    return None


@attrs.frozen
class Part:
    """One part of a multipart stream; header names are lower case."""

    headers: Mapping[str, str]
    body: bytes

    @property
    def content_type(self) -> str | None:
        value = self.headers.get("content-type")
        return value.split(";", 1)[0].strip().lower() if value is not None else None


_PREAMBLE, _HEADERS, _BODY_LENGTH, _BODY_SCAN, _AFTER_BODY, _DONE = range(6)


class MultipartParser:
    """Incremental parser of a ``multipart/x-mixed-replace`` body.

    Args:
        boundary: the boundary from the Content-Type header, with or without
            a leading ``--``.
        max_part_size: largest body accepted, in bytes.
        max_header_size: largest block of part headers (or of junk between
            parts), in bytes.

    ``feed(data)`` returns the parts that ``data`` completed; the parser holds
    at most about ``max_part_size + max_header_size`` bytes.

    Raises:
        ValueError: for an empty boundary.
        MultipartError: from ``feed`` when a part is larger than
            ``max_part_size``, headers are too long or malformed.
    """

    def __init__(
        self,
        boundary: str | bytes,
        *,
        max_part_size: int = DEFAULT_MAX_PART_SIZE,
        max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
    ) -> None:
        if isinstance(boundary, str):
            boundary = boundary.encode("latin-1")
        core = boundary.strip().strip(b'"').lstrip(b"-")
        if not core:
            raise ValueError(f"multipart boundary {boundary!r} is empty")
        self._core = core
        self._max_part = max_part_size
        self._max_header = max_header_size
        self._buf = bytearray()
        self._state = _PREAMBLE
        self._scan_from = 0
        self._headers: dict[str, str] = {}
        self._length = 0

    @property
    def done(self) -> bool:
        """True once the closing boundary (``--boundary--``) was seen."""
        return self._state == _DONE

    def feed(self, data: bytes) -> list[Part]:
        """Add bytes from the stream; return the parts they completed."""
        if self._state == _DONE:
            return []
        self._buf += data
        parts: list[Part] = []
        while self._step(parts):
            pass
        return parts

    def feed_eof(self) -> list[Part]:
        """The stream ended: return a last part that is complete without a
        closing boundary (a body without Content-Length that ends a JPEG),
        otherwise nothing."""
        parts: list[Part] = []
        if self._state == _BODY_SCAN:
            body = bytes(self._buf).rstrip(b"\r\n")
            if body.endswith(b"\xff\xd9"):
                parts.append(Part(self._headers, body))
        self._buf.clear()
        self._state = _DONE
        return parts

    # -- internals ---------------------------------------------------------

    def _find_delimiter(self, start: int) -> tuple[int, int, bool] | None:
        """Find a boundary line at or after ``start``.

        Returns ``(line_start, line_end, is_close)`` with ``line_end`` just
        past its newline, or None.  When a candidate is cut off by the end of
        the buffer, ``self._scan_from`` is left pointing at it.
        """
        buf = self._buf
        core = self._core
        i = buf.find(core, start)
        while i != -1:
            j = i
            while j > 0 and buf[j - 1] == 0x2D:  # leading dashes, any number
                j -= 1
            if j == 0 or buf[j - 1] == 0x0A:
                tail_start = i + len(core)
                nl = buf.find(b"\n", tail_start, tail_start + _MAX_DELIMITER_TAIL)
                tail = bytes(buf[tail_start : nl if nl != -1 else len(buf)])
                is_close = tail.startswith(b"--")
                rest = tail[2:] if is_close else tail
                if nl != -1:
                    if not rest.strip(b" \t\r"):
                        return j, nl + 1, is_close
                elif (tail == b"-" or not rest.strip(b" \t\r")) and len(tail) < _MAX_DELIMITER_TAIL:
                    # Could still become a boundary line: wait for more data.
                    self._scan_from = j
                    return None
            i = buf.find(core, i + 1)
        self._scan_from = max(0, len(buf) - len(core) + 1)
        return None

    def _step(self, parts: list[Part]) -> bool:
        """Advance by one state; return False when more data is needed."""
        buf = self._buf
        state = self._state
        if state in (_PREAMBLE, _AFTER_BODY):
            found = self._find_delimiter(0)
            if found is None:
                if len(buf) > self._max_header:
                    where = "before the first part" if state == _PREAMBLE else "after a part"
                    raise MultipartError(
                        f"no boundary line {self._core!r} within {self._max_header} bytes "
                        f"{where}; is the boundary in the Content-Type header right?"
                    )
                return False
            _, end, is_close = found
            del buf[:end]
            self._state = _DONE if is_close else _HEADERS
            self._headers = {}
            return not is_close
        if state == _HEADERS:
            nl = buf.find(b"\n")
            if nl == -1:
                if len(buf) > self._max_header:
                    raise MultipartError(f"part header line longer than {self._max_header} bytes")
                return False
            line = bytes(buf[:nl]).rstrip(b"\r")
            del buf[: nl + 1]
            if line:
                name, sep, value = line.partition(b":")
                if not sep:
                    raise MultipartError(f"malformed part header line {line[:80]!r}")
                self._headers[name.strip().lower().decode("latin-1")] = value.strip().decode(
                    "latin-1"
                )
                if len(self._headers) > 100:
                    raise MultipartError("more than 100 headers in one part")
                return True
            length = self._headers.get("content-length")
            if length is None:
                self._state = _BODY_SCAN
                self._scan_from = 0
                return True
            try:
                self._length = int(length)
                if self._length < 0:
                    raise ValueError
            except ValueError:
                raise MultipartError(f"bad part Content-Length {length!r}") from None
            if self._length > self._max_part:
                raise MultipartError(
                    f"part of {self._length} bytes exceeds max_part_size={self._max_part}"
                )
            self._state = _BODY_LENGTH
            return True
        if state == _BODY_LENGTH:
            if len(buf) < self._length:
                return False
            parts.append(Part(self._headers, _take(buf, self._length)))
            del buf[: self._length]
            self._state = _AFTER_BODY
            return True
        if state == _BODY_SCAN:
            found = self._find_delimiter(self._scan_from)
            if found is None:
                if self._scan_from > self._max_part + 2:
                    raise MultipartError(
                        f"part without Content-Length grew past max_part_size="
                        f"{self._max_part} bytes and no boundary line {self._core!r} "
                        f"followed; raise max_part_size or check the boundary"
                    )
                return False
            start, end, is_close = found
            if buf[start - 1 : start] == b"\n":  # the line break before the boundary
                start -= 2 if buf[start - 2 : start] == b"\r\n" else 1
            if start > self._max_part:
                raise MultipartError(
                    f"part of {start} bytes exceeds max_part_size={self._max_part}"
                )
            parts.append(Part(self._headers, _take(buf, start)))
            del buf[:end]
            self._headers = {}
            self._state = _DONE if is_close else _HEADERS
            return not is_close
        return False


def _take(buf: bytearray, n: int) -> bytes:
    """The first ``n`` bytes of ``buf`` as bytes, copied once.

    ``bytes(buf[:n])`` copies twice (the slice, then the bytes): 1.8 us
    against 0.9 us for a 45 KB frame, measured with ``timeit``.
    """
    with memoryview(buf) as view:
        return bytes(view[:n])
