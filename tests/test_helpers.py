"""The small shared helpers: backoff schedule and exception-group unwrapping."""

from __future__ import annotations

import attrs
import pytest
import trio

from turbine import Backoff, ConfigError, leaves, unwrap
from turbine._files import write_atomically
from turbine._retry import capped_delay
from turbine.settings import as_tuple, check, describe, make_settings


def test_backoff_doubles_up_to_its_cap_and_starts_over_on_reset():
    backoff = Backoff(0.1, 1.0)
    assert [backoff.next_delay() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    assert backoff.next_delay() == 0.1


def test_capped_delay_never_overflows():
    assert capped_delay(0.5, 30.0, 1) == 0.5
    assert capped_delay(0.5, 30.0, 10_000) == 30.0


def test_leaves_and_unwrap():
    inner = ValueError("inner")
    nested = BaseExceptionGroup("outer", [BaseExceptionGroup("mid", [inner])])
    assert unwrap(nested) is inner
    two = BaseExceptionGroup("two", [inner, BaseExceptionGroup("g", [KeyError("k")])])
    assert unwrap(two) is two
    assert [type(e) for e in leaves(two)] == [ValueError, KeyError]
    assert leaves(inner) == [inner]


async def test_open_client_style_unwrap_keeps_a_task_error_as_is():
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_raise)
    except BaseExceptionGroup as group:
        assert isinstance(unwrap(group), LookupError)


async def _raise() -> None:
    raise LookupError("from a task")


@attrs.frozen
class _Probe:
    url: str
    rate: float = attrs.field(default=1.0, validator=check(lambda v: v > 0, "more than 0"))
    names: tuple[str, ...] = attrs.field(default=(), converter=as_tuple)


def test_settings_are_checked_by_their_class() -> None:
    assert describe(_Probe) == "url, rate=1.0, names=[]"
    with pytest.raises(ConfigError, match="setting 'url': required"):
        make_settings(_Probe, {})
    probe = make_settings(_Probe, {"url": "x", "rate": "2.5", "names": '["a", "b"]'})
    assert (probe.rate, probe.names) == (2.5, ("a", "b"))
    with pytest.raises(ConfigError, match="setting 'rate': expected float, got '2.5'"):
        make_settings(_Probe, {"url": "x", "rate": "2.5"}, strict=True)  # TOML gives numbers
    with pytest.raises(ConfigError, match="setting 'rate': expected more than 0, got 0"):
        make_settings(_Probe, {"url": "x", "rate": 0}, strict=True)
    with pytest.raises(
        ConfigError, match="setting 'speed': unknown setting; known settings: names, rate, url"
    ):
        make_settings(_Probe, {"url": "x", "speed": 1})


def test_write_atomically_replaces_the_file_whole_and_leaves_nothing_beside_it(tmp_path):
    path = tmp_path / "state.json"
    path.write_bytes(b"old")
    write_atomically(path, b"new contents", mode=0o600)
    assert path.read_bytes() == b"new contents"
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
