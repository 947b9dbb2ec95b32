"""Components: ``turbine cmd``, ``turbine components`` and ``turbine new component``."""

from __future__ import annotations

import json
from typing import Any

import click

from .._format import fmt_bytes, fmt_duration, program_table
from .._values import value_dict
from ..client import Client
from ..command import NoReply, send_command
from ._common import client_command


def reply_text(verb: str, result: Any) -> str:
    """An ok reply's result as ``turbine cmd`` prints it.

    Text as it is; ``help``'s table of usage lines one per line (each names
    its verb); an MCP's ``status`` as a table of its programs; anything else
    as indented JSON.
    """
    if isinstance(result, str):
        return result
    if (
        verb == "help"
        and isinstance(result, dict)
        and all(isinstance(v, str) for v in result.values())
    ):
        return "\n".join(result[k] for k in sorted(result))
    if verb == "status" and _is_site(result):
        return _site_text(result)
    return json.dumps(result, indent=2, default=str)


def _is_site(result: Any) -> bool:
    """Whether ``result`` is an MCP's status: its programs, each with a state."""
    programs = result.get("programs") if isinstance(result, dict) else None
    return isinstance(programs, dict) and all(
        isinstance(p, dict) and {"name", "kind", "state", "pid", "restarts"} <= p.keys()
        for p in programs.values()
    )


def _site_text(st: dict[str, Any]) -> str:
    """An MCP's status for a person: the MCP, its programs, its broker's data."""
    lines = [
        f"{st.get('component', 'the MCP')} {st.get('state', '')}, up "
        f"{fmt_duration(st.get('uptime'))}: {st.get('config', '?')}, broker {st.get('broker', '?')}",
        "",
        *program_table(
            {"uptime": None, "last_exit_text": "-", **p} for p in st["programs"].values()
        ),
    ]
    broker = st["programs"].get("broker", {})
    if broker.get("data_dir"):
        lines += [
            "",
            f"broker data dir {broker['data_dir']}: {fmt_bytes(broker.get('disk_bytes') or 0)}",
        ]
    lines += ["", "(--json: every field)"]
    return "\n".join(lines)


@click.command()
@click.argument("target")
@click.argument("verb")
@click.argument("args", nargs=-1)
@click.option(
    "--timeout",
    "wait",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0.001),
    help="Seconds to wait for the reply (also the command's deadline).",
)
@click.option("--json", "as_json_", is_flag=True, help="Print the whole reply as JSON.")
@client_command
async def cmd(
    tb: Client, target: str, verb: str, args: tuple[str, ...], wait: float, as_json_: bool
) -> None:
    """Send VERB [ARGS...] to component TARGET (<type>_<name>) and print its reply.

    A text reply is printed as it is, an MCP's status as a table of its
    programs, any other result as JSON; --json prints the whole reply.
    Exit 0 when the reply is ok, 1 on an error reply, 2 when no reply came in time.
    """
    try:
        reply = await send_command(tb, target, verb, *args, wait=wait)
    except NoReply as exc:
        click.echo(f"Error: {exc}", err=True)
        raise SystemExit(2) from None
    if as_json_:
        click.echo(json.dumps(value_dict(reply), indent=2, default=str))
    elif reply.ok:
        click.echo(reply_text(verb, reply.result))
    else:
        click.echo(f"{target} {verb}: {reply.status}: {reply.error}", err=True)
    if not reply.ok:
        raise SystemExit(1)


@click.command()
@click.option("--json", "as_json_", is_flag=True, help="One JSON document with every field.")
def components(as_json_: bool) -> None:
    """List the component kinds installed and where each comes from.

    A kind is registered in the ``turbine.components`` entry-point group by the
    distribution that provides it; TYPE is its sources' type, or ``process``
    for a program with no component class (a ``[[process]]`` kind).
    """
    from .. import kinds

    rows = []
    for kind in kinds.available():
        try:
            ty = kind.component_class().type
        except LookupError:
            ty = "process"
        except Exception as exc:  # a broken third-party package: say so, list the rest
            ty = f"? ({type(exc).__name__}: {exc})"
        row = {"kind": kind.name, "type": ty, "module": kind.module, "from": kind.origin}
        rows.append({**row, "path": kind.location()} if as_json_ else row)
    for lost, used in kinds.hidden():
        click.echo(
            f"warning: kind {lost.name!r} of {lost.origin} ({lost.module}) is hidden by"
            f" {used.origin} ({used.module}): rename one of them or uninstall one",
            err=True,
        )
    if as_json_:
        click.echo(json.dumps(rows, indent=2))
        return
    heads = ("kind", "type", "module", "from")
    widths = {h: max([len(h)] + [len(r[h]) for r in rows]) + 2 for h in heads[:-1]}
    click.echo("".join(f"{h.upper():<{widths[h]}}" for h in heads[:-1]) + "FROM")
    for r in rows:
        click.echo("".join(f"{r[h]:<{widths[h]}}" for h in heads[:-1]) + r["from"])


@click.group()
def new() -> None:
    """Write the skeleton of something new (a component package)."""


@new.command("component")
@click.argument("kind")
@click.option(
    "--dir",
    "where",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False),
    help="The directory the package directory KIND/ goes in.",
)
@click.option("--type", "type_", default="daq", show_default=True, help="The type of its sources.")
def new_component(kind: str, where: str, type_: str) -> None:
    """Write KIND/: a package with a component, its settings class, a __main__, a test
    using turbine.testing and its turbine.components entry point.

    The test passes as written; once installed, the kind runs under turbine mcp.
    """
    from pathlib import Path

    from ..scaffold import new_component as write

    try:
        files = write(kind, Path(where), type_)
    except (ValueError, FileExistsError) as exc:
        raise click.UsageError(str(exc)) from None
    for path in files:
        click.echo(f"wrote {path}")
    root = Path(where) / kind
    click.echo(f"next: pip install -e '{root}[test]' && (cd {root} && python -m pytest)")
