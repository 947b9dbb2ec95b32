"""Frame groups: the columnar body of ``put`` and ``frames`` messages, sans I/O.

A ``put`` lists its frames' timestamps and sizes as columns and carries their
bytes back to back in the payload; a ``frames`` message carries groups of
consecutive frames of one channel the same way.  These functions check the
columns against the payload and cut it (no per-frame Python loop where C will
do), and split a large delivery into messages that each fit the limits.
"""

from __future__ import annotations

import array
import functools
import itertools
import struct
import sys
from collections.abc import Iterable
from typing import Any

from ._constants import (
    COPY_FRAMES_ONE_BY_ONE_BYTES,
    DELIVERY_BATCH_BYTES,
    DELIVERY_BATCH_FRAMES,
    MAX_CONTENT_TYPE_CHARS,
    MAX_HEADER_BYTES,
    MAX_NAME_CHARS,
    MAX_WRITER_CHARS,
    VECTORED_MIN_BYTES,
)
from ._errors import RemoteProtocolError
from .messages import CutPayload, Frames
from .payloads import cut

#: One group of frames inside ``put`` / ``frames``: consecutive sequence numbers
#: of one channel from one writer.  Fields, in order:
GROUP_FIELDS = ("source", "channel", "content_type", "first_seq", "ts", "sizes", "writer")


def check_put(fields: dict[str, Any], payload_len: int) -> None:
    """Check that a put's columns agree with its payload (C-speed checks, no per-frame loop).

    Raises:
        RemoteProtocolError: the sizes do not add up or the columns differ in length.
    """
    ts, sizes = fields["ts"], fields["sizes"]
    if type(ts) is bytes:  # packed: no per-frame values to look at
        if len(ts) != 8 * len(sizes):
            raise RemoteProtocolError(
                f"'put' packed timestamps must be 8 bytes per frame: {len(ts)} bytes "
                f"for {len(sizes)} sizes"
            )
    elif len(ts) != len(sizes):
        raise RemoteProtocolError("'put' lists a different number of timestamps and sizes")
    elif not (ts and ts[0] is None and ts.count(None) == len(ts)) and not (
        set(map(type, ts)) <= _TS_TYPES
    ):
        # (No timestamps, the broker's clock for all, is the usual batch: a count
        # of None is exact, 1-2 ns a frame against 45-60 for the set of types.)
        raise RemoteProtocolError("'put' timestamps must be numbers or nil")
    total = _int_total(sizes)
    if total is None:
        raise RemoteProtocolError("'put' sizes must be non-negative integers")
    if total != payload_len:
        raise RemoteProtocolError(
            f"'put' sizes add up to {total} bytes but the payload holds {payload_len}"
        )


_TS_TYPES = {float, int, type(None)}
_NUMBERS = {float, int}
_INT = {int}


def _int_total(sizes: list[Any]) -> int | None:
    """The sum of a decoded sizes column; None unless it holds non-negative integers only.

    The usual batch has one size above 1 throughout: told by a count, an
    identity test among small ints (0.3 ns a frame against 15-20 for the set of
    the types).  What such a count takes for equal besides an int is a float,
    which makes the sum a float; 0 and 1 (a bool would pass) go the long way.
    """
    if sizes:
        first = sizes[0]
        if type(first) is int and first > 1 and sizes.count(first) == len(sizes):
            total = sum(sizes)
            if type(total) is int:
                return total
        if not set(map(type, sizes)) <= _INT or min(sizes) < 0:
            return None
    return sum(sizes)


def pack_times(ts: array.array[float]) -> bytes:
    """Timestamps as a put's packed ``ts``: float64, little-endian, 8 bytes each.

    A copy's timestamps go through a mirror this way: a byte string is one
    msgpack item and one copy where a list is a float object per frame, both
    to encode and to decode, and checked by type one by one.
    """
    if _LITTLE:
        return ts.tobytes()
    swapped = array.array("d", ts)
    swapped.byteswap()
    return swapped.tobytes()


def unpack_times(packed: bytes) -> array.array[float]:
    """A put's packed ``ts`` (length checked by :func:`check_put`) as an array of floats."""
    ts = array.array("d")
    ts.frombytes(packed)
    if not _LITTLE:
        ts.byteswap()
    return ts


_LITTLE = sys.byteorder == "little"


