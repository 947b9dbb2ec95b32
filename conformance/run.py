#!/usr/bin/env python3
"""Play the Turbine conformance transcripts against a live broker.

Usage::

    python conformance/run.py HOST:PORT [TRANSCRIPT.json ...] [-v] [--codec COMMAND]

Without transcript files it plays every ``conformance/transcripts/*.json``.
It needs only the Python standard library and ``msgpack``; it speaks the
protocol over a raw TCP socket, as ``docs/protocol.rst`` describes it, and
does not use the turbine package.  The transcript format is described in
``conformance/README.rst``.  Exit status: 0 when every transcript passed, 1
otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import shlex
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack

PREFIX = struct.Struct(">II")
#: The document's limits on every message the broker sends.
MAX_HEADER = 4 * 2**20
PAYLOAD_SLACK = 2**20  # a message payload may exceed max_frame by this much
TIMEOUT = 10.0
HERE = Path(__file__).resolve().parent
GROUP_FIELDS = 7


class Failure(Exception):
    """The broker did not do what the transcript says."""


class Closed(Exception):
    """The broker closed the connection (in order: end of stream)."""


# --- values ---------------------------------------------------------------------


class Codec:
    """Headers to and from MessagePack, with the msgpack package."""

    def pack(self, value: Any) -> bytes:
        return msgpack.packb(value, use_bin_type=True)

    def unpack(self, data: bytes) -> Any:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)

    def close(self) -> None:
        pass


class ExternalCodec(Codec):
    """Headers packed and unpacked by another program: a client's own MessagePack code.

    It reads one JSON request per line on stdin and answers one JSON line on
    stdout: ``{"pack": VALUE}`` -> ``{"hex": "..."}``, ``{"unpack": "HEX"}`` ->
    ``{"value": VALUE}``, or ``{"error": "..."}``; VALUE is tagged JSON (see
    README: ``$float``, ``$bin``, ``$ext``).
    """

    def __init__(self, command: str) -> None:
        self.proc = subprocess.Popen(
            shlex.split(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise Failure("the codec program ended")
        answer = json.loads(line)
        if "error" in answer:
            raise Failure(f"the codec refused: {answer['error']}")
        return answer

    def pack(self, value: Any) -> bytes:
        return bytes.fromhex(self._ask({"pack": tag(value)})["hex"])

    def unpack(self, data: bytes) -> Any:
        return untag(self._ask({"unpack": data.hex()})["value"])

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=TIMEOUT)


def tag(value: Any) -> Any:
    """A wire value as tagged JSON (floats, bin and extension types marked)."""
    if isinstance(value, float):
        return {"$float": value}
    if isinstance(value, bytes):
        return {"$bin": value.hex()}
    if isinstance(value, msgpack.ExtType):
        return {"$ext": [value.code, value.data.hex()]}
    if isinstance(value, list):
        return [tag(x) for x in value]
    if isinstance(value, dict):
        return {k: tag(x) for k, x in value.items()}
    return value


def untag(value: Any) -> Any:
    """The wire value tagged JSON stands for (the inverse of :func:`tag`)."""
    if isinstance(value, list):
        return [untag(x) for x in value]
    if isinstance(value, dict):
        if value.keys() == {"$float"}:
            return float(value["$float"])
        if value.keys() == {"$bin"}:
            return bytes.fromhex(value["$bin"])
        if value.keys() == {"$ext"}:
            code, data = value["$ext"]
            return ("ext", code, bytes.fromhex(data))
        return {k: untag(x) for k, x in value.items()}
    return value


class Context:
    """What one transcript run knows: its unique token, captured values, max_frame."""

    def __init__(self, codec: Codec) -> None:
        self.run = secrets.token_hex(4)
        self.vars: dict[str, Any] = {}
        self.max_frame: int | None = None
        self.codec = codec

    def text(self, s: str) -> str:
        return s.replace("{run}", self.run)

    def build(self, v: Any) -> Any:
        """A transcript value as the wire value to pack (see README: tagged values)."""
        if isinstance(v, str):
            return self.text(v)
        if isinstance(v, list):
            return [self.build(x) for x in v]
        if isinstance(v, dict):
            if "$float" in v:
                return float(v["$float"])
            if "$bin" in v:
                return bytes.fromhex(v["$bin"])
            if "$ext" in v:
                code, data = v["$ext"]
                return msgpack.ExtType(code, bytes.fromhex(data))
            if "$var" in v:
                return self.vars[v["$var"]]
            if "$repeat" in v:
                value, n = v["$repeat"]
                return [self.build(value)] * n
            if "$text" in v:
                text, n = v["$text"]
                return self.text(text) * n
            if "$concat" in v:
                return "".join(self.build(part) for part in v["$concat"])
            return {self.text(k): self.build(x) for k, x in v.items()}
        return v


_TYPES = {
    "int": lambda x: isinstance(x, int) and not isinstance(x, bool),
    "float": lambda x: isinstance(x, float),
    "number": lambda x: isinstance(x, int | float) and not isinstance(x, bool),
    "str": lambda x: isinstance(x, str),
    "bool": lambda x: isinstance(x, bool),
    "nil": lambda x: x is None,
    "map": lambda x: isinstance(x, dict),
    "array": lambda x: isinstance(x, list),
    "any": lambda x: True,
}


def match(ctx: Context, want: Any, got: Any, where: str = "") -> None:
    """Raise :class:`Failure` unless ``got`` has the shape ``want`` (see README: shapes)."""
    here = where or "message"
    if isinstance(want, dict) and any(k.startswith("$") for k in want):
        if "$type" in want:
            kinds = want["$type"] if isinstance(want["$type"], list) else [want["$type"]]
            if not any(_TYPES[k](got) for k in kinds):
                raise Failure(f"{here}: want {'/'.join(kinds)}, got {got!r}")
        if "$match" in want:
            if not isinstance(got, str) or not re.search(ctx.text(want["$match"]), got):
                raise Failure(f"{here}: want text matching {want['$match']!r}, got {got!r}")
        if "$float" in want and (not isinstance(got, float) or got != want["$float"]):
            raise Failure(f"{here}: want the float {float(want['$float'])!r}, got {got!r}")
        if "$contains" in want:
            if not isinstance(got, str) or ctx.text(want["$contains"]) not in got:
                raise Failure(f"{here}: want text containing {want['$contains']!r}, got {got!r}")
        if "$var" in want and got != ctx.vars[want["$var"]]:
            raise Failure(f"{here}: want {ctx.vars[want['$var']]!r}, got {got!r}")
        if "$len" in want and (not isinstance(got, list | dict) or len(got) != want["$len"]):
            raise Failure(f"{here}: want {want['$len']} elements, got {got!r}")
        if "$min" in want and (not _TYPES["number"](got) or got < want["$min"]):
            raise Failure(f"{here}: want a number >= {want['$min']}, got {got!r}")
        if "$exact" in want:
            match(ctx, want["$exact"], got, where)
            if set(got) != {ctx.text(k) for k in want["$exact"]}:
                raise Failure(
                    f"{here}: want exactly the keys {sorted(want['$exact'])}, got {got!r}"
                )
        if "$capture" in want:
            ctx.vars[want["$capture"]] = got
        return
    if isinstance(want, dict):
        if not isinstance(got, dict):
            raise Failure(f"{here}: want a map, got {got!r}")
        for key, w in want.items():
            key = ctx.text(key)
            if isinstance(w, dict) and w.get("$absent"):
                if key in got:
                    raise Failure(f"{here}: want no {key!r}, got {got[key]!r}")
                continue
            if key not in got:
                raise Failure(f"{here}: want key {key!r}, got {got!r}")
            match(ctx, w, got[key], f"{where}.{key}" if where else key)
        return
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            raise Failure(f"{here}: want {len(want)} elements, got {got!r}")
        for i, (w, g) in enumerate(zip(want, got, strict=True)):
            match(ctx, w, g, f"{here}[{i}]")
        return
    if isinstance(want, str):
        want = ctx.text(want)
    same_kind = type(want) is type(got) or (want is None and got is None)
    if not same_kind or want != got:
        raise Failure(f"{here}: want {want!r}, got {got!r}")


# --- the wire -------------------------------------------------------------------


class Peer:
    """One raw TCP connection to the broker."""

    def __init__(self, address: tuple[str, int], ctx: Context) -> None:
        self.ctx = ctx
        self.sock = socket.create_connection(address, timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, n: int) -> None:
        while len(self.buf) < n:
            try:
                chunk = self.sock.recv(max(n - len(self.buf), 1 << 16))
            except ConnectionResetError:
                raise Failure(
                    "the broker reset the connection (ECONNRESET): its last message may be lost"
                ) from None
            except TimeoutError:
                raise Failure(f"nothing from the broker within {TIMEOUT:g} s") from None
            if not chunk:
                if self.buf:
                    raise Failure(
                        f"the broker closed in the middle of a message "
                        f"({len(self.buf)} bytes of it arrived)"
                    )
                raise Closed
            self.buf += chunk

    def receive(self) -> tuple[dict[str, Any], bytes]:
        """One whole message, checked against the document's framing rules."""
        self._fill(PREFIX.size)
        hlen, plen = PREFIX.unpack_from(self.buf)
        if not 1 <= hlen <= MAX_HEADER:
            raise Failure(f"the broker sent a header of {hlen} bytes (allowed: 1 .. {MAX_HEADER})")
        if self.ctx.max_frame is not None and plen > self.ctx.max_frame + PAYLOAD_SLACK:
            raise Failure(
                f"the broker sent a payload of {plen} bytes, over max_frame + 1 MiB "
                f"({self.ctx.max_frame + PAYLOAD_SLACK})"
            )
        self._fill(PREFIX.size + hlen + plen)
        raw = bytes(self.buf[PREFIX.size : PREFIX.size + hlen])
        payload = bytes(self.buf[PREFIX.size + hlen : PREFIX.size + hlen + plen])
        del self.buf[: PREFIX.size + hlen + plen]
        try:
            header = self.ctx.codec.unpack(raw)
        except Failure:
            raise
        except Exception as exc:
            raise Failure(f"the broker sent a header that is not msgpack: {exc}") from None
        if not isinstance(header, dict) or not isinstance(header.get("type"), str):
            raise Failure(f"the broker sent a header that is not a map with a 'type': {header!r}")
        if plen and header["type"] != "frames":
            raise Failure(f"the broker sent a payload with a {header['type']!r} message")
        if header["type"] == "frames":
            check_frames(header, payload)
        return header, payload


