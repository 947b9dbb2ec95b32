"""TLS for broker connections: contexts, a lab CA, and the socket face the broker and client use.

The broker and the client read and write through a socket's ``recv_into``
and ``sendmsg`` (``turbine/_io.py``); :class:`TLSSocket` gives a
:class:`trio.SSLStream` that face, so the rest of the code does not change.

A plain client that reaches a TLS port waits for a ``hello`` that a TLS
broker cannot send in the clear; the broker therefore looks at the first
byte a connection sends: a TLS handshake starts with 22, anything else (or
nothing within :data:`~turbine._constants.TLS_SNIFF_S`) gets a plain
``error`` (code ``tls``) that says what to do, and the connection closes.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
from pathlib import Path
from typing import Any

import trio

from ._errors import ConnectionFailed, TurbineError

#: The first byte of every TLS connection (a handshake record).
TLS_HANDSHAKE_BYTE = 0x16


class TLSError(TurbineError):
    """A certificate or key that cannot be used."""


def server_context(cert: str | Path, key: str | Path) -> ssl.SSLContext:
    """The broker's TLS context (TLS 1.2 or later).

    Raises:
        TLSError: the certificate or key cannot be read, or they do not match.
    """
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise TLSError(f"cannot use certificate {cert} with key {key}: {exc}") from None
    return ctx


def client_context(ca: str | os.PathLike[str] | None) -> ssl.SSLContext:
    """A client's TLS context: verifies the broker against ``ca`` (a lab CA's
    certificate), or the system's CAs when ``ca`` is None.

    Raises:
        TLSError: the CA file cannot be read.
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca is not None:
        try:
            ctx.load_verify_locations(str(ca))
        except (OSError, ssl.SSLError) as exc:
            raise TLSError(f"cannot use CA certificate {ca}: {exc}") from None
    return ctx


class TLSSocket:
    """A :class:`trio.SSLStream` with the socket methods the broker and client use.

    Errors come out as a socket's do (:class:`OSError`), and a peer that
    closes without TLS's close_notify (both sides here close forcefully) is an
    end of stream, as on a plain socket (``https_compatible``).
    """

    def __init__(self, stream: trio.SSLStream[trio.SocketStream], raw: trio.SocketStream) -> None:
        self.stream = stream
        self.raw = raw

    async def recv_into(self, view: Any) -> int:
        data = await self.recv(len(view))
        view[: len(data)] = data
        return len(data)

    async def recv(self, n: int) -> bytes:
        try:
            return bytes(await self.stream.receive_some(n))
        except trio.BrokenResourceError as exc:
            raise OSError(f"TLS connection broken: {exc.__cause__ or exc}") from None

    async def sendmsg(self, buffers: list[Any]) -> int:
        data = b"".join(buffers)
        try:
            await self.stream.send_all(data)
        except trio.BrokenResourceError as exc:
            raise OSError(f"TLS connection broken: {exc.__cause__ or exc}") from None
        return len(data)

    def shutdown(self, how: int) -> None:
        pass  # TLS has no half-close here: the close that follows ends both directions

    def getpeername(self) -> Any:
        return self.raw.socket.getpeername()


async def sniff_tls(stream: trio.SocketStream, seconds: float) -> bool:
    """Whether the first byte the peer sends (within ``seconds``) starts a TLS handshake."""
    with trio.move_on_after(seconds):
        first = await stream.socket.recv(1, socket.MSG_PEEK)
        return bool(first) and first[0] == TLS_HANDSHAKE_BYTE
    return False


async def accept_tls(stream: trio.SocketStream, ctx: ssl.SSLContext, seconds: float) -> TLSSocket:
    """The server side of the TLS handshake on ``stream``.

    Raises:
        TLSError: the handshake failed or took longer than ``seconds``.
    """
    tls = trio.SSLStream(stream, ctx, server_side=True, https_compatible=True)
    try:
        with trio.fail_after(seconds):
            await tls.do_handshake()
    except trio.TooSlowError:
        raise TLSError(f"the TLS handshake took longer than {seconds:g} s") from None
    except trio.BrokenResourceError as exc:
        raise TLSError(f"the TLS handshake failed: {exc.__cause__ or exc}") from None
    return TLSSocket(tls, stream)


async def connect_tls(
    stream: trio.SocketStream, ctx: ssl.SSLContext, host: str, address: str
) -> TLSSocket:
    """The client side of the TLS handshake, verifying the broker as ``host``.

    Raises:
        ConnectionFailed: the broker's certificate is not valid (wrong CA,
            expired, another name), or it does not speak TLS.
    """
    tls = trio.SSLStream(stream, ctx, server_hostname=host, https_compatible=True)
    try:
        await tls.do_handshake()
    except trio.BrokenResourceError as exc:
        cause = exc.__cause__
        if isinstance(cause, ssl.SSLCertVerificationError):
            why = f"its certificate is not valid: {cause.verify_message}"
        elif isinstance(cause, ssl.SSLError) and "WRONG_VERSION_NUMBER" in str(cause):
            why = (
                "it does not speak TLS (is the broker started with --tls-cert? else drop --tls-ca)"
            )
        else:
            why = f"the TLS handshake failed: {cause or exc}"
        raise ConnectionFailed(f"cannot connect to {address} with TLS: {why}") from None
    return TLSSocket(tls, stream)


# --- a lab CA ---------------------------------------------------------------------


def make_lab_certs(
    directory: str | Path,
    hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "::1"),
    days: int = 825,
    not_before: dt.datetime | None = None,
) -> dict[str, Path]:
    """Make a lab CA and a server certificate for ``hosts`` (names and IP
    addresses) in ``directory``: ``ca.pem`` (give it to clients),
    ``ca-key.pem``, ``server.pem``, ``server-key.pem`` (keys mode 0600).

    Returns the four paths by those names without ``.pem``.
    """
    import ipaddress  # here, not at import: every client imports this module

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    end = start + dt.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    # A name of its own: two labs' CAs must not look like one (their certificates would
    # then fail as "signature failure" instead of "unable to get local issuer").
    label = f"turbine lab CA {os.urandom(4).hex()}"
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, label)])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {n: out / f"{n}.pem" for n in ("ca", "ca-key", "server", "server-key")}
    pem = serialization.Encoding.PEM
    for name, data, secret in (
        ("ca", ca.public_bytes(pem), False),
        ("server", cert.public_bytes(pem), False),
        ("ca-key", _key_pem(ca_key), True),
        ("server-key", _key_pem(key), True),
    ):
        fd = os.open(paths[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    return paths


def _key_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def refused_plain(address: str, message: str) -> ConnectionFailed:
    return ConnectionFailed(f"{address} refused the connection: {message}")
