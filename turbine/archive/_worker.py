"""The archive's hand-off to a worker thread: one each way, nothing else.

:func:`in_thread` is :func:`trio.to_thread.run_sync` without what a commit
does not need: no capacity limiter (acquiring one is a checkpoint, a step
of the calling task and a pass of the run loop of its own), no context
copy, no way back into trio from the thread.  Under ``--sync always`` a
broker whose clients flush after every put makes a commit per flush, a
thousand a second in the latency row, and each pass of the run loop and
step of a task costs the event loop's thread tens of microseconds (measured
in process, a commit of one 1 KB put: 9 passes of the run loop and 7 task
steps before, 4 and 2 with this and one worker call per commit; the event
loop's CPU per commit 0.75-0.87 ms before, 0.46-0.47 ms after).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import trio

if TYPE_CHECKING:
    import outcome

T = TypeVar("T")


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Return ``fn(*args)``, run in a worker thread (trio's cache of idle threads).

    Cancellation: not cancellable, like :func:`trio.to_thread.run_sync` by
    default: the call returns once ``fn`` has (the archive never abandons a
    write it started).  Not a checkpoint before it waits: call it only where
    the thread's result is awaited anyway.

    Raises:
        whatever ``fn`` raised.
    """
    task = trio.lowlevel.current_task()
    token = trio.lowlevel.current_trio_token()

    def deliver(result: outcome.Outcome[T]) -> None:  # (in the worker thread)
        token.run_sync_soon(trio.lowlevel.reschedule, task, result)

    trio.lowlevel.start_thread_soon(lambda: fn(*args), deliver)
    return await trio.lowlevel.wait_task_rescheduled(  # type: ignore[no-any-return]
        lambda _raise_cancel: trio.lowlevel.Abort.FAILED
    )