def check_frames(header: dict[str, Any], payload: bytes) -> None:
    """The groups of a ``frames`` message are well formed and slice its payload exactly."""
    if ("sub" in header) == ("id" in header):
        raise Failure(f"a frames message must carry exactly one of sub and id: {header!r}")
    total = 0
    for g in header.get("groups", None) or []:
        if not isinstance(g, list) or len(g) != GROUP_FIELDS:
            raise Failure(f"a frame group must be a list of {GROUP_FIELDS} fields: {g!r}")
        _, _, _, seq, ts, sizes, _ = g
        if len(ts) != len(sizes) or not isinstance(seq, int) or seq < 1:
            raise Failure(f"a malformed frame group: {g!r}")
        total += sum(sizes)
    if total != len(payload):
        raise Failure(f"frame groups list {total} bytes but the payload holds {len(payload)}")


def frame(ctx: Context, step: dict[str, Any]) -> bytes:
    """The bytes a ``send`` step puts on the wire."""
    if "header_hex" in step:  # exact bytes, for what a packer cannot be made to write
        header = bytes.fromhex(step["header_hex"])
    else:
        header = ctx.codec.pack(ctx.build(step["send"]))
    text = "".join(ctx.build(part) for part in step.get("payload_text", []))
    payload = (
        bytes.fromhex(step.get("payload_hex", ""))
        + text.encode()
        + bytes(step.get("payload_zeros", 0))
    )
    hlen = step.get("header_length", len(header))
    plen = step.get("payload_length", len(payload))
    return PREFIX.pack(hlen, plen) + header + payload


