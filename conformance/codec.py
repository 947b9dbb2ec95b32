#!/usr/bin/env python3
"""A reference codec for ``run.py --codec``: MessagePack by the msgpack package.

A client author writes the same loop around their own MessagePack code (one
JSON request per line on stdin, one JSON answer per line on stdout; see
``conformance/README.rst``) and runs ``run.py HOST:PORT --codec "their
program"``: the transcripts are then packed and unpacked the way their
client does it.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import msgpack


def tag(value: Any) -> Any:
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
    if isinstance(value, list):
        return [untag(x) for x in value]
    if isinstance(value, dict):
        if value.keys() == {"$float"}:
            return float(value["$float"])
        if value.keys() == {"$bin"}:
            return bytes.fromhex(value["$bin"])
        if value.keys() == {"$ext"}:
            code, data = value["$ext"]
            return msgpack.ExtType(code, bytes.fromhex(data))
        return {k: untag(x) for k, x in value.items()}
    return value


def answer(request: dict[str, Any]) -> dict[str, Any]:
    try:
        if "pack" in request:
            return {"hex": msgpack.packb(untag(request["pack"]), use_bin_type=True).hex()}
        value = msgpack.unpackb(bytes.fromhex(request["unpack"]), raw=False)
        return {"value": tag(value)}
    except Exception as exc:  # the runner reports it as this codec's refusal
        return {"error": f"{type(exc).__name__}: {exc}"}


def main() -> None:
    for line in sys.stdin:
        print(json.dumps(answer(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
