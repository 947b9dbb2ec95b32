"""What the broker does for each request of one connection: the reader's side.

:class:`Requests` is the request half of :class:`turbine.server.ClientConnection`:
each handler applies one request to the hub and queues its reply.  Handlers
never wait: a read that needs slower storage than memory is handed to the
connection's store task (``turbine/storetask.py``) with its reply's place kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from ._errors import RemoteProtocolError, RequestFailed
from .hub import Hub, PendingFetch
from .names import InvalidName
from .peer import Peer
from .protocol import Message, fetch_reply, split_payload
from .router import Subscription, check_start
from .storetask import StoreReads

log = logging.getLogger("turbine.server")


class BrokerView(Protocol):
    """What request handlers need of the broker."""

    hub: Hub

    def status(self) -> dict[str, Any]: ...


class Requests:
    """Request handlers of one connection (mixed into the connection)."""

    broker: BrokerView
    peer: Peer
    subs: dict[int, Subscription]
    reads: StoreReads
    frames_in: int

    def queue(
        self, kind: str, fields: dict[str, Any], payloads: list[Any] | tuple[()] = ()
    ) -> None:
        raise NotImplementedError

    def reply(self, msg: Message, result: Any = None) -> None:
        self.queue("ok", {"id": msg["id"], "result": result})

    def error(self, msg_id: int | None, exc: Exception, code: str = "error") -> None:
        self.queue("error", {"id": msg_id, "code": getattr(exc, "code", code), "message": str(exc)})

    def wake_soon(self) -> None:
        raise NotImplementedError

    def handle(self, msg: Message) -> None:
        kind = msg.type
        if kind == "put":
            self.put(msg)
            return
        try:
            handler = self._handlers[kind]
        except KeyError:
            raise RemoteProtocolError(f"a client may not send {kind!r} here") from None
        try:
            handler(self, msg)
        except (RequestFailed, ValueError) as exc:
            code = (
                "name"
                if isinstance(exc, InvalidName)
                else "request"
                if isinstance(exc, ValueError)
                else "error"
            )
            self.error(msg.get("id"), exc, code)
        except Exception as exc:
            # A bug must cost this request, never the broker or other clients.
            log.exception("internal error handling %r from %s", kind, self.peer.name)
            self.error(
                msg.get("id"),
                RequestFailed(f"internal broker error handling {kind!r}: {exc!r}", "internal"),
            )

    def put(self, msg: Message) -> None:
        f = msg.fields
        sizes = f["sizes"]
        data = split_payload(msg.payload, sizes)
        try:
            wakers = self.broker.hub.put(
                self.peer,
                f["source"],
                f["channel"],
                f["ts"],
                data,
                f.get("content_type"),
                sizes,
            )
        except (RequestFailed, InvalidName) as exc:
            self.error(
                None,
                RequestFailed(
                    f"put to {f['source']}/{f['channel']} refused: {exc}",
                    getattr(exc, "code", "error"),
                ),
            )
            return
        self.frames_in += len(sizes)
        for conn in wakers:
            conn.wake_soon()

    def on_client_hello(self, msg: Message) -> None:
        self.peer.named(msg["name"])

    def on_open_source(self, msg: Message) -> None:
        f = msg.fields
        channels = f.get("channels") or {}
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in channels.items()):
            raise RequestFailed("channels must map channel names to content types", "request")
        kwargs = {k: f[k] for k in ("cache_frames", "cache_bytes", "shared") if k in f}
        src = self.broker.hub.open_source(self.peer, f["source"], channels=channels, **kwargs)
        self.reply(
            msg,
            {
                "source": src.name,
                "channels": {n: ch.store.next_seq for n, ch in src.channels.items()},
            },
        )

    def on_close_source(self, msg: Message) -> None:
        self.broker.hub.release(self.peer, msg["source"])
        self.reply(msg)

    def on_flush(self, msg: Message) -> None:
        hub = self.broker.hub
        if not hub.store.durable:
            self.reply(msg)  # memory stores: everything put before is there now
            return
        stores = [ch.store for src in hub.sources.values() for ch in src.channels.values()]

        async def flushed() -> tuple[str, dict[str, Any], list[Any]]:
            for store in stores:
                await store.flushed()
            return "ok", {"id": msg["id"], "result": None}, []

        self.reads.defer(flushed)  # in its turn, after earlier deferred reads

    def on_subscribe(self, msg: Message) -> None:
        sid = msg["sub"]
        if sid in self.subs:
            raise RequestFailed(
                f"subscription id {sid} is already in use on this connection", "request"
            )
        sub = Subscription(
            sid,
            self,
            msg["pattern"],
            check_start(msg.get("start", "now")),
            bool(msg.get("monitor", False)),
        )
        hub = self.broker.hub
        hub.router.add(sub, hub.channels("*/*"))
        self.subs[sid] = sub
        self.reply(msg, {"channels": sorted(ch.path for ch in sub.cursors)})

    def on_unsubscribe(self, msg: Message) -> None:
        sub = self.subs.pop(msg["sub"], None)
        if sub is not None:
            self.broker.hub.router.remove(sub)
        self.reply(msg)

    def on_fetch(self, msg: Message) -> None:
        f = msg.fields
        sel = {k: f[k] for k in ("newest", "oldest", "start", "duration", "after") if k in f}
        result = self.broker.hub.fetch(f["pattern"], **sel)
        if isinstance(result, PendingFetch):
            pending = result

            async def fetched() -> tuple[str, dict[str, Any], list[Any]]:
                groups, payloads = await pending.run()
                return "frames", {"id": msg["id"], "groups": groups}, payloads  # split on sending

            self.reads.defer(fetched, msg["id"])  # from slower storage, in its turn
            return
        groups, payloads = result
        for fields, part_payloads in fetch_reply(msg["id"], groups, payloads):
            self.queue("frames", fields, part_payloads)

    def on_list(self, msg: Message) -> None:
        self.reply(msg, self.broker.hub.list_sources(msg["pattern"]))

    def on_status(self, msg: Message) -> None:
        self.reply(msg, self.broker.status())

    def on_delete(self, msg: Message) -> None:
        self.broker.hub.delete(msg["source"], self.peer)
        self.reply(msg)

    _handlers: dict[str, Callable[[Requests, Message], None]] = {
        "client_hello": on_client_hello,
        "open_source": on_open_source,
        "close_source": on_close_source,
        "flush": on_flush,
        "subscribe": on_subscribe,
        "unsubscribe": on_unsubscribe,
        "fetch": on_fetch,
        "list": on_list,
        "status": on_status,
        "delete": on_delete,
    }
