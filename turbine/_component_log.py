"""A component's Python log, queued for its debug log source."""

from __future__ import annotations

import json
import logging
from typing import Any

import trio

#: The channel of ``<type>_<name>_debug_log_source``.
LOG_CHANNEL = "log.txt"
#: Log records buffered for the debug log source while the broker is away.
LOG_QUEUE = 1000


class BrokerLogHandler(logging.Handler):
    """Queues log records for the debug log source; never blocks the logger."""

    def __init__(self) -> None:
        super().__init__()
        self.send, self.receive = trio.open_memory_channel[bytes](LOG_QUEUE)
        self.dropped = 0
        #: Records queued so far, and of those the ones the broker holds (or lost with a session).
        self.queued = 0
        self.sent = 0
        self._taken = 0
        self._sent_more = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        entry = {
            "time": record.created,
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = logging.Formatter().formatException(record.exc_info)
        try:
            self.send.send_nowait(json.dumps(entry).encode())
            self.queued += 1
        except trio.WouldBlock:
            self.dropped += 1

    async def pump(self, log_source: Any) -> None:
        """Put queued records on ``log_source`` (a Source), flushing whenever the queue is empty."""
        async for entry in self.receive:
            await log_source.put(LOG_CHANNEL, entry)
            self._taken += 1
            if not self.receive.statistics().current_buffer_used:
                await log_source.flush()
                self.sent = self._taken
                self._sent_more.set()
                self._sent_more = trio.Event()

    async def wait_sent(self) -> None:
        """Return once the broker holds every record queued before this call (a pump must run)."""
        target = self.queued
        while self.sent < target:
            await self._sent_more.wait()
