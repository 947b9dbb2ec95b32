"""``turbine new component KIND``: a package of its own that passes its own test as written.

What it writes, in ``KIND/`` under the directory given::

    KIND/pyproject.toml            # registers KIND in the turbine.components entry points
    KIND/README.rst                # how to install, test and run it
    KIND/KIND/__init__.py          # empty: no import-time side effects
    KIND/KIND/component.py         # the component and its settings class
    KIND/KIND/__main__.py          # python -m KIND --name NAME --turbine HOST:PORT
    KIND/tests/test_KIND.py        # its test, with turbine.testing

``pip install -e KIND`` makes the kind available to ``turbine mcp`` (see
``turbine components``); ``python -m pytest`` in ``KIND/`` runs its test.
The component is a counter, the smallest instrument that shows every part:
settings checked before start, frames stamped with the time they describe,
a command, an extended ``status``.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from . import kinds
from ._constants import SOURCE_TYPES

PYPROJECT = """
[build-system]
requires = ["setuptools>=70.1"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.1.0"
description = "The {kind} component for Turbine."
requires-python = ">=3.11"
dependencies = ["turbine"]

[project.optional-dependencies]
test = ["pytest>=8", "pytest-trio>=0.8"]

# `kind = "{kind}"` in a site's [[component]]; `turbine components` lists it once installed.
[project.entry-points."turbine.components"]
{kind} = "{kind}"

[tool.setuptools.packages.find]
include = ["{kind}*"]

[tool.pytest.ini_options]
testpaths = ["tests"]
trio_mode = true

[tool.ruff]
line-length = 100
"""

README = """
{kind}
{underline}

A Turbine component: ``{type}_<name>_data_source/count`` counts every
``interval`` seconds, in steps of ``step`` (command ``set-step``).

Install it where ``turbine mcp`` runs, and test it::

    pip install -e '.[test]'
    python -m pytest

Run it by hand::

    python -m {kind} --name lab1 --turbine 127.0.0.1:3333 --set step=5

or in a site file::

    [[component]]
    kind = "{kind}"
    name = "lab1"          # {type}_lab1
    [component.settings]
    interval = 0.5
"""

COMPONENT = '''
"""{cls}: a {type} component (docs/components.rst of Turbine says how each part works)."""

from __future__ import annotations

from typing import Any

import attrs
import trio
from turbine import Component, command
from turbine.settings import check


@attrs.frozen
class {cls}Settings:
    """Checked by the MCP before anything starts, and by ``--set`` on the command line."""

    interval: float = attrs.field(default=1.0, validator=check(lambda v: v > 0, "seconds > 0"))
    step: int = 1


class {cls}(Component):
    """Publishes a count every ``interval`` seconds on {type}_<name>_data_source/count."""

    type = "{type}"
    channels = {{"count": "text/plain"}}
    Settings = {cls}Settings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.count = 0  # on self: kept when run() is called again after a reconnect

    async def run(self) -> None:
        while True:
            # Stamp the frame with the time it describes (an instrument: its capture time);
            # self.now() is the wall clock, or the broker's with clock = "broker".
            await self.data.put("count", str(self.count).encode(), timestamp=self.now())
            await self.data.flush()
            self.count += self.config.step
            await trio.sleep(self.config.interval)

    def status(self) -> dict[str, Any]:
        return {{**super().status(), "count": self.count}}

    @command("set-step", help="count in steps of STEP")
    async def set_step(self, step: int) -> str:
        self.change_settings(step=step)
        await self.publish_metadata()
        return f"step {{step}}"


COMPONENT = {cls}
'''

MAIN = '''
"""``python -m {kind} --name NAME --turbine HOST:PORT [--set KEY=VALUE ...]``."""

from {kind}.component import {cls}

if __name__ == "__main__":
    {cls}.main()
'''

TEST = '''
"""{cls} on a real broker in the test's process, under trio's virtual clock."""

import trio
from turbine import open_client, send_command
from turbine.testing import fake_data, follow_trio_clock, next_frames, open_broker, serving

from {kind}.component import {cls}


async def test_counts_in_steps_on_the_turbine(autojump_clock):
    follow_trio_clock()
    with trio.fail_after(30):
        async with open_broker() as address, serving({cls}("t1", address)):
            async with open_client(address) as tb:
                reply = await send_command(tb, "{type}_t1", "set-step", 5)
                assert reply.ok and reply.result == "step 5"
                frames = await next_frames(tb, "{type}_t1_data_source/count", 2)
                assert int(frames[1].data) - int(frames[0].data) == 5
                assert round(frames[1].timestamp - frames[0].timestamp, 6) == 1.0  # interval
                status = (await send_command(tb, "{type}_t1", "status")).result
                assert status["settings"] == {{"interval": 1.0, "step": 5}}


async def test_run_without_a_broker(autojump_clock):
    component = {cls}("t1", config={{"interval": 0.5}})
    source = fake_data(component)
    with trio.move_on_after(2.0):  # virtual seconds: four counts
        await component.run()
    assert [f.data for f in source.frames("count")] == [b"0", b"1", b"2", b"3"]
'''


def new_component(kind: str, where: Path, type_: str = "daq") -> list[Path]:
    """Write the package ``where/kind`` (see the module docstring); return the files written.

    Raises:
        ValueError: ``kind`` cannot name a package and an entry point, is
            installed already, or ``type_`` is not a source type.
        FileExistsError: ``where/kind`` exists (nothing is overwritten).
    """
    if not kinds.valid_name(kind):
        raise ValueError(
            "expected a kind of lowercase letters, digits and '_' starting with a letter"
            f" (it names the package and the entry point, e.g. spectrometer), got {kind!r}"
        )
    taken = kinds.find(kind)
    if taken is not None:
        raise ValueError(
            f"kind {kind!r} is installed already ({taken.module}, {taken.origin}); choose another"
        )
    if type_ not in SOURCE_TYPES:
        raise ValueError(f"expected a source type, one of {', '.join(SOURCE_TYPES)}; got {type_!r}")
    root = where / kind
    if root.exists():
        raise FileExistsError(f"{root} exists already; choose another directory or kind")
    names = {
        "kind": kind,
        "type": type_,
        "cls": "".join(part.capitalize() for part in kind.split("_")),
        "dist": kind.replace("_", "-"),
        "underline": "=" * len(kind),
    }
    files = {
        root / "pyproject.toml": PYPROJECT,
        root / "README.rst": README,
        root / kind / "__init__.py": "",
        root / kind / "component.py": COMPONENT,
        root / kind / "__main__.py": MAIN,
        root / "tests" / f"test_{kind}.py": TEST,
    }
    for path, template in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(template.format(**names)).lstrip())
    return list(files)
