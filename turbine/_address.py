"""Broker addresses: ``HOST:PORT`` parsing, printing, and opening a stream to one."""

from __future__ import annotations

import functools

import trio

from ._constants import DEFAULT_HOST, DEFAULT_PORT
from ._errors import ConnectionFailed, TurbineError


def parse_address(address: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (IPv6 as ``[::1]:3333``); a bare host gets the default port.

    Raises:
        TurbineError: the port is not a number from 1 to 65535.
    """
    address = address.strip()
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest.lstrip(":")
    elif address.count(":") == 1:
        host, _, port = address.partition(":")
    else:
        host, port = address, ""
    try:
        number = int(port) if port else DEFAULT_PORT
    except ValueError:
        raise TurbineError(f"bad broker address {address!r}: expected HOST:PORT") from None
    if not 1 <= number <= 65535:
        raise TurbineError(f"bad broker address {address!r}: a port is 1 to 65535")
    return host or DEFAULT_HOST, number


def fmt_address(host: str, port: int) -> str:
    """``HOST:PORT``, with IPv6 hosts in brackets (the inverse of :func:`parse_address`)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def connect_stream(address: str, within: float) -> trio.SocketStream:
    """A TCP stream to the broker at ``address``, connected within ``within`` s
    (a connect nothing answers is tried afresh: :func:`~turbine._liveness.connect_within`).

    Raises:
        ConnectionFailed: nothing listens there (says how to start a broker),
            or nothing answered in time.
    """
    from ._liveness import connect_within

    host, port = parse_address(address)
    # An ASCII name goes as bytes: getaddrinfo given a str encodes it with the idna
    # codec, whose import (stringprep, unicodedata) is 1.3-1.5 ms of a fresh client's CPU.
    name: str | bytes = host.encode("ascii") if host.isascii() else host
    try:
        return await connect_within(within, functools.partial(trio.open_tcp_stream, name, port))
    except trio.TooSlowError:
        raise ConnectionFailed(
            f"no answer from {address} within {within:g} s (is the host reachable?)"
        ) from None
    except OSError as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
        raise ConnectionFailed(
            f"no broker at {address} ({cause.strerror or cause}); start one with 'turbine serve'"
        ) from None
