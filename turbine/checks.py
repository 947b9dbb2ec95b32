"""What a message may hold: each field's type and each string's length.

A message's header fields are checked against its class in
:mod:`turbine.messages` (the table a peer's message is checked against) by
:func:`check`, on both sides of :class:`turbine.protocol.Connection`: a
peer's message that does not fit is a RemoteProtocolError, one of ours a
LocalProtocolError (the caller passes which).
"""

from __future__ import annotations

from typing import Any

import msgpack

from ._constants import (
    MAX_AUTH_TOKEN_CHARS,
    MAX_CHANNELS_PER_SOURCE,
    MAX_CLIENT_NAME_CHARS,
    MAX_CONTENT_TYPE_CHARS,
    MAX_ERROR_MESSAGE_CHARS,
    MAX_NAME_CHARS,
    MAX_PATTERN_CHARS,
    MAX_SOFTWARE_CHARS,
    MAX_TOKEN_CHARS,
)
from .messages import SPECS, Spec

#: The longest each string field may be, in characters (docs/protocol.rst, "Limits").
#: Every str field of every message has one (tests/test_protocol.py checks that);
#: a longer string breaks the protocol.
STRING_LIMITS: dict[str, int] = {
    "software": MAX_SOFTWARE_CHARS,
    "name": MAX_CLIENT_NAME_CHARS,
    "source": MAX_NAME_CHARS,
    "channel": MAX_NAME_CHARS,
    "content_type": MAX_CONTENT_TYPE_CHARS,
    "producer": MAX_TOKEN_CHARS,
    "pattern": MAX_PATTERN_CHARS,
    "start": MAX_TOKEN_CHARS,
    "code": MAX_TOKEN_CHARS,
    "message": MAX_ERROR_MESSAGE_CHARS,
    "token": MAX_AUTH_TOKEN_CHARS,
    "action": MAX_TOKEN_CHARS,
    "user": MAX_CLIENT_NAME_CHARS,
    "right": MAX_TOKEN_CHARS,
    "origin": MAX_NAME_CHARS,
    "target": MAX_NAME_CHARS,
    "prefix": MAX_NAME_CHARS,
}


def short(value: Any, limit: int = 40) -> str:
    """``repr(value)``, cut to about ``limit`` characters: for echoing a peer's value."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


#: Per message type, what :func:`_check` walks: ``(name, types, exact)`` for required and
#: optional fields (``exact``: the value types that pass without a closer look, so most
#: fields cost one set lookup), and the string limits of the type's own fields.
_Fields = tuple[tuple[str, Any, frozenset[type]], ...]
_Plan = tuple[Spec, str, _Fields, _Fields, tuple[tuple[str, int], ...]]


def _plan(spec: Spec) -> _Plan:
    def fields(table: dict[str, Any]) -> _Fields:
        exact: dict[Any, frozenset[type]] = {object: frozenset()}  # Any: no extension type
        return tuple((n, t, exact.get(t, frozenset(_as_tuple(t)))) for n, t in table.items())

    optional = tuple(f for f in fields(spec.optional) if f[1] is not object)
    limits = tuple((n, limit) for n, limit in STRING_LIMITS.items() if n in spec.names)
    return spec, spec.sender, fields(spec.required), optional, limits


def check(kind: str, fields: dict[str, Any], sender: str, error: type[Exception]) -> Spec:
    """Check a message's header fields against its class; return its spec (for building it)."""
    plan = _PLANS.get(kind)
    if plan is None:
        if kind not in SPECS:
            raise error(
                f"unknown message type {short(kind)}; known types: {', '.join(sorted(SPECS))}"
            )
        plan = _PLANS[kind] = _plan(SPECS[kind])
    spec, role, required, optional, limits = plan
    if role is not sender:
        raise error(f"a {sender} may not send {kind!r} messages")
    for name, types, exact in required:
        if name not in fields:
            raise error(f"{kind!r} message lacks its {name!r} field")
        value = fields[name]
        if type(value) not in exact:
            _check_type(kind, name, value, types, error)
    for name, types, exact in optional:
        if name in fields:
            value = fields[name]
            if value is not None and type(value) not in exact:  # nil is as good as absent
                _check_type(kind, name, value, types, error)
    if not fields.keys() <= spec.names:
        # Unknown keys are ignored, but, like every header value, hold no
        # extension type (the decoder refuses all but the timestamp type),
        # and keep the length limits of their names.
        for name in fields.keys() - spec.names:
            if _holds_timestamp(fields[name]):
                raise error(f"{kind!r} field {name!r} holds a msgpack extension type")
        limits = tuple(STRING_LIMITS.items())
    for name, limit in limits:
        if name in fields and type(value := fields[name]) is str and len(value) > limit:
            raise error(
                f"{kind!r} field {name!r} has {len(value)} characters; the limit is {limit}"
            )
    if kind == "open_source" and isinstance(channels := fields.get("channels"), dict):
        _check_channels(channels, error)
    return spec


def _check_channels(channels: dict[Any, Any], error: type[Exception]) -> None:
    """``open_source``'s channel map: names to content types, within the limits."""
    if len(channels) > MAX_CHANNELS_PER_SOURCE:
        raise error(
            f"'open_source' lists {len(channels)} channels; the limit is {MAX_CHANNELS_PER_SOURCE}"
        )
    for name, ctype in channels.items():  # entries of other types are the broker's to refuse
        if (isinstance(name, str) and len(name) > MAX_NAME_CHARS) or (
            isinstance(ctype, str) and len(ctype) > MAX_CONTENT_TYPE_CHARS
        ):
            raise error(
                f"'open_source' channel {short(name)} or its content type is too long "
                f"(limits: {MAX_NAME_CHARS} and {MAX_CONTENT_TYPE_CHARS} characters)"
            )


def _holds_timestamp(value: Any) -> bool:
    """Whether ``value`` holds a msgpack timestamp anywhere (without recursion:
    a peer may nest as deep as msgpack allows)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, msgpack.Timestamp):
            return True
        if isinstance(item, list):
            stack += item
        elif isinstance(item, dict):
            stack += item.values()
    return False


def _check_type(kind: str, name: str, value: Any, types: Any, error: type[Exception]) -> None:
    if isinstance(value, bool) and types is not bool and int in _as_tuple(types):
        want = "a number" if float in _as_tuple(types) else "an integer"
        raise error(f"{kind!r} field {name!r} must be {want}, not a boolean")
    if isinstance(value, msgpack.Timestamp):
        raise error(f"{kind!r} field {name!r} holds a msgpack extension type")
    if not isinstance(value, types):
        want = types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
        raise error(f"{kind!r} field {name!r} must be {want}, not {type(value).__name__}")


def _as_tuple(types: Any) -> tuple[Any, ...]:
    return types if isinstance(types, tuple) else (types,)


#: Each message type's plan, made when its first message is checked: a process
#: meets a few of the types (a client about ten), and planning all of them was
#: a tenth of a millisecond of every ``import turbine``.
_PLANS: dict[str, _Plan] = {}
