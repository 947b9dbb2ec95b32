"""A NetDVD client's working directory: the files a burn puts on the disc.

Uploads land under a partial name and are moved into place, with their
timestamp, once complete; directories keep the dates the client gave them,
set on the tree just before it is burned.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import attrs

from turbine import run_blocking

from ._args import arg, bad_request, check_relative_path
from .errors import NetDVDError

__all__ = ["PutTarget", "WorkDir"]


def _empty_dir(work: Path) -> None:
    """Remove everything inside ``work`` (blocking: run it in a thread)."""
    for child in work.iterdir():
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()


@attrs.frozen
class PutTarget:
    """An accepted upload: where its bytes go until they are complete."""

    partial: Path
    final: Path
    rel: str
    size: int
    mtime: float


@attrs.define(eq=False)
class WorkDir:
    """The working directory at ``path``.

    ``clock`` is the client's clock (dates of what it does not date itself),
    ``counter`` numbers partial uploads, ``free_bytes`` measures the spool's
    partition. Whether the directory may be written (not while it is being
    burned) is the device's to say.
    """

    path: Path
    _clock: Callable[[], float]
    _counter: itertools.count[int]
    _free_bytes: Callable[[], int]
    _dir_mtimes: dict[str, float] = attrs.field(factory=dict)

    def resolve(self, text: str) -> tuple[str, Path]:
        """The checked relative path ``text`` names, and where it is on disk."""
        rel = check_relative_path(text)
        return str(rel), self.path.joinpath(*rel.parts)

    def begin_put(self, args: dict[str, Any]) -> PutTarget:
        """Accept an upload of ``size`` bytes to ``path`` in the working directory.

        Raises:
            NetDVDError: bad path, no space, or the path is a directory.
        """
        work = self.path
        rel, final = self.resolve(arg(args, "path", str))
        size = arg(args, "size", int)
        mtime = arg(args, "mtime", (int, float), None)
        if size < 0:
            raise bad_request("argument 'size' must not be negative")
        if final.is_dir():
            raise NetDVDError(f"{rel!r} is a directory in the working directory", "is_dir")
        for parent in PurePosixPath(rel).parents:
            if str(parent) != "." and work.joinpath(parent).is_file():
                raise NetDVDError(f"{str(parent)!r} is a file, not a directory", "not_dir")
        free = self._free_bytes()
        if size > free:
            raise NetDVDError(
                f"no space for {rel!r}: it has {size} bytes, the working directory's "
                f"partition has {free} bytes free",
                "no_space",
            )
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = final.with_name(f".{final.name}.{next(self._counter)}.part")
        return PutTarget(partial, final, rel, size, self._clock() if mtime is None else mtime)

    @staticmethod
    def finish_put(target: PutTarget) -> dict[str, Any]:
        """Move a complete upload into place with its timestamp."""
        os.utime(target.partial, (target.mtime, target.mtime))
        os.replace(target.partial, target.final)
        return {"path": target.rel, "size": target.size}

    async def mkdir(self, args: dict[str, Any]) -> dict[str, Any]:
        """Make directory ``path`` (and its parents), dated ``mtime`` or now."""
        rel, path = self.resolve(arg(args, "path", str))
        mtime = arg(args, "mtime", (int, float), None)
        if path.is_file():
            raise NetDVDError(f"{rel!r} is a file in the working directory", "not_dir")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise NetDVDError(
                f"cannot make directory {rel!r}: a file is in the way", "not_dir"
            ) from exc
        self._dir_mtimes[rel] = self._clock() if mtime is None else mtime
        return {"path": rel}

    async def list(self, args: dict[str, Any]) -> dict[str, Any]:
        """Every file and directory, their bytes, and the partition's free bytes."""
        work = self.path
        entries = []
        total = 0
        for root, dirs, files in os.walk(work):
            dirs.sort()
            base = Path(root)
            for name in dirs:
                rel = (base / name).relative_to(work).as_posix()
                mtime = self._dir_mtimes.get(rel, (base / name).stat().st_mtime)
                entries.append({"path": rel, "kind": "dir", "size": 0, "mtime": mtime})
            for name in sorted(files):
                if name.endswith(".part") and name.startswith("."):
                    continue
                st = (base / name).stat()
                rel = (base / name).relative_to(work).as_posix()
                entries.append(
                    {"path": rel, "kind": "file", "size": st.st_size, "mtime": st.st_mtime}
                )
                total += st.st_size
        entries.sort(key=lambda e: str(e["path"]))
        return {"entries": entries, "bytes": total, "free_bytes": self._free_bytes()}

    async def delete(self, args: dict[str, Any]) -> dict[str, Any]:
        """Remove ``path`` (a directory with everything in it)."""
        rel, path = self.resolve(arg(args, "path", str))
        if path.is_dir():
            await run_blocking(shutil.rmtree, path)
            self._dir_mtimes = {
                k: v
                for k, v in self._dir_mtimes.items()
                if k != rel and not k.startswith(rel + "/")
            }
        elif path.exists():
            path.unlink()
        else:
            raise NetDVDError(f"{rel!r} is not in the working directory", "not_found")
        return {"path": rel}

    async def empty(self) -> None:
        """Remove everything in the working directory."""
        await run_blocking(_empty_dir, self.path)
        self._dir_mtimes = {}

    def date_directories(self) -> None:
        """Give each directory the date the client made it with (before a burn)."""
        for rel, mtime in self._dir_mtimes.items():
            if self.path.joinpath(rel).is_dir():
                os.utime(self.path.joinpath(rel), (mtime, mtime))
