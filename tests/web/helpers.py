"""Plain HTTP to a viewer, as a script or a browser tab would talk to it."""

from __future__ import annotations

import base64
import json
import struct
import urllib.error
import urllib.request
from typing import Any

import attrs
import trio


@attrs.frozen
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _request(url: str, data: bytes | None, method: str) -> Reply:
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return Reply(r.status, {k.lower(): v for k, v in r.headers.items()}, r.read())
    except urllib.error.HTTPError as e:
        return Reply(e.code, {k.lower(): v for k, v in e.headers.items()}, e.read())


async def http(url: str, *, body: Any = None, raw: bytes | None = None) -> Reply:
    """GET ``url`` (POST when a body is given) over real HTTP; any status is returned, not raised."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    method = "GET" if data is None else "POST"
    return await trio.to_thread.run_sync(_request, url, data, method)


def samples_of(event: dict[str, Any]) -> list[float]:
    """A numeric frame event's samples (sent as float64 bytes in base64)."""
    raw = base64.b64decode(event["values_b64"])
    return list(struct.unpack(f"<{len(raw) // 8}d", raw))


class EventStream:
    """A Server-Sent Events reader over a raw loopback socket (what a browser tab does)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    @classmethod
    async def open(cls, base: str, query: str, receive_buffer: int | None = None) -> EventStream:
        """``receive_buffer``: a small socket buffer, so that a tab that stops reading stalls soon."""
        host, port = base.removeprefix("http://").split(":")
        sock = trio.socket.socket()
        if receive_buffer is not None:
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, receive_buffer)
        await sock.connect((host, int(port)))
        stream = trio.SocketStream(sock)
        await stream.send_all(
            f"GET /api/stream?{query} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        self = cls(stream)
        head = await self._until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"text/event-stream" in head
        return self

    async def _until(self, sep: bytes) -> bytes:
        while sep not in self.buffer:
            data = await self.stream.receive_some(65536)
            assert data, "the viewer closed the stream"
            self.buffer += data
        out, self.buffer = self.buffer.split(sep, 1)
        return out

    async def event(self) -> tuple[str, Any]:
        """The next event's name and JSON data (chunked coding lines are skipped)."""
        while True:
            block = await self._until(b"\n\n")
            name, data = "message", None
            for line in block.split(b"\n"):
                line = line.strip(b"\r")
                if line.startswith(b"event: "):
                    name = line[7:].decode()
                elif line.startswith(b"data: "):
                    data = json.loads(line[6:])
            if data is not None:
                return name, data
