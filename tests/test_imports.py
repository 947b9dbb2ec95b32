"""turbine/ has no import cycle: each module can be understood from the ones below it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import turbine

PACKAGE = Path(turbine.__file__).parent


def module_name(path: Path) -> str:
    """``turbine/cli/serve.py`` -> ``cli.serve``; a package is its ``__init__``: ``cli``."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Modules of turbine/ that ``path`` imports anywhere (type-checking and local imports
    too), each with the packages above it (importing ``archive._store`` runs ``archive``)
    but for the packages ``path`` itself is in: those are running already."""
    me = module_name(path)
    here = me.split(".") if me else []
    if path.name != "__init__.py":
        here = here[:-1]  # the package a module's relative imports start from
    named: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if not (node.module or "").startswith("turbine."):
                    continue
                base = ".".join(node.module.split(".")[1:])  # type: ignore[union-attr]
            else:
                up = here[: len(here) - (node.level - 1)]
                base = ".".join([*up, *filter(None, (node.module or "").split("."))])
            subs = {f"{base}.{a.name}".lstrip(".") for a in node.names} & modules
            named |= subs if len(subs) == len(node.names) else subs | {base}
        elif isinstance(node, ast.Import):
            named.update(
                a.name.split(".", 1)[1] for a in node.names if a.name.startswith("turbine.")
            )
    running = {".".join(here[:i]) for i in range(1, len(here) + 1)}
    found = set(named)
    for name in named:
        parts = name.split(".")
        found.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return (found - (running - named)) & modules


def graph() -> dict[str, set[str]]:
    """Every module of turbine/ (subpackages' too) and the ones it imports.

    ``turbine/__init__.py`` re-exports names on first use and is left out; a
    ``__main__`` is a program's entry that nothing imports, so it closes no cycle.
    """
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py"}
    modules = set(paths)
    return {name: imports_of(path, modules) - {name} for name, path in paths.items()}


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
    assert {"client", "cli._common"} <= edges["cli.data"]  # and those of subpackages
    assert "archive" in edges["cli.serve"]  # importing archive._serve runs archive/__init__
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
    assert not sorted(loaded & NOT_FOR_A_PLAIN_CLIENT)
    assert turbine.Component.__module__ == "turbine.component"  # and they still load
    assert {"serve_turbine", "connect", "ConfigError"} <= set(dir(turbine))


@pytest.mark.parametrize(
    "first",
    ["turbine.send_command", "turbine.Component", "import turbine.command", "pass"],
)
def test_turbine_command_is_the_decorator_whatever_loads_the_command_module(first: str) -> None:
    # The module turbine/command.py is loaded on first use; loading it does not
    # bind its name over the component framework's decorator.
    script = (
        f"import turbine; {first}; from turbine.command import COMMAND_CHANNEL; "
        "from turbine import command; import turbine.component as c; "
        "assert command is c.command is turbine.command, command; "
        "assert turbine.Command.__module__ == 'turbine.command'"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


#: What a client that neither reconnects nor speaks TLS never needs: the broker,
#: the component framework, the spool, TLS, the CLI and what they import.
NOT_FOR_A_PLAIN_CLIENT = {
    "turbine.server",
    "turbine.hub",
    "turbine.router",
    "turbine.store",
    "turbine.component",
    "turbine.auth",
    "turbine.tls",
    "turbine._client_spool",
    "turbine._client_flushes",
    "turbine._spool_file",
    "turbine.cli",
    "turbine.mcp",
    "turbine.archive",
    "tomllib",
    "uuid",
    "json",  # for metadata and commands only; its regular expressions cost 1-2 ms to build
    "encodings.idna",  # what getaddrinfo imports for a host given as str (1.3-1.5 ms)
    "turbine.command",  # commands and replies: send_command, the component framework
    "turbine._retry",
    "turbine._blocking",  # file work in threads: the spool, components
    "secrets",
    "click",
    "importlib.metadata",
}

CLIENT_SCRIPT = """
import sys, trio, turbine
async def main(address):
    async with turbine.open_client(address) as tb:
        src = await tb.open_source("daq_imports_data_source", channels={"x": "text/plain"})
        await src.put("x", b"one")
        await src.flush()
        async with tb.subscribe("daq_imports_data_source/x", start="oldest") as sub:
            await sub.__anext__()
        assert [f.data for f in await tb.fetch("daq_imports_data_source/x", newest=1)] == [b"one"]
trio.run(main, sys.argv[1])
print(" ".join(sorted(sys.modules)))
import attrs
print(" ".join(
    f"{name}.{cls.__name__}"
    for name, module in sorted(sys.modules.items()) if name.startswith("turbine")
    for cls in vars(module).values()
    if isinstance(cls, type) and cls.__module__ == name and attrs.has(cls)
))
"""


async def test_a_client_that_connects_puts_subscribes_and_fetches_loads_nothing_it_does_not_use(
    broker: str,
) -> None:
    # No cost moved from `import turbine` into the first call: what a plain
    # client loads on its way through is held to the same list.
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, "-c", CLIENT_SCRIPT, broker], capture_stdout=True, capture_stderr=True
        )
    modules, attrs_classes = (done.stdout.decode().split("\n") + ["", ""])[:2]
    loaded = set(modules.split())
    assert "turbine.client" in loaded, done.stderr.decode()
    assert not sorted(loaded & NOT_FOR_A_PLAIN_CLIENT)
    # Building an attrs class costs about 0.4 ms of CPU (its methods' code is
    # generated): a plain client's modules define theirs as turbine._values.Value.
    assert not attrs_classes.split()


def test_a_cli_command_loads_only_its_own_module() -> None:
    # Every `turbine` process pays for what `turbine.cli` imports: the broker,
    # the MCP (and importlib.metadata, for the installed component kinds) and
    # the archive load only for the commands that run them.
    script = (
        "import sys; from turbine.cli import main; "
        "main(['fetch', '--help'], standalone_mode=False); "
        "print(' '.join(sorted(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    loaded = set(done.stdout.split())
    assert "turbine.cli.data" in loaded, done.stderr
    broker_and_site = {
        "turbine.server",
        "turbine.hub",
        "turbine.router",
        "turbine.store",
        "turbine.sources",
        "turbine.summary",
        "turbine.component",
        "turbine.mcp",
        "turbine.kinds",
        "turbine.archive",
        "turbine.cli.serve",
        "turbine.cli.components",
        "importlib.metadata",
    }
    assert not sorted(loaded & broker_and_site)