def split_payload(payload: memoryview, sizes: list[int]) -> list[Any]:
    """Cut a payload into frames by their sizes (already checked to add up).

    Small frames become ``bytes`` (cheap to keep by the million); large ones
    stay views of the payload, uncopied.
    """
    count = len(sizes)
    if count == 1:
        return [payload]
    if (
        count
        and 0 < (size := sizes[0]) < VECTORED_MIN_BYTES
        and sizes[-1] == size  # (frames of many sizes are told apart here, at once)
        and sizes.count(size) == count
    ):
        return _split_even(payload, size, count)
    ends = list(itertools.accumulate(sizes, initial=0))
    if sizes and max(sizes) >= VECTORED_MIN_BYTES:
        return [payload[a:b] for a, b in itertools.pairwise(ends)]
    obj = payload.obj
    if type(obj) is not bytes or len(obj) != len(payload):
        if len(payload) >= COPY_FRAMES_ONE_BY_ONE_BYTES * len(sizes):
            return [payload[a:b].tobytes() for a, b in itertools.pairwise(ends)]
        obj = bytes(payload)
    return [obj[a:b] for a, b in itertools.pairwise(ends)]


def _split_even(payload: memoryview, size: int, count: int) -> list[bytes]:
    """``count`` frames of ``size`` bytes each (small), each copied out of the
    payload by a compiled struct: C makes the bytes objects, with no Python
    loop per frame and no copy of the whole payload first (64 B frames, 4,096
    a put: 26 against 61 ns a frame sliced from a bytes payload in a
    comprehension; 1 KB frames: 95 against 225 ns copied one by one)."""
    whole, rest = divmod(count, _CUT_FRAMES)
    cut = whole * _CUT_FRAMES * size
    frames: list[bytes] = []
    if whole:
        frames = list(
            itertools.chain.from_iterable(_cutter(size, _CUT_FRAMES).iter_unpack(payload[:cut]))
        )
    if rest:
        frames += _cutter(size, rest).unpack(payload[cut:])
    return frames


#: Equal frames are cut this many at a time by one struct (its compiled form
#: holds a field per frame: 64 of them keep the cache below a few hundred KB).
_CUT_FRAMES = 64


@functools.lru_cache(maxsize=64)
def _cutter(size: int, count: int) -> struct.Struct:
    return struct.Struct(f"{size}s" * count)


# Bounds on what one group and one frame add to a frames header, for splitting
# without packing twice: a group's array, seq and column heads, and a frame's
# float64 timestamp and uint64 size.  Strings count 4 bytes per character (UTF-8).
_GROUP_HEADER_BYTES = 64
_FRAME_HEADER_BYTES = 18
_FIELDS_HEADER_BYTES = 1024  # type, id or sub, more: what the groups leave room for


