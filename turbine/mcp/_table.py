"""Typed reads from the tables of a site file, with messages naming the file and the key."""

from __future__ import annotations

import math
from typing import Any

from .._errors import TurbineError
from ..settings import type_name, type_ok


class SiteConfigError(TurbineError):
    """The site file is wrong; the message names the file, the key and what is expected."""


class Table:
    """Typed reads from one TOML table, with messages naming file and key."""

    def __init__(self, path: str, where: str, data: Any) -> None:
        self.path = path
        self.where = where
        if not isinstance(data, dict):
            raise self.error("", f"expected a table, got {data!r}")
        self.data = data
        self.seen: set[str] = set()

    def error(self, key: str, message: str) -> SiteConfigError:
        at = f"{self.where}.{key}" if key else self.where
        return SiteConfigError(f"{self.path}: {at}: {message}")

    _MISSING: Any = object()

    def get(self, key: str, like: type, default: Any = _MISSING, what: str = "") -> Any:
        self.seen.add(key)
        if key not in self.data:
            if default is self._MISSING:
                raise self.error(key, f"missing; expected {what or type_name(like)}")
            return default
        value = self.data[key]
        if not type_ok(value, like):
            raise self.error(key, f"expected {what or type_name(like)}, got {value!r}")
        return float(value) if like is float else value

    def get_strings(self, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        value = self.get(key, list, list(default), "a list of strings")
        if not all(isinstance(v, str) for v in value):
            raise self.error(key, f"expected a list of strings, got {value!r}")
        return tuple(value)

    def positive(self, key: str, default: float) -> float:
        value = self.get(key, float, default, "a number of seconds")
        if not (math.isfinite(value) and value >= 0):
            raise self.error(key, f"expected a number of seconds (0 or more), got {value!r}")
        return value

    def grace(self) -> float | None:
        """A program's own ``grace`` (None: not given, the site's applies)."""
        return self.positive("grace", 0.0) if "grace" in self.data else None

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise self.error(
                unknown[0], f"unknown key; expected one of {', '.join(sorted(self.seen))}"
            )
