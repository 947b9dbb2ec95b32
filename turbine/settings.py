"""Component settings: declared once, as a frozen attrs class with validators.

A component names its settings class (``Settings = DaqSettings``); every way
of giving settings ends in :func:`make_settings`, which checks keys and types
and then builds the class (its validators check values and how settings go
together). Nothing else runs, so the MCP checks a site file without
constructing a single component::

    @attrs.frozen
    class CounterSettings:
        interval: float = attrs.field(default=1.0, validator=check(lambda v: v > 0, "seconds > 0"))

Types a setting may have: ``bool``, ``int``, ``float``, ``str``,
``tuple[str, ...]`` (a TOML or JSON list) and ``dict[str, Any]`` (a table).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, get_origin

import attrs

from ._errors import TurbineError
from .client import parse_address

S = TypeVar("S")


class ConfigError(TurbineError):
    """A component setting is unknown, of the wrong type or out of range.

    ``key`` names the setting when one alone is wrong, ``problem`` says what
    is wrong with it.
    """

    def __init__(self, problem: str, key: str | None = None) -> None:
        super().__init__(f"setting {key!r}: {problem}" if key else problem)
        self.key = key
        self.problem = problem


@attrs.frozen
class NoSettings:
    """The settings of a component that takes none."""


def check(ok: Callable[[Any], bool], expected: str) -> Callable[[Any, Any, Any], None]:
    """An attrs validator: ``ok(value)`` or ``ValueError("setting 'x': expected ..., got ...")``."""

    def validate(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not ok(value):
            raise ValueError(f"setting {attribute.name!r}: expected {expected}, got {value!r}")

    return validate


def address(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    """An attrs validator: ``value`` is a ``HOST:PORT`` address."""
    try:
        parse_address(value)
    except TurbineError as exc:
        raise ValueError(f"setting {attribute.name!r}: {exc}") from None


def as_tuple(value: Any) -> tuple[Any, ...]:
    """attrs converter of a list setting (TOML and JSON give lists) to a tuple."""
    return tuple(value) if isinstance(value, list | tuple) else value


#: attrs metadata key of a setting that is a file or directory (see :func:`path_setting`).
_PATH = "turbine_path"


def path_setting(default: str = "", **field: Any) -> Any:
    """A setting that names a file or directory: ``file: str = path_setting()``.

    A relative path given in a site file is relative to that file's
    directory: the MCP makes it absolute (:func:`resolve_paths`) before it
    checks the settings, so validators see the file the site means.  Given
    on the command line (``--set file=x.wav``), or as the default, it is
    relative to the working directory, as any path on a command line.
    ``field`` goes to ``attrs.field`` (``validator=...``).
    """
    metadata = {**field.pop("metadata", {}), _PATH: True}
    return attrs.field(default=default, metadata=metadata, **field)


def resolve_paths(cls: type, given: Mapping[str, Any], base: str) -> dict[str, Any]:
    """``given`` with each relative, non-empty :func:`path_setting` of ``cls`` joined to ``base``."""
    paths = {f.name for f in attrs.fields(cls) if f.metadata.get(_PATH)}
    return {
        key: os.path.normpath(os.path.join(base, value))
        if key in paths and isinstance(value, str) and value and not os.path.isabs(value)
        else value
        for key, value in given.items()
    }


def setting_kinds(cls: type) -> dict[str, type]:
    """Each setting of ``cls`` and the plain type its values have (bool, int, float, str, tuple, dict)."""
    attrs.resolve_types(cls)
    return {f.name: get_origin(f.type) or f.type for f in attrs.fields(cls)}


_NAMES = {bool: "bool", int: "int", float: "float", str: "str", tuple: "list", dict: "table"}


def type_name(kind: type) -> str:
    """How messages name a setting's type."""
    return _NAMES.get(kind, kind.__name__)


