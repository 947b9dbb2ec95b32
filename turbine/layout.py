"""Where frames go on a DVD archiver's disc or in a ``turbine export``, and what the
files look like (pure, no I/O but files).

The tree on every disc (docs/archive.rst says the same for its readers)::

    README.txt                                   what is where (this layout)
    sessions/<NNNN>/manifest.json                per session: every file's SHA-256,
                                                 channels, sequence ranges, gaps
    <source>/<channel>/<YYYY-MM-DD>/...          the frames, by UTC date

How a channel's frames are written depends on its kind (:func:`channel_kind`):

* ``jpeg``: one ``HHMMSS.ffffff_s<seq>.jpg`` per frame, the frame's bytes;
* ``binary``: the same with ``.bin``;
* ``metadata`` (``metadata.txt``): one ``HHMMSS.ffffff_s<seq>.json`` per frame;
* ``float64`` (little-endian float64 blocks, e.g. a DAQ): one CSV chunk file
  per session and day, ``<stem>_session<NNNN>_s<first>-<last>.csv`` with
  the columns ``seq,timestamp,time_utc,sample,value``;
* ``text`` (``text/*``, JSON): one JSON-lines chunk file per session and
  day, ``..._s<first>-<last>.jsonl``, one object per frame;
* ``audio`` (16-bit PCM, ``audio/L16;rate=R;channels=C``): a WAV file a PC
  plays for each continuous run of blocks in a session and day,
  ``HHMMSS.ffffff_session<NNNN>_s<first>-<last>.wav`` named by its first
  sample's time (:func:`audio_runs` says where a run ends).

Chunk names carry the session number and the sequence range, so the
sessions, which xorriso merges into one tree, never replace each other's
files; re-burning a session after a crash writes the same names again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import struct
import wave
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ._constants import FLOAT64_CONTENT_TYPE
from .render import is_text, pcm_format, pcm_swap

#: Version tag written into every manifest.
MANIFEST_FORMAT = "turbine-dvd-archive/1"
README_NAME = "README.txt"
SECTOR = 2048

KINDS = ("jpeg", "binary", "metadata", "float64", "text", "audio")
CHUNK_KINDS = ("float64", "text", "audio")
#: Blocks of audio further apart (or overlapping) by more than this start a new
#: WAV file: a stop and start, or frames the turbine dropped.  Blocks stamped with
#: their sample clock join exactly; this leaves room for blocks stamped on arrival.
AUDIO_JOIN_S = 0.02


def channel_kind(channel: str, content_type: str) -> str:
    """How a channel is archived: one of :data:`KINDS`."""
    ctype = content_type.split(";")[0].strip().lower()
    name = channel.lower()
    if name == "metadata.txt":
        return "metadata"
    if ctype == "image/jpeg" or name.endswith((".jpg", ".jpeg")):
        return "jpeg"
    if ctype == FLOAT64_CONTENT_TYPE:
        return "float64"
    if pcm_format(content_type) is not None:
        return "audio"
    if is_text(ctype) or name.endswith((".txt", ".json")):
        return "text"
    return "binary"


def utc(timestamp: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC)


def day_dir(source: str, channel: str, timestamp: float) -> str:
    """``<source>/<channel>/<YYYY-MM-DD>`` for a frame stamped ``timestamp``."""
    return f"{source}/{channel}/{utc(timestamp):%Y-%m-%d}"


def frame_file(source: str, channel: str, kind: str, seq: int, timestamp: float) -> str:
    """Disc path of a frame stored as its own file (jpeg, binary, metadata)."""
    ext = {"jpeg": "jpg", "binary": "bin", "metadata": "json"}[kind]
    return f"{day_dir(source, channel, timestamp)}/{utc(timestamp):%H%M%S.%f}_s{seq}.{ext}"


def chunk_file(
    source: str, channel: str, kind: str, session: int, first: int, last: int, timestamp: float
) -> str:
    """Disc path of a session's chunk file of one channel and day."""
    stem = channel.rsplit(".", 1)[0] if "." in channel else channel
    ext = "csv" if kind == "float64" else "jsonl"
    return (
        f"{day_dir(source, channel, timestamp)}/{stem}_session{session:04d}_s{first}-{last}.{ext}"
    )


def wav_file(
    source: str, channel: str, session: int, first: int, last: int, timestamp: float
) -> str:
    """Disc path of one continuous run of audio blocks, named by its first sample's time."""
    when = f"{utc(timestamp):%H%M%S.%f}"
    return f"{day_dir(source, channel, timestamp)}/{when}_session{session:04d}_s{first}-{last}.wav"


def audio_runs(
    rows: list[tuple[int, float, bytes]], rate: int, channels: int
) -> list[list[tuple[int, float, bytes]]]:
    """``rows`` (seq, timestamp, block) cut where the audio is not continuous.

    A run ends before a block whose sequence number does not follow, or
    whose timestamp is more than :data:`AUDIO_JOIN_S` away from where the
    previous block's samples end.
    """
    runs: list[list[tuple[int, float, bytes]]] = []
    end = math.nan
    last_seq = -1
    width = 2 * channels
    for row in rows:
        seq, ts, data = row
        if runs and seq == last_seq + 1 and abs(ts - end) <= AUDIO_JOIN_S:
            runs[-1].append(row)
        else:
            runs.append([row])
        end, last_seq = ts + len(data) // width / rate, seq
    return runs


