"""The example component and its tests in docs/components.rst run as written."""

from __future__ import annotations

import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

DOC = Path(__file__).resolve().parent.parent / "docs" / "components.rst"


def literal_block(after: str) -> str:
    """The ``::`` literal block that follows the line ending with ``after``."""
    lines = DOC.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.rstrip().endswith(after))
    block: list[str] = []
    for line in lines[start + 1 :]:
        if line and not line.startswith(" "):
            break
        block.append(line)
    return textwrap.dedent("\n".join(block)).strip("\n") + "\n"


@pytest.fixture
def counter_module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType("components.counter.component")
    monkeypatch.setitem(sys.modules, "components.counter", types.ModuleType("components.counter"))
    monkeypatch.setitem(sys.modules, "components.counter.component", module)
    exec(
        compile(literal_block("``components/counter/component.py``::"), str(DOC), "exec"),
        module.__dict__,
    )
    return module


@pytest.mark.parametrize(
    "test", ["test_counts_in_steps_on_the_turbine", "test_run_without_a_broker"]
)
def test_the_documented_tests_pass(counter_module: types.ModuleType, test: str) -> None:
    namespace: dict[str, Any] = {}
    exec(compile(literal_block("``tests/test_counter.py``::"), str(DOC), "exec"), namespace)
    clock = trio.testing.MockClock(autojump_threshold=0)
    trio.run(namespace[test], clock, clock=clock)
