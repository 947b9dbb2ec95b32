"""The NetDVD device's background job: one at a time (burn, copy, burn_copy), run
in the device's job nursery so that it keeps answering ``status`` meanwhile."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from .drive import Progress
from .errors import NetDVDError


class Jobs:
    """The running job (:attr:`current`), the last one's outcome (:attr:`last`), and the
    working directory a burn is reading (:attr:`workdir`, not to be written meanwhile).

    A job outlives the client that started it but not the device (``nursery``);
    ``ended`` runs after each, shielded (the device reads the drive's medium again).
    """

    def __init__(self, nursery: trio.Nursery, ended: Callable[[], Awaitable[None]]) -> None:
        self._nursery = nursery
        self._ended = ended
        self.current: Progress | None = None
        self.last: dict[str, Any] | None = None
        self.workdir: Path | None = None
        self._done = trio.Event()
        self._done.set()

    def idle(self) -> None:
        """Raises: NetDVDError: a job is running (code ``busy``)."""
        if self.current is not None:
            raise NetDVDError(
                f"the device is busy with {self.current.op!r}; follow it with 'status' "
                "or wait for it with 'wait'",
                "busy",
            )

    def start(self, op: str, run: Callable[[Progress], Awaitable[None]]) -> dict[str, Any]:
        """Run ``run`` as job ``op`` in the background; the reply to the command."""
        progress = Progress(op)
        self.current = progress
        self._done = trio.Event()
        self._nursery.start_soon(self._run, progress, run)
        return {"job": op}

    async def wait(self) -> dict[str, Any] | None:
        """The last job's outcome, once no job is running."""
        await self._done.wait()
        return self.last

    async def _run(self, progress: Progress, run: Callable[[Progress], Awaitable[None]]) -> None:
        result: dict[str, Any] = {"op": progress.op, "ok": True}
        try:
            await run(progress)
        except NetDVDError as exc:
            result = {"op": progress.op, "ok": False, "code": exc.code, "message": exc.message}
        except OSError as exc:
            result = {
                "op": progress.op,
                "ok": False,
                "code": f"{progress.op}_failed",
                "message": f"{progress.op} failed: {exc}",
            }
        finally:
            self.workdir = None
            self.current = None
            result["seconds"] = round(trio.current_time() - progress.started, 3)
            self.last = result
            with trio.CancelScope(shield=True):
                await self._ended()
            self._done.set()
