"""Broker addresses: ``HOST:PORT`` parsing, printing, and opening a stream to one."""

from __future__ import annotations

import errno
import functools
import os
import socket

import trio

from ._constants import DEFAULT_HOST, DEFAULT_PORT
from ._errors import ConnectionFailed, TurbineError, leaves


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
            the host cannot be reached (says to check the network), or nothing
            answered in time.
    """
    from ._liveness import connect_within

    host, port = parse_address(address)
    # An ASCII name goes as bytes: getaddrinfo given a str encodes it with the idna
    # codec, whose import (stringprep, unicodedata) is 1.3-1.5 ms of a fresh client's CPU.
    name: str | bytes = host.encode("ascii") if host.isascii() else host
    family = _literal_family(host)
    if family is None:
        connect = functools.partial(trio.open_tcp_stream, name, port)
    else:
        connect = functools.partial(_connect_literal, family, host, port)
    try:
        return await connect_within(within, connect)
    except trio.TooSlowError:
        raise ConnectionFailed(
            f"no answer from {address} within {within:g} s (is the host reachable?)"
        ) from None
    except OSError as exc:
        raise ConnectionFailed(_connect_failure(address, exc)) from None


def _literal_family(host: str) -> int | None:
    """The address family of an IP address literal (``127.0.0.1``, ``::1``), else None."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return family
    return None


async def _connect_literal(family: int, host: str, port: int) -> trio.SocketStream:
    """A stream to one IP address: what ``trio.open_tcp_stream`` does for it, without
    the name lookup and the nursery it races several addresses in (a fresh
    client's first connect: 0.2-0.5 ms of CPU less, cold).

    Raises:
        OSError: the connect failed (the socket is closed).
    """
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


def _connect_failure(address: str, exc: OSError) -> str:
    """What a failed connect to ``address`` tells its user: no broker there (the
    host refused), or the host not reached (no network, no route, no such name:
    a laptop off its Wi-Fi is told so, not to start a broker)."""
    tried = leaves(exc.__cause__) if exc.__cause__ is not None else [exc]
    errors = [e for e in tried if isinstance(e, OSError)] or [exc]
    if any(e.errno == errno.ECONNREFUSED for e in errors):
        return f"no broker at {address} (connection refused); start one with 'turbine serve'"
    first = errors[0]  # (trio's says where it connected: the system's words say why)
    code = first.errno or 0
    why = os.strerror(code) if code > 0 else first.strerror or str(first)
    return f"cannot reach {address} ({why}): check the network and the address"