def split_frames(
    groups: list[list[Any]],
    payloads: list[Any],
    max_frames: int,
    max_bytes: int,
    max_header: int = MAX_HEADER_BYTES,
) -> list[tuple[list[list[Any]], list[Any]]]:
    """Cut one delivery's groups and payloads into parts that each fit one message.

    ``payloads`` are buffers holding the groups' frames back to back (a buffer
    per frame, or a run of frames per buffer: see :mod:`turbine.payloads`).
    A part holds at most ``max_frames`` frames, ``max_bytes`` of payload
    (or one larger frame alone) and a header under ``max_header`` bytes.
    Groups are split between frames, so sequence numbers run on from part
    to part; empty groups are dropped.  One part when everything fits.
    """
    frames = head = 0
    for g in groups:
        frames += len(g[5])
        head += _group_cost(g[0], g[1], g[2], g[6])
    head += frames * _FRAME_HEADER_BYTES
    if (
        frames <= max_frames
        and head <= max_header - _FIELDS_HEADER_BYTES
        and sum(map(len, payloads)) <= max_bytes
    ):
        return [(groups, payloads)]
    parts: list[tuple[list[list[Any]], list[Any]]] = []
    part: list[list[Any]] = []
    part_payloads: list[Any] = []
    n = size = head = 0
    pos = 0  # where the part's next frame lies in the payloads, in bytes
    buf_ends = list(itertools.accumulate(map(len, payloads)))
    room = max_header - _FIELDS_HEADER_BYTES
    for source, channel, ctype, seq, ts, sizes, writer in groups:
        fixed = _group_cost(source, channel, ctype, writer)
        k = 0
        while k < len(sizes):
            take = min(len(sizes) - k, max_frames - n, (room - head - fixed) // _FRAME_HEADER_BYTES)
            if take > 0 and size + sum(sizes[k : k + take]) > max_bytes:
                ends = itertools.accumulate(sizes[k : k + take], initial=size)
                take = sum(1 for end in ends if end <= max_bytes) - 1
            if take <= 0 and not n:
                take = 1  # a part takes at least one frame, however large
            if take <= 0:
                parts.append((part, part_payloads))
                part, part_payloads, n, size, head = [], [], 0, 0, 0
                continue
            part.append(
                [source, channel, ctype, seq + k, ts[k : k + take], sizes[k : k + take], writer]
            )
            nbytes = sum(sizes[k : k + take])
            part_payloads += cut(payloads, pos, pos + nbytes, buf_ends)
            pos += nbytes
            n += take
            size += nbytes
            head += fixed + take * _FRAME_HEADER_BYTES
            k += take
    if part:
        parts.append((part, part_payloads))
    return parts


def fetch_reply(
    msg_id: int, groups: list[list[Any]], payloads: list[Any], more: bool = False
) -> list[tuple[Frames, list[Any]]]:
    """The ``frames`` messages answering fetch ``msg_id``, each with its payloads.

    One message when the frames fit, else parts of at most
    ``DELIVERY_BATCH_FRAMES`` frames and ``DELIVERY_BATCH_BYTES`` (a larger
    frame alone); every part but the last carries ``more: true`` (every part,
    with ``more``: a reply sent in pieces, more pieces following).
    """
    parts = split_frames(groups, payloads, DELIVERY_BATCH_FRAMES, DELIVERY_BATCH_BYTES)
    if more and not parts:
        return []
    parts = parts or [([], [])]
    last = len(parts) if more else len(parts) - 1
    return [
        (Frames(id=msg_id, groups=part, more=True if i < last else None), part_payloads)
        for i, (part, part_payloads) in enumerate(parts)
    ]


def _group_cost(source: Any, channel: Any, ctype: Any, writer: Any) -> int:
    """What a group adds to a header besides its frames' columns (a bound): its strings."""
    chars = 0
    for x in (source, channel, ctype, writer):
        if isinstance(x, str):
            chars += len(x)
    return _GROUP_HEADER_BYTES + 4 * chars


def split_groups(groups: Iterable[Any], payload: memoryview | CutPayload) -> list[tuple[Any, ...]]:
    """Check a ``frames`` message's groups and cut its payload to match.

    Returns ``(source, channel, content_type, first_seq, ts, datas, writer)``
    per group, where ``datas`` are the group's payloads.

    Raises:
        RemoteProtocolError: a group is malformed or the sizes overrun the payload.
    """
    if isinstance(payload, CutPayload):
        return payload.groups  # checked and cut while the message arrived
    return [
        (source, channel, ctype, seq, ts, split_payload(view, sizes), writer)
        for source, channel, ctype, seq, ts, sizes, view, writer in check_groups(groups, payload)
    ]


def check_groups(groups: Iterable[Any], payload: memoryview) -> list[tuple[Any, ...]]:
    """Check a ``frames`` message's groups against its payload, uncut.

    Returns ``(source, channel, content_type, first_seq, ts, sizes, view,
    writer)`` per non-empty group, where ``view`` is the part of the payload
    holding the group's frames back to back.

    Raises:
        RemoteProtocolError: a group is malformed or the sizes overrun the payload.
    """
    out = []
    offset = 0
    end = len(payload)
    for g in groups:
        size = check_group(g, end - offset)
        if size is not None:
            source, channel, ctype, seq, ts, sizes, writer = g
            out.append(
                (source, channel, ctype, seq, ts, sizes, payload[offset : offset + size], writer)
            )
            offset += size
    return out


def check_group(g: Any, room: int) -> int | None:
    """Check one group of a ``frames`` message whose payload has ``room`` bytes left
    for it; return the size of its frames together (None: it has none).

    Raises:
        RemoteProtocolError: the group is malformed or its sizes overrun the room.
    """
    if not isinstance(g, list) or len(g) != len(GROUP_FIELDS):
        raise RemoteProtocolError(f"a frame group must be a list of {len(GROUP_FIELDS)} fields")
    source, channel, ctype, seq, ts, sizes, writer = g
    if not (
        isinstance(source, str)
        and isinstance(channel, str)
        and isinstance(ctype, str)
        and isinstance(writer, str)
    ):  # (spelled out: a generator here is a Python call per string, per delivery)
        raise RemoteProtocolError(
            "a frame group's source, channel, content type and writer must be strings"
        )
    if (
        len(source) > MAX_NAME_CHARS
        or len(channel) > MAX_NAME_CHARS
        or len(ctype) > MAX_CONTENT_TYPE_CHARS
        or len(writer) > MAX_WRITER_CHARS
    ):
        raise RemoteProtocolError(
            "a frame group's source, channel, content type or writer is over its length limit"
        )
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise RemoteProtocolError(
            "a frame group's first sequence number must be a positive integer"
        )
    if not isinstance(ts, list) or not isinstance(sizes, list) or len(ts) != len(sizes):
        raise RemoteProtocolError("a frame group's ts and sizes must be lists of equal length")
    if not sizes:
        return None
    size = _int_total(sizes)
    if size is None or size > room:
        raise RemoteProtocolError("a frame group's sizes overrun the payload")
    if not set(map(type, ts)) <= _NUMBERS:
        raise RemoteProtocolError("a frame group's timestamps must be numbers")
    return size


def decode_groups(
    groups: Iterable[Any], payload: memoryview | CutPayload
) -> Iterable[tuple[Any, ...]]:
    """Yield ``(source, channel, content_type, seq, ts, data, writer)`` per frame.

    Raises:
        RemoteProtocolError: a group is malformed or the sizes overrun the payload.
    """
    for source, channel, ctype, seq, ts, datas, writer in split_groups(groups, payload):
        for i, (t, data) in enumerate(zip(ts, datas, strict=True)):
            yield source, channel, ctype, seq + i, t, data, writer


class PayloadCutter:
    """Cuts a ``frames`` message's payload into its frames as the payload's bytes
    arrive, so that it is never held whole (a client's large fetch reply: a 1 MB
    buffer's pages touched and unmapped per reply, when the frames are copied
    out as bytes anyway).  Make one with :meth:`for_groups`; :meth:`feed` it
    the bytes in order until :attr:`left` is 0, then take :meth:`payload`.
    """

    def __init__(self, groups: list[Any], nbytes: int) -> None:
        self._groups = groups  # the non-empty groups, checked
        #: Per group, the size of its frames where all are of one size (else 0).
        self._even = [g[5][0] if g[5].count(g[5][0]) == len(g[5]) else 0 for g in groups]
        self._done: list[tuple[Any, ...]] = []
        self._datas: list[Any] = []  # the current group's frames cut so far
        self._index = 0  # of the current frame in the current group
        #: The payload's length, and how much of it was not fed yet.
        self.nbytes = nbytes
        self.left = nbytes

    @classmethod
    def for_groups(cls, groups: Any, nbytes: int) -> PayloadCutter | None:
        """A cutter for a payload of ``nbytes`` that ``groups`` describe, or None when
        it is better received whole: a group is malformed (its error is then raised
        where a whole message's is), or a frame is large (it stays a view, uncopied).
        """
        if not isinstance(groups, list):
            return None
        kept = []
        room = nbytes
        try:
            for g in groups:
                size = check_group(g, room)
                if size is not None:
                    if max(g[5]) >= VECTORED_MIN_BYTES:
                        return None
                    kept.append(g)
                    room -= size
        except RemoteProtocolError:
            return None
        return cls(kept, nbytes)

    def feed(self, view: memoryview) -> int:
        """Cut the whole frames at the start of ``view`` (the payload's next bytes);
        return how many bytes were taken (a frame's part that is not whole is left)."""
        taken = 0
        have = len(view)
        groups = self._groups
        while len(self._done) < len(groups):
            sizes = groups[len(self._done)][5]
            i = self._index
            even = self._even[len(self._done)]
            if even:  # (the usual group: no Python per frame to count what fits)
                n = min((have - taken) // even, len(sizes) - i)
                nbytes = n * even
            else:
                n = nbytes = 0
                for size in itertools.islice(sizes, i, None):
                    if nbytes + size > have - taken:
                        break
                    nbytes += size
                    n += 1
            if n:
                part = view[taken : taken + nbytes]
                self._datas += [part.tobytes()] if n == 1 else split_payload(part, sizes[i : i + n])
                taken += nbytes
                self._index = i = i + n
            if i < len(sizes):
                break
            source, channel, ctype, seq, ts, _, writer = groups[len(self._done)]
            self._done.append((source, channel, ctype, seq, ts, self._datas, writer))
            self._datas, self._index = [], 0
        if len(self._done) == len(groups):
            taken += min(have, self.left) - taken  # bytes after the groups' frames: no frame's
        self.left -= taken
        return taken

    def payload(self) -> CutPayload:
        """The payload, cut (once :attr:`left` is 0)."""
        return CutPayload(self._done, self.nbytes)
