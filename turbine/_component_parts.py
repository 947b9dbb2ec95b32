"""Pieces of the component pattern that need no component: command handlers
(marking, finding, calling with converted arguments) and the small endpoints."""

from __future__ import annotations

import functools
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs
import trio

from ._blocking import run_blocking
from ._component_log import LOG_CHANNEL
from ._constants import (
    COMMAND_ARCHIVE_BYTES,
    COMMAND_CACHE_BYTES,
    COMMAND_CACHE_FRAMES,
    LOG_ARCHIVE_BYTES,
    LOG_CACHE_BYTES,
    LOG_CACHE_FRAMES,
)
from ._errors import TurbineError
from ._files import write_atomically
from ._retry import Backoff
from .client import Client, Frame, Source
from .command import COMMAND_CHANNEL, Command, Reply
from .settings import ConfigError, convert

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
Handler = Callable[..., Awaitable[Any]]

#: Annotations a command argument is converted to (by name: annotations may be strings).
_ARGUMENT_TYPES: dict[str, type] = {"int": int, "float": float, "bool": bool, "str": str}


def command(verb: str, *, help: str | None = None) -> Callable[[F], F]:  # noqa: A002
    """Mark a method as the handler of ``verb``.

    Positional command arguments are converted to the parameters' annotated
    types (``int``, ``float``, ``bool``, ``str``).  The return value is the
    reply's result; an exception becomes an error reply with its message.
    """

    def mark(fn: F) -> F:
        fn.__turbine_command__ = verb  # type: ignore[attr-defined]
        fn.__turbine_help__ = help or (inspect.getdoc(fn) or "").split("\n")[0]  # type: ignore[attr-defined]
        return fn

    return mark


def find_commands(obj: object) -> dict[str, Handler]:
    """The bound handlers of ``obj`` by verb (a subclass's handler replaces its base's)."""
    found: dict[str, Handler] = {}
    for klass in reversed(type(obj).__mro__):
        for attr in vars(klass).values():
            verb = getattr(attr, "__turbine_command__", None)
            if verb:
                found[verb] = getattr(obj, attr.__name__)
    return found


def usage(verb: str, fn: Handler) -> str:
    """``verb ARG [OPTIONAL]: help`` for ``help`` replies and argument errors.

    A help text that starts with the usage itself (``"set-step STEP: ..."`` or
    ``"STEP: ..."``) is not repeated after it.
    """
    params = signature(fn).parameters.values()
    sig = " ".join(
        p.name.upper() if p.default is p.empty else f"[{p.name.upper()}]" for p in params
    )
    head = f"{verb} {sig}".strip()
    text: str = fn.__turbine_help__  # type: ignore[attr-defined]
    for already in (head, sig):
        if already and (text == already or text.startswith(f"{already}:")):
            text = text[len(already) :].lstrip(": ")
            break
    return f"{head}: {text}" if text else head


def signature(fn: Handler) -> inspect.Signature:
    """``inspect.signature(fn)``; of a method, made once per method, not per command
    (9 us a call against 0.1 us, on a quiet core)."""
    method = getattr(fn, "__func__", None)
    return inspect.signature(fn) if method is None else _without_self(method)


@functools.cache
def _without_self(method: Callable[..., Any]) -> inspect.Signature:
    sig = inspect.signature(method)
    return sig.replace(parameters=list(sig.parameters.values())[1:])


async def call_handler(cmd: Command, fn: Handler) -> tuple[str, Any, str | None]:
    """Call ``fn`` with the command's arguments, converted; return ``(status, result, error)``.

    A wrong number of arguments, an argument that does not convert, or a
    ``TurbineError``, ``ValueError``, ``KeyError`` or ``TypeError`` from the
    handler is an ``error``; anything else propagates (a bug).
    """
    params = parameters(fn)
    try:
        arguments = params.bind(cmd.args, cmd.kwargs)
    except TypeError as exc:
        return (
            "error",
            None,
            f"bad arguments for {cmd.verb!r} ({exc}); usage: {usage(cmd.verb, fn)}",
        )
    try:
        for pname, like in params.types:
            if pname in arguments:
                arguments[pname] = convert(arguments[pname], like, f"argument {pname!r}")
        if params.by_keyword:
            result = await fn(**arguments)
        else:
            bound = inspect.BoundArguments(params.signature, arguments)  # type: ignore[arg-type]
            result = await fn(*bound.args, **bound.kwargs)
    except (TurbineError, ValueError, KeyError, TypeError) as exc:
        return "error", None, str(exc) or type(exc).__name__
    return "ok", result, None