def write_wav(path: Path, blocks: Iterable[bytes], rate: int, channels: int) -> None:
    """A 16-bit PCM WAV file of L16 ``blocks`` (big-endian; WAV is little-endian).

    A block's trailing bytes that make no whole sample frame are left out.
    """
    width = 2 * channels
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        for block in blocks:
            w.writeframesraw(pcm_swap(block[: len(block) // width * width]))


def manifest_path(session: int) -> str:
    return f"sessions/{session:04d}/manifest.json"


def iso_time(timestamp: float) -> str:
    return utc(timestamp).isoformat().replace("+00:00", "Z")


def metadata_document(source: str, seq: int, timestamp: float, data: bytes) -> bytes:
    """A metadata frame as the JSON file on the disc."""
    try:
        body: Any = json.loads(data)
        key = "metadata"
    except ValueError:
        body, key = data.decode("utf-8", "replace"), "text"
    doc = {"source": source, "seq": seq, "timestamp": timestamp, "time_utc": iso_time(timestamp)}
    doc[key] = body
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


CSV_HEADER = b"seq,timestamp,time_utc,sample,value\n"


def csv_rows(seq: int, timestamp: float, data: bytes) -> bytes:
    """One float64 block as CSV rows; a block that is not whole float64s is kept as hex."""
    when = iso_time(timestamp)
    if len(data) % 8:
        return f"{seq},{timestamp!r},{when},raw,{data.hex()}\n".encode()
    values = struct.unpack(f"<{len(data) // 8}d", data)
    return "".join(
        f"{seq},{timestamp!r},{when},{i},{v!r}\n"
        if math.isfinite(v)
        else f"{seq},{timestamp!r},{when},{i},{v}\n"
        for i, v in enumerate(values)
    ).encode()


def jsonl_row(seq: int, timestamp: float, data: bytes) -> bytes:
    """One text frame as a JSON line (``text``, or ``base64`` if not UTF-8)."""
    row: dict[str, Any] = {"seq": seq, "timestamp": timestamp, "time_utc": iso_time(timestamp)}
    try:
        row["text"] = data.decode("utf-8")
    except UnicodeDecodeError:
        import base64

        row["base64"] = base64.b64encode(data).decode()
    return (json.dumps(row, ensure_ascii=False) + "\n").encode()


def estimate_disc_bytes(kind: str, frames: int, data_bytes: int) -> int:
    """A generous guess of the disc space ``frames`` frames of a channel take."""
    if kind in CHUNK_KINDS:
        # text grows ~4x from float64 to CSV; a few chunk files per session;
        # WAV is the PCM as it was plus a header per run
        grow = {"float64": 5, "text": 2, "audio": 1}[kind]
        return data_bytes * grow + frames * 64 + 4 * SECTOR
    # one file each: the data rounded up to sectors, plus directory records
    # (ISO 9660, Rock Ridge and Joliet)
    return data_bytes + frames * (SECTOR + 512)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def walk_files(root: Path) -> Iterator[Path]:
    """Every regular file under ``root``, sorted."""
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield path


def readme_text(component: str, sessions: Iterable[int]) -> str:
    """The README placed at the root of every disc."""
    numbers = sorted(sessions)
    listed = ", ".join(f"{n:04d}" for n in numbers) or "none"
    return f"""Turbine data archive
====================

Written by the turbine archiver {component}.  Sessions on this disc: {listed}.
Every session adds files; the tree you see holds all of them.  Times in file
and directory names are UTC.

What is where
-------------

sessions/NNNN/manifest.json
    One per burn session: the SHA-256 and size of every file the session
    wrote, each channel's sequence numbers and times, and any gaps (frames
    the turbine dropped before they could be archived).  Check a file with
    `sha256sum` against its entry.

SOURCE/CHANNEL/YYYY-MM-DD/
    The frames of one turbine channel, by UTC day of their timestamps:

    HHMMSS.ffffff_sSEQ.jpg     one JPEG image per frame (cameras, thumbnails)
    HHMMSS.ffffff_sSEQ.json    one metadata document per frame (metadata.txt)
    HHMMSS.ffffff_sSEQ.bin     one frame of any other binary data
    NAME_sessionNNNN_sFIRST-LAST.csv
        numeric data (float64 blocks): columns seq, timestamp (seconds since
        1970 UTC, the block's first sample), time_utc, sample (index in the
        block), value.  The sample rate is in the source's metadata.
    NAME_sessionNNNN_sFIRST-LAST.jsonl
        text frames, one JSON object per line: seq, timestamp, time_utc and
        text (or base64 when the frame is not UTF-8).
    HHMMSS.ffffff_sessionNNNN_sFIRST-LAST.wav
        audio (16-bit PCM): a WAV file any PC plays, one per continuous
        recording; its first sample was taken at HHMMSS.ffffff (UTC), and
        the manifest gives each channel's first and last block times.

SEQ is the turbine's sequence number of the frame within its channel; they
run without holes unless the manifest lists a gap.
"""


def manifest_document(
    *,
    component: str,
    session: int,
    created: float,
    through_segment: int,
    files: dict[str, dict[str, Any]],
    channels: dict[str, dict[str, Any]],
    gaps: list[dict[str, Any]],
) -> bytes:
    """The manifest of one session as the bytes written to the disc."""
    doc = {
        "format": MANIFEST_FORMAT,
        "archiver": component,
        "session": session,
        "created": created,
        "created_utc": iso_time(created),
        "through_segment": through_segment,
        "files": files,
        "channels": channels,
        "gaps": gaps,
    }
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


#: How a tree's frames are written (``turbine export --format``): ``csv``, the layout
#: above; ``jsonl``, float64 blocks as JSON lines too; ``raw``, every frame its own
#: file, its bytes as they were (``.jpg`` for JPEGs, ``.bin`` for the rest).
FORMATS = ("csv", "jsonl", "raw")


def values_row(seq: int, timestamp: float, data: bytes) -> bytes:
    """One float64 block as a JSON line of its values (non-finite ones as strings)."""
    if len(data) % 8:
        return jsonl_row(seq, timestamp, data)
    values = [v if math.isfinite(v) else str(v) for v in struct.unpack(f"<{len(data) // 8}d", data)]
    row = {"seq": seq, "timestamp": timestamp, "time_utc": iso_time(timestamp), "values": values}
    return (json.dumps(row) + "\n").encode()


class TreeWriter:
    """Writes frames into the tree above under ``out``: the one writer of the layout,
    for a disc session (``staging.py``) and for ``turbine export``.

    Frames kept as their own files are written as they are added; chunk kinds
    (CSV, JSON lines, WAV) are gathered per channel and day and written by
    :meth:`finish`, which returns every file's SHA-256 and size.
    """

    def __init__(self, out: Path, session: int, form: str = "csv") -> None:
        if form not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {form!r}")
        self.out = out
        self.session = session
        self.form = form
        #: (source, channel, content type, kind, day) -> rows (seq, timestamp, data)
        self._chunks: dict[tuple[str, str, str, str, str], list[tuple[int, float, bytes]]] = {}

    def kind(self, channel: str, content_type: str) -> str:
        """How this writer stores a channel (``raw``: every frame its own file)."""
        kind = channel_kind(channel, content_type)
        if self.form == "raw":
            return "jpeg" if kind == "jpeg" else "binary"
        return kind

    def add(
        self, source: str, channel: str, content_type: str, rows: Iterable[tuple[int, float, bytes]]
    ) -> None:
        """Frames of one channel, in order."""
        kind = self.kind(channel, content_type)
        for seq, ts, data in rows:
            if kind in CHUNK_KINDS:
                key = (source, channel, content_type, kind, f"{utc(ts):%Y-%m-%d}")
                self._chunks.setdefault(key, []).append((seq, ts, data))
                continue
            if kind == "metadata":
                data = metadata_document(source, seq, ts, data)
            target = self.out / frame_file(source, channel, kind, seq, ts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            os.utime(target, (ts, ts))  # a file's time is its frame's

    def finish(self) -> dict[str, dict[str, Any]]:
        """Write the chunk files; return ``{path: {"sha256", "size"}}`` of every file."""
        for (source, channel, ctype, kind, _day), rows in self._chunks.items():
            if kind == "audio":
                self._write_wavs(source, channel, ctype, rows)
                continue
            first, last = rows[0][0], rows[-1][0]
            name = chunk_file(source, channel, kind, self.session, first, last, rows[0][1])
            if kind == "float64" and self.form == "jsonl":
                name = name[: -len(".csv")] + ".jsonl"
            target = self.out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as f:
                if kind == "float64" and self.form == "csv":
                    f.write(CSV_HEADER)
                    for row in rows:
                        f.write(csv_rows(*row))
                else:
                    encode = values_row if kind == "float64" else jsonl_row
                    for row in rows:
                        f.write(encode(*row))
            os.utime(target, (rows[-1][1], rows[-1][1]))  # its newest frame's time
        self._chunks.clear()
        return {
            p.relative_to(self.out).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
            for p in walk_files(self.out)
        }

    def _write_wavs(
        self, source: str, channel: str, content_type: str, rows: list[tuple[int, float, bytes]]
    ) -> None:
        """One WAV file per continuous run of a channel's audio blocks in ``rows``."""
        fmt = pcm_format(content_type)
        assert fmt is not None  # the channel's kind is "audio" because it parsed
        rate, channels = fmt
        for run in audio_runs(rows, rate, channels):
            (first, start, _), (last, end, _) = run[0], run[-1]
            target = self.out / wav_file(source, channel, self.session, first, last, start)
            target.parent.mkdir(parents=True, exist_ok=True)
            write_wav(target, (data for _, _, data in run), rate, channels)
            os.utime(target, (end, end))  # its newest block's time, as other chunk files
