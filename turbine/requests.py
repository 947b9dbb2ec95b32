"""What the broker does for each request of one connection: the reader's side.

:class:`Requests` is the request half of :class:`turbine.connection.ClientConnection`:
each handler applies one request to the hub and queues its reply.  Handlers
never wait: a read that needs slower storage than memory is handed to the
connection's store task (``turbine/storetask.py``) with its reply's place kept.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any, Protocol

from . import messages as m
from ._clock import clock_offset
from ._constants import FETCH_PART_BYTES, MAX_ERROR_MESSAGE_CHARS
from ._errors import RemoteProtocolError, RequestFailed
from .audit import Audit, command_excerpt
from .auth import COMMAND, WRITE, Access, AuthError, AuthTable, is_command_sink
from .fetch import PendingFetch
from .groups import fetch_reply, split_payload
from .hub import Hub, no_source
from .names import InvalidName
from .origin import Origin
from .peer import Peer
from .router import Subscription, check_start
from .storetask import StoreReads

log = logging.getLogger("turbine.server")


class BrokerView(Protocol):
    """What request handlers need of the broker."""

    hub: Hub

    auth: AuthTable | None
    audit: Audit | None

    def status(self, viewer: Access | None = None) -> dict[str, Any]: ...

    def clock(self) -> float: ...

    def set_auth(self, table: AuthTable) -> None: ...

    def trim_soon(self) -> None: ...


class Requests:
    """Request handlers of one connection (mixed into the connection)."""

    broker: BrokerView
    peer: Peer
    #: The broker's clock when it sent hello; the client's clock offset and round trip at connect.
    hello_time: float = 0.0
    clock_offset: float | None = None
    clock_rtt: float | None = None
    subs: dict[int, Subscription]
    reads: StoreReads
    frames_in: int
    #: Sources this connection put to: what its ``flush`` waits for.
    written: set[str]

    def queue(self, msg: m.Message, payloads: list[Any] | tuple[()] = ()) -> None:
        raise NotImplementedError

    def reply(self, msg: m.Request, result: Any = None) -> None:
        self.queue(m.Ok(id=msg.id, result=result))

    def error(self, msg_id: int | None, exc: Exception, code: str = "error") -> None:
        message = str(exc)
        if len(message) > MAX_ERROR_MESSAGE_CHARS:
            message = message[: MAX_ERROR_MESSAGE_CHARS - 20] + " ... (message cut)"
        self.queue(m.Error(id=msg_id, code=getattr(exc, "code", code), message=message))

    def wake_soon(self) -> None:
        raise NotImplementedError

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

    def put(self, msg: m.Put) -> None:
        sizes = msg.sizes
        access = self.peer.access
        if access is not None and not access.may_put(msg.source):
            refusal = self.put_refused(access, msg.source, msg.channel)
            if self.broker.audit is not None:
                self.broker.audit.record("refused", self.peer, str(refusal), request="put")
            self.error(None, refusal)
            return
        data = split_payload(msg.payload, sizes)
        try:
            wakers = self.broker.hub.put(
                self.peer,
                msg.source,
                msg.channel,
                msg.ts,
                data,
                msg.content_type,
                sizes,
                producer=msg.producer,
                pseq=msg.pseq,
                skipped=msg.skipped,
                seqs=msg.seqs,
                writers=msg.writers,
            )
        except (RequestFailed, InvalidName) as exc:
            self.error(
                None,
                RequestFailed(
                    f"put to {msg.source}/{msg.channel} refused: {exc}",
                    getattr(exc, "code", "error"),
                ),
            )
            return
        self.written.add(msg.source)  # a replay dropped as stored counts too: flush covers it
        self.frames_in += len(sizes)
        for conn in wakers:
            conn.wake_soon()
        if access is not None and is_command_sink(msg.source) and self.broker.audit is not None:
            for frame in data:
                self.broker.audit.record(
                    "command",
                    self.peer,
                    f"{access.user} put a command into {msg.source}",
                    source=msg.source,
                    command=command_excerpt(frame),
                )

    def put_refused(self, access: Access, source: str, channel: str) -> RequestFailed:
        """Why ``access`` may not put to ``source``: a source it may not read
        gets the answer a missing one gets (existence does not leak)."""
        if not access.may_read(source) or source not in self.broker.hub.sources:
            why = no_source(source)
        else:
            right = COMMAND if is_command_sink(source) else WRITE
            why = RequestFailed(f"user {access.user!r} has no {right} right on it", "access")
        return RequestFailed(f"put to {source}/{channel} refused: {why}", why.code)

    def readable(self) -> Callable[[str], bool] | None:
        """What this connection may read (None: everything)."""
        access = self.peer.access
        return None if access is None else access.may_read

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
        access = self.peer.access
        if access is not None and not access.may(WRITE, msg.source):
            raise RequestFailed(
                f"user {access.user!r} may not open {msg.source!r}: that takes the write right",
                "access",
            )
        channels = {} if msg.channels is None else msg.channels
        if not isinstance(channels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in channels.items()
        ):
            why = f"channels must map channel names to content types (strings), not {channels!r}"
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
        self.reply(
            msg,
            {
                "source": src.name,
                "channels": self.broker.hub.next_seqs(src),
            },
        )

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

    def on_subscribe(self, msg: m.Subscribe) -> None:
        sid = msg.sub
        if sid in self.subs:
            raise RequestFailed(
                f"subscription id {sid} is already in use on this connection", "request"
            )
        resume = msg.resume
        if resume is not None and not all(
            isinstance(k, str) and type(v) is int and v >= 1 for k, v in resume.items()
        ):
            why = f"resume must map channel paths to sequence numbers >= 1, not {resume!r}"
            raise RequestFailed(why[:300], "request")
        max_rate = msg.max_rate
        if max_rate is not None and not (msg.monitor and 0 < max_rate < math.inf):
            raise RequestFailed(
                f"max_rate must be a number of frames per second above 0, with monitor "
                f"(not {max_rate!r}{'' if msg.monitor else ' without monitor'})",
                "request",
            )
        sub = Subscription(
            sid,
            self,
            msg.pattern,
            check_start("now" if msg.start is None else msg.start),
            bool(msg.monitor),
            self.readable(),
            resume,
            0.0 if max_rate is None else 1.0 / max_rate,
        )
        hub = self.broker.hub
        hub.router.add(sub, hub.channels("*/*"))
        self.subs[sid] = sub
        cursors = sorted(sub.cursors.items(), key=lambda item: item[0].path)
        self.reply(
            msg,
            {
                "channels": [ch.path for ch, _ in cursors],
                "next": {ch.path: cursor.next_seq for ch, cursor in cursors},
            },
        )

    def on_unsubscribe(self, msg: m.Unsubscribe) -> None:
        sub = self.subs.pop(msg.sub, None)
        if sub is not None:
            self.broker.hub.router.remove(sub)
        self.reply(msg)

    def on_fetch(self, msg: m.Fetch) -> None:
        result = self.broker.hub.fetch(
            msg.pattern,
            newest=msg.newest,
            oldest=msg.oldest,
            start=msg.start,
            duration=msg.duration,
            after=msg.after,
            readable=self.readable(),
        )
        if isinstance(result, PendingFetch):
            pending = result

            async def fetched() -> AsyncGenerator[Sequence[tuple[m.Message, list[Any]]], None]:
                async for groups, payloads, last in pending.parts(FETCH_PART_BYTES):
                    yield fetch_reply(msg.id, groups, payloads, more=not last)

            self.reads.stream(fetched, msg.id)  # from slower storage, in its turn, in parts
            return
        groups, payloads = result
        for part, part_payloads in fetch_reply(msg.id, groups, payloads):
            self.queue(part, part_payloads)

    def on_list(self, msg: m.ListSources) -> None:
        access = self.peer.access
        sources = self.broker.hub.list_sources(msg.pattern, self.readable())
        if access is not None:
            for info in sources:
                info["access"] = access.codes(info["name"])
        self.reply(msg, sources)

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
        m.Subscribe: on_subscribe,
        m.Unsubscribe: on_unsubscribe,
        m.Fetch: on_fetch,
        m.ListSources: on_list,
        m.Status: on_status,
        m.Delete: on_delete,
        m.Acl: on_acl,
        m.Time: on_time,
    }
