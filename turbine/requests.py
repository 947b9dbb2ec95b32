"""What the broker does for each request of one connection: the reader's side.

:class:`Requests` is the request half of :class:`turbine.connection.ClientConnection`:
each handler applies one request to the hub and queues its reply; the reading
requests (subscribe, unsubscribe, fetch, list) are :class:`turbine.reads.Reads`,
puts :class:`turbine.puts.Puts`, both mixed into it.  Handlers
never wait: a read that needs slower storage than memory is handed to the
connection's store task (``turbine/storetask.py``) with its reply's place kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from . import messages as m
from ._clock import clock_offset
from ._constants import MAX_ERROR_MESSAGE_CHARS, MAX_PRODUCERS_PER_SOURCE
from ._errors import RemoteProtocolError, RequestFailed
from .audit import Audit
from .auth import Access, AuthError, AuthTable
from .names import InvalidName
from .origin import Origin
from .protocol import encode_ok
from .puts import Puts, PutView, check_open
from .reads import HubView, Reads

log = logging.getLogger("turbine.server")


class BrokerView(HubView, PutView, Protocol):
    """What request handlers need of the broker."""

    auth: AuthTable | None
    audit: Audit | None

    def status(self, viewer: Access | None = None) -> dict[str, Any]: ...

    def clock(self) -> float: ...

    def set_auth(self, table: AuthTable) -> None: ...

    def trim_soon(self) -> None: ...


class Requests(Reads, Puts):
    """Request handlers of one connection (mixed into the connection); the
    reading ones are :class:`~turbine.reads.Reads`'s, puts :class:`~turbine.puts.Puts`'s."""

    broker: BrokerView
    #: The broker's clock when it sent hello; the client's clock offset and round trip at connect.
    hello_time: float = 0.0
    clock_offset: float | None = None
    clock_rtt: float | None = None
    #: The mirror this connection runs inside the broker (turbine/_mirror_inside.py).
    inside_mirror: Any = None

    def queue(self, msg: m.Message, payloads: list[Any] | tuple[()] = ()) -> None:
        raise NotImplementedError

    def queue_encoded(self, buffers: list[Any]) -> None:
        raise NotImplementedError

    def reply(self, msg: m.Request, result: Any = None) -> None:
        if result is None:
            # Every flush's reply: nothing in it to check, nothing near the header limit.
            self.queue_encoded(encode_ok(msg.id))
            return
        self.queue(m.Ok(id=msg.id, result=result))

    def error(self, msg_id: int | None, exc: Exception, code: str = "error") -> None:
        message = str(exc)
        if len(message) > MAX_ERROR_MESSAGE_CHARS:
            message = message[: MAX_ERROR_MESSAGE_CHARS - 20] + " ... (message cut)"
        self.queue(m.Error(id=msg_id, code=getattr(exc, "code", code), message=message))

    def handle(self, msg: m.Message) -> None:
        if type(msg) is m.Put:
            self.put(msg)
            return
        try:
            handler = self._handlers[type(msg)]
        except KeyError:
            raise RemoteProtocolError(f"a client may not send {msg.type!r} here") from None
        try:
            handler(self, msg)
        except RequestFailed as exc:
            if exc.code == "access" and self.broker.audit is not None:
                self.broker.audit.record(
                    "refused", self.peer, f"{msg.type} refused: {exc}", request=msg.type
                )
            self.error(getattr(msg, "id", None), exc)
        except ValueError as exc:
            code = "name" if isinstance(exc, InvalidName) else "request"
            self.error(getattr(msg, "id", None), exc, code)
        except Exception as exc:
            # A bug must cost this request, never the broker or other clients.
            log.exception("internal error handling %r from %s", msg.type, self.peer.name)
            self.error(
                getattr(msg, "id", None),
                RequestFailed(f"internal broker error handling {msg.type!r}: {exc!r}", "internal"),
            )

    def on_client_hello(self, msg: m.ClientHello) -> None:
        self.peer.named(msg.name)
        self.peer.reconnects = bool(msg.reconnect)
        if msg.hello_received is not None and msg.time is not None:
            # NTP's on-wire method over hello and client_hello: offset of the
            # client's clock from the broker's, and the round trip it rode on.
            arrived = self.broker.clock()
            self.clock_offset, self.clock_rtt = clock_offset(
                self.hello_time, msg.hello_received, msg.time, arrived
            )

    def on_time(self, msg: m.Time) -> None:
        self.reply(msg, {"time": self.broker.clock()})

    def on_open_source(self, msg: m.OpenSource) -> None:
        check_open(self.peer.access, msg.source)
        channels = {} if msg.channels is None else msg.channels
        if not isinstance(channels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in channels.items()
        ):
            why = f"channels must map channel names to content types (strings), not {channels!r}"
            raise RequestFailed(why[:300], "request")
        producers = msg.producers
        if producers is not None and not (
            isinstance(producers, list)
            and len(producers) <= MAX_PRODUCERS_PER_SOURCE
            and all(isinstance(p, str) for p in producers)
        ):
            why = (
                f"producers must be a list of at most {MAX_PRODUCERS_PER_SOURCE} "
                f"producer ids (strings), not {producers!r}"
            )
            raise RequestFailed(why[:300], "request")
        src = self.broker.hub.open_source(
            self.peer,
            msg.source,
            channels=channels,
            cache_frames=msg.cache_frames,
            cache_bytes=msg.cache_bytes,
            shared=msg.shared,
            mirror=None if msg.mirror is None else Origin.from_wire(msg.mirror),
            archive_bytes=msg.archive_bytes,
            archive_age=msg.archive_age,
        )
        result: dict[str, Any] = {"source": src.name, "channels": self.broker.hub.next_seqs(src)}
        if msg.mirror is not None:
            result["compact"] = True  # takes a copy's first_seq and packed ts
        else:
            result["empty_puts"] = True  # records the gap a put with no frames tells
        if producers is not None:
            known = src.producers
            result["producers"] = {p: known[p] for p in producers if p in known}
        self.reply(msg, result)

    def on_mirror(self, msg: m.Mirror) -> None:
        from ._mirror_inside import on_mirror  # (the client side only brokers that mirror load)

        assert self.reads.nursery is not None  # the connection's, set before it reads
        self.reply(msg, on_mirror(self, self.reads.nursery, msg))  # type: ignore[arg-type]

    def on_close_source(self, msg: m.CloseSource) -> None:
        self.broker.hub.release(self.peer, msg.source)
        self.reply(msg)

    def on_flush(self, msg: m.Flush) -> None:
        hub = self.broker.hub
        if not hub.store.durable:
            self.reply(msg)  # memory stores: everything put before is there now
            return
        # Only what this connection wrote: another writer's slow or failing disk
        # must not hold up (or fail) this one's acknowledgement.
        sources = [hub.sources.get(name) for name in self.written]
        stores = [ch.store for src in sources if src is not None for ch in src.channels.values()]

        async def flushed() -> tuple[m.Message, list[Any]]:
            for store in stores:
                await store.flushed()
            return m.Ok(id=msg.id), []

        self.reads.defer(flushed)  # in its turn, after earlier deferred reads

    def on_status(self, msg: m.Status) -> None:
        self.reply(msg, self.broker.status(self.peer.access))

    def on_delete(self, msg: m.Delete) -> None:
        access = self.peer.access
        if access is not None and not access.admin:
            raise RequestFailed(
                f"user {access.user!r} may not delete sources: that takes admin", "access"
            )
        hub = self.broker.hub
        src = hub.sources.get(msg.source)
        in_memory = sum(ch.store.bytes for ch in src.channels.values()) if src else 0
        hub.delete(msg.source, self.peer)
        self.broker.trim_soon()
        if not hub.store.durable:
            self.reply(msg, {"freed": in_memory})
            return

        async def deleted() -> tuple[m.Message, list[Any]]:
            on_disk = await hub.store.delete(msg.source)
            return m.Ok(id=msg.id, result={"freed": in_memory + on_disk}), []

        self.reads.defer(deleted)  # in its turn, after earlier deferred reads

    def on_acl(self, msg: m.Acl) -> None:
        broker, access = self.broker, self.peer.access
        table = broker.auth
        if table is None or access is None:
            raise RequestFailed(
                "this broker runs without --auth: there are no protections to show or change",
                "request",
            )
        if msg.action == "show":
            if not access.admin and msg.user not in (None, access.user):
                raise RequestFailed(
                    f"user {access.user!r} may see only its own protections", "access"
                )
            names = [msg.user or access.user] if msg.user or not access.admin else table.users
            try:
                self.reply(msg, {u: table.users[u].rights.to_dict() for u in names})
            except KeyError:
                raise RequestFailed(f"no user named {msg.user!r}", "missing") from None
            return
        if msg.action not in ("grant", "revoke"):
            raise RequestFailed(
                f"acl action must be show, grant or revoke, not {msg.action!r}", "request"
            )
        if not access.admin:
            raise RequestFailed(
                f"user {access.user!r} may not change protections: that takes admin", "access"
            )
        if msg.user is None or msg.right is None or msg.pattern is None:
            raise RequestFailed(f"acl {msg.action} takes user, right and pattern", "request")
        try:
            new = table.changed(msg.user, msg.right, msg.pattern, grant=msg.action == "grant")
            new.save()
        except AuthError as exc:
            raise RequestFailed(str(exc), "request") from None
        broker.set_auth(new)
        if broker.audit is not None:
            broker.audit.record(
                "acl",
                self.peer,
                f"{access.user} {msg.action}ed {msg.user} {msg.right} on {msg.pattern}",
                action=msg.action,
                target=msg.user,
                right=msg.right,
                pattern=msg.pattern,
            )
        self.reply(msg, {msg.user: new.users[msg.user].rights.to_dict()})

    _handlers: dict[type[m.Message], Callable[[Requests, Any], None]] = {
        m.ClientHello: on_client_hello,
        m.OpenSource: on_open_source,
        m.CloseSource: on_close_source,
        m.Flush: on_flush,
        m.Subscribe: Reads.on_subscribe,
        m.Unsubscribe: Reads.on_unsubscribe,
        m.Fetch: Reads.on_fetch,
        m.Summarize: Reads.on_summarize,
        m.ListSources: Reads.on_list,
        m.Status: on_status,
        m.Delete: on_delete,
        m.Acl: on_acl,
        m.Time: on_time,
        m.Mirror: on_mirror,
    }
