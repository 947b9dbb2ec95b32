"""The NTCP serdes plugin: the NTCP end of NTCP over the turbine.

It listens where an NTCP client expects the control system (the LabVIEW-plugin
ASCII protocol) and turns each request line into the command ``ntcp`` on
``ntcp_<translator>_command_sink``; the translator's reply, read from
``ntcp_<translator>_command_source/command.txt``, goes back to the client, in
order. Neither the client nor the control system changes.

One subscription to the translator's replies serves every request; replies
are matched by command id. Each client connection is one NTCP session: its
requests carry a session key, so the translator gives it its own
control-system connection, and closing the client closes that connection.

A request is never answered by silence. The command carries a deadline
(``deadline`` seconds): a translator that reads it later answers ``expired``
and does not forward it, and the client gets ``NOT OK expired ...``. With no
reply after ``deadline`` while the translator is offline, or after
``timeout`` in any case, the client gets ``NOT OK`` with the reason; for an
execute the reason says the outcome is unknown (the translator may have sent
it before it went away).
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
import time
from typing import Any

import attrs
import trio

from components.ntcp.client import receive_when_ready, write_at_once
from components.ntcp.protocol import (
    LineBuffer,
    NtcpProtocolError,
    format_not_ok,
    refuse,
    reply_count,
    verb_of,
)
from turbine import Command, Component, Gap, Reply, RequestFailed, TurbineError
from turbine.command import COMMAND_CHANNEL, endpoints, reply_from
from turbine.correlate import Correlator, ReplyLost

__all__ = ["NtcpSerdes"]

#: Seconds a reply may take to be accepted by the NTCP client.
SEND_TIMEOUT = 10.0
#: How long a question to the broker about a request without reply may take: while
#: the broker is away (restarting) the answer to the NTCP client must not wait for it.
PROBE_TIMEOUT = 1.0
#: Journal entries searched to tell "not forwarded" from "outcome unknown".
JOURNAL_SCAN = 100


def _wire(reply: str) -> bytes:
    """The reply lines for the client (``reply`` holds them separated by ``\\n``), ASCII.

    Anything not ASCII becomes '?'; a stray carriage return inside a line
    becomes a space.
    """
    return b"".join(
        " ".join(line.splitlines()).encode("ascii", "replace") + b"\n" for line in reply.split("\n")
    )


def _answer(reply: Reply, target: str) -> tuple[str, bool]:
    """What a translator's reply means for the client: (text, came from the control system)."""
    if reply.status == "expired":
        return f"expired: {reply.error}; not forwarded to the control system", False
    if reply.status != "ok" or not isinstance(reply.result, str):
        return f"{target}: {reply.error or reply.result!r}", False
    return reply.result, True


@attrs.frozen
class NtcpSerdesSettings:
    """The translator to use, where to serve NTCP clients, how long requests may take."""

    translator: str = "rig"
    host: str = "127.0.0.1"
    port: int = 6001
    deadline: float = 5.0
    timeout: float = 60.0


