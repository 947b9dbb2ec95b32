"""Why broker connections end: a typed reason per close, kept in a small ring for ``status``."""

from __future__ import annotations

import enum

import attrs


class CloseReason(enum.Enum):
    """Why a connection ended (nats-server's ClosedState habit); the value is what ``status`` shows."""

    CLIENT_CLOSED = "client_closed"  # the client hung up
    PROTOCOL_ERROR = "protocol_error"  # the client broke the protocol; told why, then cut
    AUTH_REFUSED = "auth_refused"  # a missing or wrong token; told why, then cut
    TLS_REFUSED = "tls_refused"  # plain bytes at a TLS port (told to use TLS) or a failed handshake
    CAPACITY_REFUSED = "capacity_refused"  # no file descriptor left for it; told why, then cut
    WRITE_TIMEOUT = "write_timeout"  # the client stopped reading: a write missed its deadline
    CONNECTION_LOST = "connection_lost"  # the network failed (reset, broken pipe)
    BROKER_STOPPED = "broker_stopped"  # the broker shut down
    INTERNAL_ERROR = "internal_error"  # a broker bug ended this connection (logged)


class WriteTimeout(Exception):
    """A write to a client missed its deadline: the client is not reading.

    A slow consumer, not a protocol error: the client said nothing wrong.
    """


@attrs.frozen
class Closed:
    """One ended connection, as ``status`` lists it."""

    client: str
    code: CloseReason
    reason: str  # the details, for a person
    time: float
    slow_events: int = 0  # writes that blocked SLOW_WRITE_S or more (a slow consumer)

    def info(self) -> dict[str, object]:
        return {
            "client": self.client,
            "code": self.code.value,
            "reason": self.reason,
            "time": self.time,
            "slow_events": self.slow_events,
        }
