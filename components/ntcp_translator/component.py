"""The NTCP transport translator: the control-system end of NTCP over the turbine.

It is the component ``ntcp_<name>``. Each NTCP request arrives on its command
sink as the command ``ntcp`` with ``args [line]`` and ``kwargs {"session": key}``
(put there by :mod:`components.ntcp_serdes`); the translator sends the line to
the control system and the reply line (lines, joined by ``\\n``, for a
get-control-point naming several control points) becomes the command's
result. Each
session key gets its own control-system connection, because the control
system ties a session to the connection it was opened on; the command
``ntcp-close`` with the key closes it.

Every successful ``get-control-point`` reply is also published on the data
source, one float64 frame per channel ``<controlPoint>.<axis>.<type>``, put
after the reply (:meth:`NtcpTranslator.replied`): the serdes's reply no longer
waits for the broker to take a control point's twelve frames first.

Safety, because a physical step cannot be undone:

* An ``execute`` is journalled (``journal.txt`` on the data source, flushed)
  before it is sent. After a restart the framework reads the commands not yet
  answered again; one whose journal entry exists is answered ``NOT OK outcome
  unknown`` and never sent again. The journal is checked before the deadline.
* A connection that breaks after an ``execute`` was sent, or a reply that
  does not come within ``reply_timeout``, gives ``NOT OK outcome unknown``;
  nothing is ever re-sent.
* A command older than its deadline is answered ``expired`` by the framework
  and never forwarded.
* An unreachable control system gives ``NOT OK`` with the reason within
  ``connect_timeout``.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import attrs
import trio

from components.ntcp.channels import measurement_channel, measurement_channels, measurement_frames
from components.ntcp.client import NtcpClient, NtcpConnectionClosed
from components.ntcp.protocol import (
    NtcpError,
    encode_line,
    format_not_ok,
    measured,
    refuse,
    verb_of,
)
from turbine import Command, Component, Reply, command, parse_address
from turbine.settings import address, as_tuple

__all__ = ["JOURNAL_CHANNEL", "NtcpTranslator", "measurement_channel"]

JOURNAL_CHANNEL = "journal.txt"
#: Journal entries read back after a restart (only unanswered commands matter).
JOURNAL_SCAN = 1000
#: Control-system connections kept (one per NTCP session); beyond this the
#: least recently used is closed (a serdes that died never sent ntcp-close).
MAX_LINKS = 64


@attrs.frozen
class NtcpTranslatorSettings:
    """The control system to forward to, its control points, how long to wait for it."""

    control: str = attrs.field(default="127.0.0.1:6000", validator=address)
    control_points: tuple[str, ...] = attrs.field(default=("MDL-00-01",), converter=as_tuple)
    connect_timeout: float = 2.0
    reply_timeout: float = 50.0


class NtcpTranslator(Component):
    """NTCP transport translator: forwards NTCP requests from the command sink to a control system."""

    type = "ntcp"
    Settings = NtcpTranslatorSettings
    #: Its command sink moves the rig: only the serdes plugin configured for it commands it.
    operator_commands = False
    #: Every NTCP request is a command, kept on the sink with its reply on the
    #: command source: a log record each at INFO (the default level) cost the
    #: path as much again (translator 1,325 -> 1,721 Python calls per request,
    #: broker 1,150 -> 1,409: the record's put on the debug log source).
    command_log_level = logging.DEBUG

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.channels = {JOURNAL_CHANNEL: "application/json"} | measurement_channels(
            self.config.control_points
        )
        self.control = parse_address(self.config.control)
        self._links: dict[str, NtcpClient] = {}
        self._journalled: set[str] | None = None
        self._command: Command | None = None
        self._measured: list[str] = []  # the reply lines to publish after the reply

    async def start_lasting_work(self, nursery: trio.Nursery) -> None:
        # Control-system connections outlive broker reconnects: a session on
        # the rig must not end because the turbine blinked.  They close when
        # the translator stops.
        nursery.start_soon(self._close_links_at_the_end)

    async def _close_links_at_the_end(self) -> None:
        try:
            await trio.sleep_forever()
        finally:
            links, self._links = self._links, {}
            for link in links.values():
                await link.aclose()

    async def execute(self, cmd: Command) -> tuple[str, Any, str | None]:
        if cmd.verb == "ntcp" and cmd.args and verb_of(str(cmd.args[0])) == "execute":
            if self._journalled is None:
                path = f"{self.endpoints['data']}/{JOURNAL_CHANNEL}"
                frames = await self.client.fetch(path, newest=JOURNAL_SCAN)  # type: ignore[union-attr]
                self._journalled = {json.loads(f.data)["id"] for f in frames}
            if cmd.id in self._journalled:
                why = "outcome unknown: the translator restarted while forwarding this execute; it is not sent again"
                return "ok", format_not_ok(why), None
        self._command = cmd
        return await super().execute(cmd)

    @command(
        "ntcp", help="send one NTCP request line to the control system; the result is the reply"
    )
    async def ntcp(self, line: str, session: str = "") -> str:
        verb = verb_of(line)
        is_execute = verb == "execute"
        try:
            encode_line(line)
        except NtcpError as exc:
            return format_not_ok(str(exc))
        link = await self._link(session)
        if isinstance(link, str):
            return "\n".join(refuse(line, link))
        if is_execute and self._command is not None:
            entry = {"id": self._command.id, "session": session, "line": line, "time": time.time()}
            await self.data.put(JOURNAL_CHANNEL, json.dumps(entry).encode())
            await self.data.flush()
            if self._journalled is not None:
                self._journalled.add(self._command.id)
        why = f"no reply within {self.config.reply_timeout:g} s"
        with trio.move_on_after(self.config.reply_timeout):
            try:
                reply = await link.request(line)
            except NtcpConnectionClosed:
                why = link.closed or "the connection to the control system broke"
            else:
                if verb == "get-control-point":
                    self._measured = reply.split("\n")
                return reply
        # Lost (or timed out, which closed it): a later request reconnects.
        await link.aclose()
        if is_execute:
            return format_not_ok(
                f"outcome unknown: {why} after execute was sent; it is not sent again"
            )
        return "\n".join(refuse(line, why))

    async def _link(self, session: str) -> NtcpClient | str:
        """The session's control-system connection (opened if needed), or why there is none."""
        link = self._links.pop(session, None)
        if link is None or link.closed:
            host, port = self.control
            try:
                with trio.fail_after(self.config.connect_timeout):
                    stream = await trio.open_tcp_stream(host, port)
            except (OSError, trio.TooSlowError) as exc:
                return f"control system {host}:{port} unreachable: {exc or 'timeout'}"
            if len(self._links) >= MAX_LINKS:
                oldest = next(iter(self._links))
                self.log.warning("closing idle control-system connection of session %s", oldest)
                await self._links.pop(oldest).aclose()
            link = NtcpClient(stream)
        self._links[session] = link  # most recently used last
        return link

    async def replied(self, cmd: Command, reply: Reply) -> None:
        """Publish the measured values of a get-control-point's reply lines (one per
        control point), put after the reply and flushed with it."""
        replies, self._measured = self._measured, []
        for values in filter(None, map(measured, replies)):
            for channel, data in measurement_frames(values):
                await self.data.put(channel, data)

    @command("ntcp-close", help="close the control-system connection of an NTCP session key")
    async def ntcp_close(self, session: str = "") -> str:
        link = self._links.pop(session, None)
        if link is not None:
            await link.aclose()
        return "closed" if link else "no such session"

    def status(self) -> dict[str, Any]:
        return super().status() | {
            "control": "{}:{}".format(*self.control),
            "connections": len(self._links),
        }


COMPONENT = NtcpTranslator
