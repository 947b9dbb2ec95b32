"""turbine/ stays in pieces one can read whole: no module over 500 lines, no class over 250.

How it counts: a module's lines are its physical lines (what ``wc -l`` says), blank
lines, comments and docstrings included; a class's lines are those from its
``class`` line to its last line (``ast``: ``end_lineno - lineno + 1``), so its
decorators are not counted but its docstring, comments and nested functions are.
Every ``.py`` file under turbine/ counts, subpackages included.  A class that
outgrows the limit is split along a seam (a separate object with a narrow handle),
not allowed more lines here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import turbine

PACKAGE = Path(turbine.__file__).parent
MODULE_LINES = 500
CLASS_LINES = 250


def sizes() -> tuple[dict[str, int], dict[str, int]]:
    """Lines of each module of turbine/ and of each class in them (``module:Class``)."""
    modules: dict[str, int] = {}
    classes: dict[str, int] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE.parent).as_posix()
        text = path.read_text()
        modules[name] = len(text.splitlines())
        for node in ast.walk(ast.parse(text, name)):
            if isinstance(node, ast.ClassDef):
                assert node.end_lineno is not None
                classes[f"{name}:{node.name}"] = node.end_lineno - node.lineno + 1
    return modules, classes


def test_no_module_in_turbine_is_over_500_lines_and_no_class_over_250():
    modules, classes = sizes()
    assert len(modules) > 50 and "turbine/hub.py:Hub" in classes  # it counted the package
    long_modules = {m: n for m, n in modules.items() if n > MODULE_LINES}
    long_classes = {c: n for c, n in classes.items() if n > CLASS_LINES}
    assert not long_modules, f"modules over {MODULE_LINES} lines (split them): {long_modules}"
    assert not long_classes, f"classes over {CLASS_LINES} lines (split them): {long_classes}"
