"""How a component's command handlers take a command's arguments: bound as a
Python call would bind them, converted to the annotated types, refused with the
usage when they do not fit."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio

from turbine import Command, Component, Reply, command, open_client, send_command
from turbine.testing import open_broker


class Stepper(Component):
    type = "daq"

    @command("step", help="move by STEP, SPEED times")
    async def step(self, step: int, speed: float = 1.0, *, label: str = "") -> list[Any]:
        return [step, speed, label]

    @command("tag", help="tag the names")
    async def tag(self, *names: Any, **fields: Any) -> list[Any]:
        return [list(names), fields]


async def run(verb: str, *args: Any, **kwargs: Any) -> tuple[str, Any, str | None]:
    return await Stepper("s").execute(Command("c1", verb, args, kwargs))


@pytest.mark.parametrize(
    ("args", "kwargs", "result"),
    [
        (("3",), {}, [3, 1.0, ""]),
        (("3", "2.5"), {}, [3, 2.5, ""]),
        ((), {"step": 3, "label": "a"}, [3, 1.0, "a"]),
        (("3",), {"speed": "0.5", "label": "b"}, [3, 0.5, "b"]),
    ],
)
async def test_arguments_bind_by_position_or_name_and_convert(
    args: tuple[Any, ...], kwargs: dict[str, Any], result: list[Any]
) -> None:
    assert await run("step", *args, **kwargs) == ("ok", result, None)


@pytest.mark.parametrize(
    ("args", "kwargs", "why"),
    [
        ((), {}, "missing a required argument: 'step'"),
        (("3", "1", "x"), {}, "too many positional arguments"),
        (("3",), {"step": 4}, "multiple values for argument 'step'"),
        (("3",), {"height": 4}, "unexpected keyword argument 'height'"),
    ],
)
async def test_arguments_that_do_not_fit_are_refused_with_the_usage(
    args: tuple[Any, ...], kwargs: dict[str, Any], why: str
) -> None:
    status, result, error = await run("step", *args, **kwargs)
    assert (status, result) == ("error", None)
    assert error is not None and why in error
    assert error.endswith("usage: step STEP [SPEED] [LABEL]: move by STEP, SPEED times")


async def test_an_argument_that_does_not_convert_is_an_error_naming_it() -> None:
    assert await run("step", "three") == (
        "error",
        None,
        "argument 'step': expected int, got 'three'",
    )


async def test_a_handler_taking_any_arguments_gets_them_all() -> None:
    assert await run("tag", "a", "b", colour="red") == (
        "ok",
        [["a", "b"], {"colour": "red"}],
        None,
    )


class Counter(Component):
    """Publishes its count after each reply to ``count``."""

    type = "daq"
    channels = {"count": "text/plain"}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[str, str]] = []
        self.n = 0

    @command("count", help="count one more")
    async def count(self) -> int:
        self.n += 1
        return self.n

    async def replied(self, cmd: Command, reply: Reply) -> None:
        self.seen.append((cmd.verb, reply.status))
        if reply.ok and cmd.verb == "count":
            await self.data.put("count", str(reply.result).encode())


async def test_frames_put_after_a_reply_are_on_the_broker_when_the_reply_is(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(30):
        async with open_broker() as address:
            counter = Counter("c1", address)
            await nursery.start(counter.serve)
            async with open_client(address) as tb:
                for n in (1, 2):
                    assert (await send_command(tb, "daq_c1", "count")).result == n
                    frames = await tb.fetch("daq_c1_data_source/count", newest=1)
                    assert [f.data for f in frames] == [str(n).encode()]
                assert not (await send_command(tb, "daq_c1", "nonsense")).ok
            assert counter.seen == [("count", "ok"), ("count", "ok"), ("nonsense", "error")]
            nursery.cancel_scope.cancel()


class QuietCounter(Counter):
    command_log_level = logging.DEBUG


@pytest.mark.parametrize(("kind", "logged_at"), [(Counter, "INFO"), (QuietCounter, "DEBUG")])
async def test_commands_are_logged_at_the_components_level(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, kind: type[Counter], logged_at: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="daq_c2")
    with trio.fail_after(30):
        async with open_broker() as address:
            await nursery.start(kind("c2", address).serve)
            async with open_client(address) as tb:
                await send_command(tb, "daq_c2", "count")
            nursery.cancel_scope.cancel()
    said = [
        r for r in caplog.records if r.name == "daq_c2" and r.getMessage().startswith("command ")
    ]
    assert [(r.levelname, r.getMessage().split(" from ")[0]) for r in said] == [
        (logged_at, "command count")
    ]
