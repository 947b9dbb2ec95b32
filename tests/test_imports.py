"""turbine/ has no import cycle: each module can be understood from the ones below it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import turbine

PACKAGE = Path(turbine.__file__).parent


def imports_of(path: Path) -> set[str]:
    """Modules of turbine/ that ``path`` imports anywhere (type-checking and local imports too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(a.name for a in node.names)
            elif node.level == 0 and (node.module or "").startswith("turbine."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("turbine."))
    return found


def graph() -> dict[str, set[str]]:
    modules = {p.stem for p in PACKAGE.glob("*.py")} | {
        p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()
    }
    return {
        p.stem: imports_of(p) & modules - {p.stem}
        for p in PACKAGE.glob("*.py")
        if p.stem != "__init__"
    }


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return path[path.index(node) :] + [node]
        if node in done or node not in edges:
            return None
        path.append(node)
        for nxt in sorted(edges[node]):
            cycle = visit(nxt)
            if cycle:
                return cycle
        path.pop()
        done.add(node)
        return None

    for start in sorted(edges):
        cycle = visit(start)
        if cycle:
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_turbine_modules_import_no_cycle():
    edges = graph()
    assert {"hub", "router", "store", "ringbuffer"} <= edges.keys()
    assert "router" in edges["hub"]  # the walk sees relative imports
    cycle = find_cycle(edges)
    assert cycle is None, f"import cycle in turbine/: {' -> '.join(cycle or [])}"


def test_a_client_imports_neither_the_broker_nor_the_component_framework():
    # `import turbine` is most of a short script's start-up (the history
    # benchmark's "connect"): the names a client does not use load on first use.
    script = (
        "import sys, turbine; turbine.open_client; turbine.Frame; "
        "print(' '.join(sorted(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    loaded = set(done.stdout.split())
    assert "turbine.client" in loaded, done.stderr
    heavy = {"turbine.server", "turbine.hub", "turbine.component", "turbine.auth", "tomllib"}
    assert not loaded & heavy
    assert turbine.Component.__module__ == "turbine.component"  # and they still load
    assert {"serve_turbine", "connect", "ConfigError"} <= set(dir(turbine))
