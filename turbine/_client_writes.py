"""What a :class:`~turbine.client.Client` writes: the sources it opens and its puts.

:class:`Writes` is the writing half of the client's public API, on top of
its :class:`~turbine._client_link.Link` (requests tried again across a
reconnect, the outbox that batches puts, the spool): ``open_source`` (a
:class:`~turbine.client.Source` handle to put through), ``put`` on a shared
source by path, and the mirror's ``open_mirror`` and ``put_copy`` (frames
under the origin's numbers and writers).  :class:`~turbine.client.Client`
adds the reading and broker calls.
"""

from __future__ import annotations

import array
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import messages as m
from ._client_handles import Source
from ._client_link import Link
from ._client_requests import refused_path
from ._errors import RequestFailed
from .groups import pack_times
from .names import split_path
from .protocol import encode_message

if TYPE_CHECKING:
    from .origin import Origin


class Writes(Link):
    """The writing calls of a client (its public API's first half)."""

    #: Mirrored sources opened on a broker that takes a copy's compact form.
    _compact: frozenset[str] = frozenset()

    async def open_source(
        self,
        name: str,
        channels: Mapping[str, str] | None = None,
        *,
        cache_frames: int | None = None,
        cache_bytes: int | None = None,
        shared: bool | None = None,
        archive_bytes: int | None = None,
        archive_age: float | None = None,
    ) -> Source:
        """Create (or take back) source ``name`` with its channels and ring limits.

        ``channels`` maps channel names to content types.  A ``shared`` source
        accepts puts from every client.  Reopening a source continues its
        sequence numbers; limits left as ``None`` keep the source's current
        ones (a new source gets the broker's defaults).  On a broker with a
        data dir, ``archive_bytes`` is the disk kept for the source (the
        oldest goes first; 0: memory only) and ``archive_age`` the age in
        seconds beyond which its disk history goes; a memory-only broker
        ignores both.  A mirrored source is
        opened with :meth:`open_mirror` instead.

        Raises:
            RequestFailed: invalid name, held by another client (named in the
                message), or not enough broker memory or disk left (code
                ``memory`` / ``disk``; says how much is).
        """
        channels = dict(channels or {})
        fields = {
            "source": name,
            "channels": channels,
            "cache_frames": cache_frames,
            "cache_bytes": cache_bytes,
            "shared": shared,
            "archive_bytes": archive_bytes,
            "archive_age": archive_age,
        }
        left = self.spool.left.producers(name) if self.spool is not None else []
        asked = {**fields, "producers": left} if left else fields  # what they had stored
        ok = (await self._call_parts(m.OpenSource, m.Ok, asked))[-1]
        if not self.reconnect:
            return Source(name, channels, self._outbox, self._requests)
        self._held[name] = fields
        assert self.spool is not None
        result = ok.result if isinstance(ok.result, dict) else {}
        self._outbox.opened(name, result)
        # What a crashed run left spooled for it goes first; what it lost, a gap.
        self.spool.adopt(name, result.get("producers") if left else None)
        return Source(name, channels, self._outbox, self)

    async def open_mirror(
        self,
        name: str,
        channels: Mapping[str, str],
        mirror: Origin,
        *,
        cache_frames: int | None = None,
        cache_bytes: int | None = None,
    ) -> dict[str, int]:
        """Open mirrored source ``name`` (a copy of ``mirror``'s frames, written
        with :meth:`put_copy`); return the next number of each channel it has.

        The broker's reply also says whether it takes a copy's compact form
        (``first_seq`` and packed timestamps), which :meth:`put_copy` then uses.

        Raises:
            RequestFailed: as :meth:`open_source`; code ``mirror`` when the
                source exists and is not a mirror of that origin, ``loop``
                when the frames came from this broker.
        """
        reply = await self._requests.call(
            m.OpenSource,
            m.Ok,
            source=name,
            channels=dict(channels),
            cache_frames=cache_frames,
            cache_bytes=cache_bytes,
            mirror=mirror.to_wire(),
        )
        self._copies.add(name)
        if reply.result.get("compact") is True:
            self._compact |= {name}
        return dict(reply.result["channels"])

    async def put_copy(
        self,
        source: str,
        channel: str,
        ts: list[float | None] | array.array[float],
        data: Sequence[Any],
        seqs: list[int] | range,
        writers: list[Any],
        content_type: str | None = None,
        *,
        sizes: list[int] | None = None,
    ) -> None:
        """Put frames to a mirrored source under the origin's numbers and writers.

        ``data`` holds one piece per frame, or, with ``sizes``, the frames'
        bytes back to back in any pieces (a :class:`FrameGroup`'s payload).
        Timestamps in an ``array('d')`` and numbers in a ``range`` go in the
        compact form (packed ``ts``, ``first_seq``) where the broker said at
        :meth:`open_mirror` that it takes it, else as lists.  Written at once,
        after the puts queued before; a refusal is raised by the next request
        (as for every put).

        Raises:
            TurbineError: the connection failed.
        """
        sizes = list(map(len, data)) if sizes is None else sizes
        put = copy_put(
            source, channel, ts, sizes, seqs, writers, content_type, source in self._compact
        )
        await self._outbox.send(encode_message(put, list(data)))

    async def put(
        self, path: str, data: bytes | bytearray | memoryview, *, timestamp: float | None = None
    ) -> None:
        """Put one frame on ``SOURCE/CHANNEL`` (a shared source, or one this client holds).

        Returns once the broker holds it.

        Raises:
            RequestFailed: no such source, or it is not shared (this put's own
                refusal, also when other tasks of this client put at once).
        """
        source, channel = split_path(path)
        requests, since = self._requests, self._requests.refusals
        if self._outbox.queue(source, channel, data, timestamp, wake=False):
            await self._outbox.send()
        try:
            await self.flush()  # (takes the frame: the flusher task is not woken for it)
        except RequestFailed as exc:
            # Another task's put may have been refused first: that task is told
            # (below, in its own call); this one raises only its own refusal.
            if refused_path(exc) is None:
                raise
        finally:
            if self._outbox.has_puts:  # a flush cancelled before it took the frame
                self._outbox.wake_flusher()
        if requests is not self._requests:  # reconnected: its puts went again
            requests, since = self._requests, 0
        refusal = requests.take_refusal(f"{source}/{channel}", since)
        if refusal is not None:
            raise refusal


def copy_put(
    source: str,
    channel: str,
    ts: list[float | None] | array.array[float],
    sizes: list[int],
    seqs: list[int] | range,
    writers: list[Any],
    content_type: str | None,
    compact: bool,
) -> m.Put:
    """The ``put`` of :meth:`Writes.put_copy`: timestamps in an ``array('d')`` packed
    and numbers in a ``range`` as their ``first_seq`` when ``compact`` (the broker
    takes that form), else both as lists."""
    first_seq = None
    if compact and type(seqs) is range and seqs.step == 1:
        first_seq, listed = seqs.start, None
    else:
        listed = seqs if type(seqs) is list else list(seqs)
    stamps: list[Any] | bytes = (
        ts if not isinstance(ts, array.array) else (pack_times(ts) if compact else ts.tolist())
    )
    return m.Put(
        source=source,
        channel=channel,
        ts=stamps,
        sizes=sizes,
        content_type=content_type,
        seqs=listed,
        first_seq=first_seq,
        writers=writers,
    )