class Parameters:
    """A handler's parameters, worked out once: how a command's arguments bind to
    them, and the type each is converted to (``int``, ``float``, ``bool``, ``str``).

    ``inspect``'s ``Signature.bind`` and ``BoundArguments`` cost 12.5 us a
    command (loaded core); a handler whose parameters all may be given by
    keyword (every handler here) is bound without them, in about 2 us.
    """

    __slots__ = ("by_keyword", "names", "positional", "required", "signature", "types")

    def __init__(self, sig: inspect.Signature) -> None:
        params = sig.parameters.values()
        self.signature = sig
        self.types = tuple(
            (p.name, like)
            for p in params
            if (like := _ARGUMENT_TYPES.get(_type_name(p.annotation))) is not None
        )
        keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        self.by_keyword = all(p.kind in keyword for p in params)
        self.positional = tuple(
            p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        )
        self.names = frozenset(sig.parameters)
        self.required = frozenset(p.name for p in params if p.default is p.empty)

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The arguments by parameter name (what ``Signature.bind`` gives as ``arguments``).

        Raises:
            TypeError: they do not fit the parameters (``Signature.bind``'s message).
        """
        if self.by_keyword and len(args) <= len(self.positional):
            arguments = dict(zip(self.positional, args, strict=False))
            if self.names.issuperset(kwargs) and arguments.keys().isdisjoint(kwargs):
                arguments |= kwargs
                if arguments.keys() >= self.required:
                    return arguments
        return dict(self.signature.bind(*args, **kwargs).arguments)  # (says what does not fit)


def parameters(fn: Handler) -> Parameters:
    """The :class:`Parameters` of handler ``fn``; of a method, made once per method."""
    method = getattr(fn, "__func__", None)
    return Parameters(inspect.signature(fn)) if method is None else _method_parameters(method)


@functools.cache
def _method_parameters(method: Callable[..., Any]) -> Parameters:
    return Parameters(_without_self(method))


def _type_name(annotation: Any) -> str:
    """An annotation's type name (annotations may be strings)."""
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")


async def resume_point(tb: Client, replies: str) -> str | int:
    """Where the command loop starts reading the sink: after the last command answered.

    Found in the newest reply on ``replies``, so that commands sent while the
    component was away are answered, none twice.
    """
    for frame in await tb.fetch(f"{replies}/{COMMAND_CHANNEL}", newest=1):
        try:
            seq = Reply.from_json(frame.data).sink_seq
        except ValueError:
            seq = None
        if seq:
            return seq + 1
    return "oldest"


async def open_small_endpoints(tb: Client, endpoints: Mapping[str, str]) -> tuple[Source, Source]:
    """Open a component's log source, command sink and command source; return (log, replies).

    They carry little: small rings and archives, so that a site's many
    components do not reserve the broker's memory or disk for nothing.

    Raises:
        RequestFailed: the broker refused one (held by another client, no memory).
    """
    log_source = await tb.open_source(
        endpoints["log"],
        channels={LOG_CHANNEL: "application/json"},
        cache_frames=LOG_CACHE_FRAMES,
        cache_bytes=LOG_CACHE_BYTES,
        archive_bytes=LOG_ARCHIVE_BYTES,
    )
    await tb.open_source(
        endpoints["sink"],
        channels={COMMAND_CHANNEL: "application/json"},
        shared=True,
        cache_frames=COMMAND_CACHE_FRAMES,
        cache_bytes=COMMAND_CACHE_BYTES,
        archive_bytes=COMMAND_ARCHIVE_BYTES,
    )
    replies = await tb.open_source(
        endpoints["replies"],
        channels={COMMAND_CHANNEL: "application/json"},
        cache_frames=COMMAND_CACHE_FRAMES,
        cache_bytes=COMMAND_CACHE_BYTES,
        archive_bytes=COMMAND_ARCHIVE_BYTES,
    )
    return log_source, replies


@attrs.define
class Patience:
    """Waiting out a broker that is away or refuses: capped backoff, told once per reason.

    ``reason`` (None while all is well) is what ``status`` shows as ``waiting_for``.
    """

    log: logging.Logger
    backoff: Backoff
    reason: str | None = None
    kind: str | None = None

    async def wait(self, kind: str, reason: str) -> None:
        """Sleep before the next try; log ``reason`` as a warning when ``kind`` changed."""
        wait = self.backoff.next_delay()
        self.reason = reason
        if kind != self.kind:
            self.log.warning(
                "%s; trying again in %.1f s (backing off up to %g s)",
                reason,
                wait,
                self.backoff.most,
            )
            self.kind = kind
        else:
            self.log.debug("%s; trying again in %.1f s", reason, wait)
        await trio.sleep(wait)

    def ended(self) -> None:
        """Everything opened: the next trouble starts the backoff over, and is told."""
        self.backoff.reset()
        self.reason = self.kind = None


@attrs.define
class CommandDesk:
    """A component's command endpoints at work: reads its sink, answers on its source, in order."""

    log: logging.Logger
    execute: Callable[[Command], Awaitable[tuple[str, Any, str | None]]]
    #: Called with each command and its reply once the reply is queued, before it
    #: is flushed: what it puts goes out with the reply, after it.
    replied: Callable[[Command, Reply], Awaitable[None]] | None = None
    #: The level each command answered is logged at.
    log_level: int = logging.INFO
    #: The command source (None while disconnected).
    replies: Source | None = None
    #: Sink sequence number of the last command answered.
    answered_seq: int | None = None

    async def serve(self, tb: Client, endpoints: Mapping[str, str]) -> None:
        """Answer every command on the sink from where the last answer left off, forever."""
        start = await resume_point(tb, endpoints["replies"])
        async with tb.subscribe(f"{endpoints['sink']}/{COMMAND_CHANNEL}", start=start) as sub:
            async for item in sub:
                if not isinstance(item, Frame):
                    self.log.warning(
                        "missed %d commands (evicted before they were read)", item.missed
                    )
                    continue
                await self.answer(item)

    async def answer(self, frame: Frame) -> None:
        try:
            cmd = Command.from_json(frame.data)
        except ValueError as exc:
            reply = Reply("", "", "error", None, f"not a command: {exc}", frame.seq)
            await self._send(reply)
        else:
            if self.log.isEnabledFor(self.log_level):  # (the join is made only to be logged)
                self.log.log(
                    self.log_level,
                    "command %s from %s",
                    " ".join(map(str, (cmd.verb, *cmd.args))),
                    frame.writer,
                )
            status, result, error = await self.execute(cmd)
            if status != "ok":
                self.log.warning("command %s: %s: %s", cmd.verb, status, error)
            reply = Reply(cmd.id, cmd.verb, status, result, error, frame.seq)
            await self._send(reply, cmd)
        self.answered_seq = frame.seq

    async def notify(self, result: dict[str, Any]) -> None:
        """A notice (verb ``notice``, no id) carrying the last answered sequence number."""
        if self.replies is not None:
            await self._send(Reply("", "notice", "ok", result, None, self.answered_seq))

    async def _send(self, reply: Reply, cmd: Command | None = None) -> None:
        assert self.replies is not None, "answering while disconnected"
        await self.replies.put(COMMAND_CHANNEL, reply.to_json())
        if cmd is not None and self.replied is not None:
            await self.replied(cmd, reply)  # (its puts are written after the reply)
        await self.replies.flush()


def write_json_atomically(path: Path, value: Any) -> None:
    """Replace ``path`` with ``value`` as JSON: all of it or, after a crash, the old file (blocking)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(value, sort_keys=True).encode())


@attrs.define
class KeptState:
    """A component's state kept across restarts, as one JSON object in ``directory/state.json``.

    ``directory`` is the component's own (``$TURBINE_STATE_DIR/<type>_<name>``,
    default ``var/<type>_<name>``, relative to the working directory: under
    the MCP, the MCP's); keep other files of its own there too.
    """

    directory: Path

    @property
    def path(self) -> Path:
        return self.directory / "state.json"

    def load(self) -> dict[str, Any]:
        """What :meth:`save` kept last (``{}`` the first time); small, so reading it may block.

        Raises:
            ConfigError: the file is there but not a JSON object.
        """
        try:
            state = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {self.path}: {exc}") from None
        if not isinstance(state, dict):
            raise ConfigError(f"{self.path}: expected a JSON object, got {type(state).__name__}")
        return state

    async def save(self, state: Mapping[str, Any]) -> None:
        """Keep ``state`` (JSON values) for the next start: written whole or not at all, fsynced."""
        await run_blocking(write_json_atomically, self.path, dict(state))