# --- playing a transcript -------------------------------------------------------


def play(address: tuple[str, int], path: Path, verbose: bool, codec: Codec) -> int:
    """Play one transcript; return its step count.  Raises Failure."""
    doc = json.loads(path.read_text())
    ctx = Context(codec)
    peers: dict[str, Peer] = {}
    try:
        for i, step in enumerate(doc["steps"], 1):
            if verbose:
                print(f"  {i}: {json.dumps(step)[:150]}")
            try:
                run_step(address, ctx, peers, step)
            except Failure as exc:
                note = f" ({step['note']})" if "note" in step else ""
                raise Failure(f"step {i}{note}: {exc}") from None
        return len(doc["steps"])
    finally:
        for peer in peers.values():
            peer.sock.close()


def run_step(
    address: tuple[str, int], ctx: Context, peers: dict[str, Peer], step: dict[str, Any]
) -> None:
    conn = step.get("conn", "a")
    if "connect" in step:
        conn = step["connect"]
        peer = peers[conn] = Peer(address, ctx)
        if step.get("handshake", True):
            header, _ = peer.receive()
            match(ctx, HELLO, header, "hello")
            ctx.max_frame = header["max_frame"]
            hello = {"type": "client_hello", "protocol": 1, "name": step.get("name", "conform")}
            if "token" in step:
                hello["token"] = step["token"]
            peer.send(frame(ctx, {"send": hello}))
        return
    peer = peers[conn]
    if "send" in step:
        peer.send(frame(ctx, step))
    elif "send_hex" in step:
        peer.send(bytes.fromhex(step["send_hex"]))
    elif "expect" in step:
        header, payload = receive(peer)
        match(ctx, step["expect"], header)
        if "hello" == header["type"] and "max_frame" in header:
            ctx.max_frame = header["max_frame"]
        if "payload_hex" in step and payload.hex() != step["payload_hex"]:
            raise Failure(f"want payload {step['payload_hex']}, got {payload.hex()}")
    elif "expect_any_order" in step:
        wants = list(step["expect_any_order"])
        while wants:
            header, _ = receive(peer)
            for w in wants:
                try:
                    match(ctx, w, header)
                except Failure:
                    continue
                wants.remove(w)
                break
            else:
                raise Failure(f"{header!r} matches none of {wants!r}")
    elif "expect_reply_parts" in step:
        expect_parts(ctx, peer, step)
    elif "expect_close" in step:
        try:
            header, _ = peer.receive()
        except Closed:
            return
        raise Failure(f"want the broker to close the connection, got {header!r}")
    elif "close" in step:
        peers.pop(step["close"]).sock.close()
    elif "half_close" in step:
        peers[step["half_close"]].sock.shutdown(socket.SHUT_WR)
    else:
        raise Failure(f"unknown step {step!r}")


