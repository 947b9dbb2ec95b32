"""A broker whose channels are archived in a data directory (``turbine serve --data-dir``,
an MCP site's embedded broker with ``data_dir``)."""

from __future__ import annotations

from collections.abc import Callable

import attrs
import trio

from ..origin import load_identity
from ..server import BrokerConfig, serve_turbine
from ._archive import Archive, ArchiveConfig, open_archive
from ._datadir import ArchiveError
from ._store import TieredStores


async def serve_archived(
    config: BrokerConfig,
    data_dir: str,
    archive: ArchiveConfig | None = None,
    stores: Callable[[Archive], TieredStores] = TieredStores,
    *,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """:func:`turbine.server.serve_turbine` with ``data_dir`` open (and locked) around it:
    the broker's identity is the one kept there, every frame is archived there, and the
    sources archived before come back (offline) at once.

    Raises:
        ArchiveError: the data dir is held by another process, or cannot be used
            (unwritable, another format version, a bad identity file).
        OSError: as :func:`~turbine.server.serve_turbine`.
    """
    async with open_archive(data_dir, archive or ArchiveConfig()) as opened:
        try:
            identity = load_identity(data_dir)  # under the data dir's lock
        except (OSError, ValueError) as exc:
            raise ArchiveError(f"broker identity: {exc}") from None
        config = attrs.evolve(config, store=stores(opened), identity=identity)
        await serve_turbine(config, task_status=task_status)