def type_ok(value: Any, kind: type) -> bool:
    """Whether ``value``, as TOML or JSON gives it, has type ``kind`` (ints pass as floats)."""
    if kind is bool:
        return isinstance(value, bool)
    if kind in (int, float):
        numbers = int if kind is int else int | float
        return isinstance(value, numbers) and not isinstance(value, bool)
    return isinstance(value, list | tuple if kind in (list, tuple) else kind)


def _typed(value: Any, kind: type, key: str) -> Any:
    if not type_ok(value, kind):
        raise ConfigError(f"expected {type_name(kind)}, got {value!r}", key)
    return float(value) if kind is float else value


def convert(value: Any, like: Any, what: str) -> Any:
    """``value`` (often text from a command line) converted to the type ``like`` (or of ``like``).

    Raises:
        ConfigError: it cannot be converted; the message names ``what``.
    """
    kind = like if isinstance(like, type) else type(like)
    try:
        return _converted(value, like, kind)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}: expected {type_name(kind)}, got {value!r}") from None


def _converted(value: Any, like: Any, kind: type) -> Any:
    if like is None or kind is object or isinstance(value, kind) and kind is not bool:
        return value
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(text)
    if kind in (list, tuple, dict):
        parsed = json.loads(value) if isinstance(value, str) else value
        if not isinstance(parsed, list | tuple if kind is tuple else kind):
            raise ValueError(value)
        return parsed
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ValueError(value)
    return kind(value)


def make_settings(
    cls: type[S], given: Mapping[str, Any], *, strict: bool = False, owner: str | None = None
) -> S:
    """Build ``cls`` from ``given`` (defaults for the rest).

    ``strict``: values come from TOML or JSON and must have the setting's
    type already; otherwise text (``--set rate=500``) is converted.
    ``owner`` names who takes these settings in messages ("daq components").

    Raises:
        ConfigError: an unknown key, a wrong type, or what a validator refused
            (each message names the setting).
    """
    kinds = setting_kinds(cls)
    unknown = sorted(set(given) - set(kinds))
    if unknown:
        known = ", ".join(sorted(kinds)) or "none"
        takes = f"{owner} take" if owner else "known settings"
        raise ConfigError(f"unknown setting; {takes}: {known}", unknown[0])
    fields: Any = attrs.fields(cls)  # type: ignore[arg-type]
    missing = [f.name for f in fields if f.default is attrs.NOTHING and f.name not in given]
    if missing:
        raise ConfigError("required: it has no default", missing[0])
    values = {}
    for key, value in given.items():
        if strict:
            values[key] = _typed(value, kinds[key], key)
            continue
        try:
            values[key] = _converted(value, kinds[key], kinds[key])
        except (TypeError, ValueError):
            raise ConfigError(f"expected {type_name(kinds[key])}, got {value!r}", key) from None
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc)) from None


def settings_dict(settings: Any) -> dict[str, Any]:
    """The settings as plain JSON-able values (for ``status`` and the MCP's pipe)."""
    return attrs.asdict(settings)


def describe(cls: type) -> str:
    """``key=default, ...`` for help texts (``key`` alone for a setting without a default)."""

    def default(field: attrs.Attribute[Any]) -> str:
        value: Any = field.default
        if value is attrs.NOTHING:
            return field.name
        if isinstance(value, attrs.Factory):  # type: ignore[arg-type]
            value = value.factory()
        return f"{field.name}={list(value) if isinstance(value, tuple) else value!r}"

    return ", ".join(default(f) for f in attrs.fields(cls))


def read_settings_fd(fd: int) -> dict[str, Any]:
    """The JSON object of settings written to the inherited file descriptor ``fd``, read to its end.

    ``fd`` is closed afterwards, so the component's own children never see it.

    Raises:
        ConfigError: ``fd`` cannot be read or does not hold a JSON object.
    """
    try:
        with open(fd, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read settings from fd {fd}: {exc.strerror or exc}") from None
    try:
        given = json.loads(data)
    except ValueError as exc:
        raise ConfigError(f"settings from fd {fd} are not JSON: {exc}") from None
    if not isinstance(given, dict):
        raise ConfigError(f"settings from fd {fd}: expected a JSON object, got {given!r}")
    return given