class NtcpSerdes(Component):
    """NTCP serdes plugin: serves NTCP clients and carries their requests over the turbine."""

    type = "ntcp"
    Settings = NtcpSerdesSettings

    @classmethod
    def rights(cls, name: str, settings: Any) -> dict[str, tuple[str, ...]]:
        """Commands its translator; reads the translator's replies and journal."""
        own = super().rights(name, settings)
        target = endpoints(f"{cls.type}_{settings.translator}")
        return {
            "read": (*own["read"], target["replies"], target["data"]),
            "write": own["write"],
            "command": (target["sink"],),
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.target = f"{self.type}_{self.config.translator}"
        self.target_endpoints = endpoints(self.target)
        self.port: int | None = None
        self.requests = 0
        self.failures = 0
        self._answers: Correlator[str, Reply] = Correlator()
        self._connected = trio.Event()
        # Command ids: this run's random prefix and a count (a random id per request
        # cost a getrandom call); fixed width, so one is never part of another.
        self._id_prefix = secrets.token_hex(8)
        self._ids = itertools.count()

    def _command_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids):016x}"

    # --- the turbine side

    async def start_lasting_work(self, nursery: trio.Nursery) -> None:
        """Listen for NTCP clients (``self.port``); the listener outlives broker
        reconnects, and while the broker is away requests get ``NOT OK``.

        Raises:
            OSError: the NTCP address cannot be bound.
        """
        listeners = await trio.open_tcp_listeners(self.config.port, host=self.config.host)
        self.port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, self._serve_client, listeners)
        self.log.info("serving NTCP clients on %s:%d", self.config.host, self.port)

    async def run(self) -> None:
        tb = self.client
        assert tb is not None
        path = f"{self.target_endpoints['replies']}/{COMMAND_CHANNEL}"
        try:
            async with tb.subscribe(path, start="now") as sub:
                self._connected.set()
                async for item in sub:
                    if isinstance(item, Gap):
                        self.log.warning("missed %d replies of %s", item.missed, self.target)
                    elif (reply := reply_from(item)) is not None:
                        self._answers.deliver(reply.id, reply)
        finally:
            if self._connected.is_set():
                self._connected = trio.Event()
            self._answers.fail("lost the turbine")  # no reply: answered as a lost connection

    async def wait_connected(self) -> None:
        """Return once requests can go to the turbine (the reply subscription is live)."""
        while not self._connected.is_set():
            await self._connected.wait()

    def status(self) -> dict[str, Any]:
        return super().status() | {
            "translator": self.target,
            "ntcp_port": self.port,
            "requests": self.requests,
            "failures": self.failures,
            "waiting": len(self._answers),
        }

    # --- one request

    async def relay(self, line: str, session: str = "") -> str:
        """Carry one request line to the translator and return the reply line.

        Never raises for a failure of the path: it becomes ``NOT OK <reason>``.
        Returns within ``timeout`` seconds (plus a broker round trip).
        """
        self.requests += 1
        expected = reply_count(line)
        result, answered = await self._relay(line, session)
        got = result.count("\n") + 1
        if answered and got != expected:
            result = f"{self.target} answered {got} line{'s' * (got > 1)} where {expected} were due"
            answered = False
        if not answered:
            self.failures += 1
            return "\n".join(refuse(line, result))
        return result

    async def _relay(self, line: str, session: str) -> tuple[str, bool]:
        """The reply lines if they came from the control system, else why not: (text, came)."""
        deadline, timeout = self.config.deadline, self.config.timeout
        if not self._connected.is_set():  # (no pass through the scheduler when it is)
            with trio.move_on_after(min(deadline, timeout)):
                await self._connected.wait()
        tb = self.client
        if not self._connected.is_set() or tb is None:
            return f"the turbine at {self.address} is unreachable; not forwarded", False
        cmd = Command(
            self._command_id(), "ntcp", (line,), {"session": session}, time.time() + deadline
        )
        with self._answers.expect(cmd.id) as pending:
            sent = False
            try:
                # put waits for the broker's acknowledgement: while it is away the
                # command is spooled (delivered, expired, when it is back): say so.
                # One scope for the put and the wait for the reply (a scope is about
                # 60 Python calls; moving its deadline about 20).
                with trio.move_on_after(min(timeout, max(deadline, PROBE_TIMEOUT))) as scope:
                    await tb.put(
                        f"{self.target_endpoints['sink']}/{COMMAND_CHANNEL}", cmd.to_json()
                    )
                    sent = True
                    scope.deadline = trio.current_time() + min(deadline, timeout)
                    return _answer(await pending.wait(), self.target)
            except RequestFailed as exc:
                if exc.code == "missing":
                    return f"no translator {self.target} has run on this turbine", False
                return f"the turbine refused the request: {exc}", False
            except ReplyLost as exc:
                return await self._no_reply(tb, cmd, exc.reason), False
            except TurbineError as exc:
                return f"lost the turbine while sending the request: {exc}", False
            if not sent:
                why = f"the turbine at {self.address} is away"
                return await self._no_reply(tb, cmd, why), False
            try:
                online = await self._target_online(tb)
                if online is None:
                    why = f"the turbine at {self.address} is away"
                    return await self._no_reply(tb, cmd, why), False
                if not online:
                    return await self._no_reply(tb, cmd, "the translator is not running"), False
                with trio.move_on_after(max(0.0, timeout - deadline)):
                    return _answer(await pending.wait(), self.target)
            except ReplyLost as exc:
                return await self._no_reply(tb, cmd, exc.reason), False
        return await self._no_reply(tb, cmd, f"no reply within {timeout:g} s"), False

    async def _target_online(self, tb: Any) -> bool | None:
        """Whether the translator is online; None: the broker did not say in time."""
        try:
            with trio.move_on_after(PROBE_TIMEOUT):
                infos = await tb.list_sources(self.target_endpoints["replies"])
                return any(info.online for info in infos)
        except TurbineError:
            return False
        return None

    async def _no_reply(self, tb: Any, cmd: Command, why: str) -> str:
        text = f"{why}: no reply from {self.target}"
        if verb_of(cmd.args[0]) == "execute":
            journal = f"{self.target_endpoints['data']}/journal.txt"
            sent = True  # unless the journal says otherwise in time
            with contextlib.suppress(TurbineError), trio.move_on_after(PROBE_TIMEOUT):
                sent = any(
                    cmd.id.encode() in f.data for f in await tb.fetch(journal, newest=JOURNAL_SCAN)
                )
            if sent:
                return f"outcome unknown: {text} after it began forwarding the execute"
        if time.time() > (cmd.deadline or 0):
            return f"{text}; the request expired and will not be forwarded"
        return f"{text}; outcome unknown"

    # --- the NTCP side

    async def _serve_client(self, stream: trio.SocketStream) -> None:
        session = secrets.token_hex(16)
        lines = LineBuffer()
        try:
            async with stream:
                while data := await receive_when_ready(stream, 65536):
                    lines.receive_data(data)
                    while True:
                        try:
                            line = lines.next_line()
                        except NtcpProtocolError as exc:
                            reply = format_not_ok(exc.reason)
                        else:
                            if line is None:
                                break
                            reply = await self.relay(line, session)
                        if rest := write_at_once(stream, _wire(reply)):
                            with trio.fail_after(SEND_TIMEOUT):
                                await stream.send_all(rest)
        except (trio.BrokenResourceError, trio.TooSlowError):
            pass
        finally:
            await self._close_session(session)

    async def _close_session(self, session: str) -> None:
        """Tell the translator to close the session's control-system connection."""
        tb = self.client
        if tb is None or not self._connected.is_set():
            return
        cmd = Command(self._command_id(), "ntcp-close", (), {"session": session}, time.time() + 60)
        with trio.CancelScope(shield=True), trio.move_on_after(SEND_TIMEOUT):
            try:
                await tb.put(f"{self.target_endpoints['sink']}/{COMMAND_CHANNEL}", cmd.to_json())
            except TurbineError:
                pass


COMPONENT = NtcpSerdes
