"""The MCP's console: a live status table on a terminal, plain log lines otherwise."""

from __future__ import annotations

import collections
import logging
import shutil
import sys
from typing import Any, TextIO

from .._constants import TAIL_LINES
from .._format import program_table

log = logging.getLogger("turbine.mcp")


class Console:
    """Where the MCP's lines go: stderr, or a live table with a log tail on a terminal."""

    def __init__(self, tty: bool, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.tty = tty
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)

    def line(self, text: str) -> None:
        if self.tty:
            self.tail.append(text)
        else:
            self.err.write(text + "\n")
            self.err.flush()

    def draw(self, header: str, rows: list[dict[str, Any]]) -> None:
        """Redraw the table (terminal only)."""
        if not self.tty:
            return
        lines = [header, "", *program_table(rows)]
        lines += ["", "-" * 30 + " log " + "-" * 30, *self.tail]
        columns = shutil.get_terminal_size().columns
        self.out.write("\x1b[H\x1b[2J" + "\n".join(line[:columns] for line in lines) + "\n")
        self.out.flush()


class ConsoleHandler(logging.Handler):
    """Log records to the :class:`Console`."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.line(self.format(record))
        except Exception:  # a logging handler must never raise
            self.handleError(record)
