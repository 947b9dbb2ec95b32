"""A stand-in for a module's ``os`` that counts the ``readv`` calls made through it."""

from __future__ import annotations

import os
from typing import Any


class CountedReads:
    """``monkeypatch.setattr(module, "os", counted)``: the module's ``os.readv``
    goes on reading and counts the calls, and those that found nothing to read."""

    def __init__(self) -> None:
        self.reads = 0
        self.failed = 0  # found the socket empty (BlockingIOError)

    def readv(self, fd: int, buffers: list[Any]) -> int:
        self.reads += 1
        try:
            return os.readv(fd, buffers)
        except BlockingIOError:
            self.failed += 1
            raise