def receive(peer: Peer) -> tuple[dict[str, Any], bytes]:
    try:
        return peer.receive()
    except Closed:
        raise Failure("the broker closed the connection") from None


def expect_parts(ctx: Context, peer: Peer, step: dict[str, Any]) -> None:
    """A reply that may come in parts: every part but the last has ``more: true``."""
    want = step["expect_reply_parts"]
    parts = frames = 0
    seqs: dict[tuple[str, str], int] = {}
    while True:
        header, _ = receive(peer)
        match(ctx, want, header)
        parts += 1
        for source, channel, _, seq, ts, _, _ in header.get("groups", []):
            last = seqs.get((source, channel))
            if last is not None and seq != last + 1:
                raise Failure(f"part {parts}: {source}/{channel} goes from seq {last} to {seq}")
            seqs[source, channel] = seq + len(ts) - 1
            frames += len(ts)
        more = header.get("more", False)
        if more is not True and more is not False:
            raise Failure(f"'more' must be a boolean, got {more!r}")
        if not more:
            break
    if "frames" in step and frames != step["frames"]:
        raise Failure(f"want {step['frames']} frames in all, got {frames} in {parts} parts")
    if parts < step.get("min_parts", 1):
        raise Failure(f"want at least {step['min_parts']} parts, got {parts}")


HELLO = {
    "type": "hello",
    "protocol": 1,
    "software": {"$type": "str"},
    "max_frame": {"$type": "int"},
    "time": {"$type": "number"},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("address", help="the broker's HOST:PORT")
    parser.add_argument("transcripts", nargs="*", type=Path, help="default: all of them")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every step")
    parser.add_argument(
        "--codec",
        metavar="COMMAND",
        help="pack and unpack headers with this program (your client's MessagePack code; "
        "see conformance/README.rst) instead of the msgpack package",
    )
    args = parser.parse_args(argv)
    codec = ExternalCodec(args.codec) if args.codec else Codec()
    host, _, port = args.address.rpartition(":")
    address = (host.strip("[]"), int(port))
    paths = args.transcripts or sorted((HERE / "transcripts").glob("*.json"))
    failed = steps = 0
    began = time.monotonic()
    for path in paths:
        t0 = time.monotonic()
        try:
            n = play(address, path, args.verbose, codec)
        except (Failure, OSError, ValueError, KeyError) as exc:
            failed += 1
            print(f"FAIL {path.stem}: {exc}")
            continue
        steps += n
        print(f"ok   {path.stem} ({n} steps, {time.monotonic() - t0:.2f} s)")
    took = time.monotonic() - began
    codec.close()
    print(f"{len(paths) - failed} of {len(paths)} transcripts passed, {steps} steps, {took:.2f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
