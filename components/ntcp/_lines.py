"""NTCP framing: bytes into lines and lines into bytes, with a cap on a line's length."""

from __future__ import annotations

from ._values import DEFAULT_MAX_LINE_LENGTH, LineTooLongError, NtcpProtocolError


def encode_line(line: str) -> bytes:
    """Encode one line for the wire, appending ``\\n``.

    Raises:
        NtcpProtocolError: the line holds a line break or non-ASCII text.
    """
    if "\n" in line or "\r" in line:
        raise NtcpProtocolError(f"a line must not contain a line break: {line!r}")
    try:
        return line.encode("ascii") + b"\n"
    except UnicodeEncodeError:
        raise NtcpProtocolError(f"a line must be ASCII: {line!r}") from None


class LineBuffer:
    """Splits a byte stream into lines, holding at most ``max_line_length`` bytes.

    Feed bytes with :meth:`receive_data`; take lines with :meth:`next_line`,
    which returns ``None`` when no complete line is buffered. Lines come back
    as ``str`` without their ``\\n`` or ``\\r\\n``.

    A line longer than the cap is not buffered: :meth:`next_line` raises
    :class:`LineTooLongError` once for it and the rest of that line is thrown
    away, so the stream stays usable. A line that is not ASCII raises
    :class:`NtcpProtocolError`; it is consumed all the same.
    """

    def __init__(self, max_line_length: int = DEFAULT_MAX_LINE_LENGTH) -> None:
        if max_line_length < 1:
            raise ValueError(f"max_line_length must be at least 1, got {max_line_length}")
        self.max_line_length = max_line_length
        self._buffer = bytearray()
        self._scan_from = 0  # no b"\n" before this offset
        self._discarding = False  # inside an over-long line, waiting for its end
        self._too_long_pending = False

    def receive_data(self, data: bytes | bytearray) -> None:
        """Add bytes read from the peer."""
        self._buffer += data

    @property
    def buffered(self) -> int:
        """Bytes held, not yet returned as lines."""
        return len(self._buffer)

    def next_line(self) -> str | None:
        """The next complete line, or ``None`` if more data is needed.

        Raises:
            LineTooLongError: a line exceeded the cap (reported once per line).
            NtcpProtocolError: the line is not ASCII.
        """
        while True:
            if self._too_long_pending:
                self._too_long_pending = False
                raise LineTooLongError(
                    f"line longer than {self.max_line_length} bytes; the line was discarded"
                )
            end = self._buffer.find(b"\n", self._scan_from)
            if end < 0:
                if self._discarding:
                    self._buffer.clear()
                    self._scan_from = 0
                elif len(self._buffer) > self.max_line_length + 1:  # +1: a trailing b"\r"
                    self._buffer.clear()
                    self._scan_from = 0
                    self._discarding = True
                    self._too_long_pending = True
                    continue
                else:
                    self._scan_from = len(self._buffer)
                return None
            raw = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            self._scan_from = 0
            if self._discarding:
                self._discarding = False
                continue
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if len(raw) > self.max_line_length:
                raise LineTooLongError(
                    f"line longer than {self.max_line_length} bytes; the line was discarded"
                )
            try:
                return raw.decode("ascii")
            except UnicodeDecodeError:
                raise NtcpProtocolError(
                    f"line is not ASCII text: {raw[:60]!r}{'...' if len(raw) > 60 else ''}"
                ) from None
