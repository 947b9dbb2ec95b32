"""``turbine mirror``: the command line of :func:`turbine.mirror.run_mirror`."""

from __future__ import annotations

import functools

import click

from ._constants import MIRROR_POLL_S
from ._errors import unwrap
from ._mirror_ask import MirrorUnsupported
from ._options import patterns_callback, token_file_callback
from ._signals import run_until_stopped
from .mirror import MirrorConfig, run_mirror
from .names import InvalidName, check_source_name


def _prefix_callback(ctx: click.Context, param: click.Parameter, prefix: str) -> str:
    """A click callback: a prefix that can go into source names, else a usage error."""
    try:
        if prefix:
            check_source_name(prefix, lenient=True)
    except InvalidName:
        raise click.BadParameter(
            f"{prefix!r} goes into the copies' source names: "
            "give one without whitespace, '/' or '*'"
        ) from None
    return prefix


_INSIDE = "--inside"
_SIDES = ("to", "from")


class _MirrorCommand(click.Command):
    """``turbine mirror``, where a bare ``--inside`` may come before a pattern.

    Click gives an option with an optional value the next word whatever it
    is, so ``--inside 'daq_*'`` would be a usage error ("not one of 'to',
    'from'").  Only ``to`` and ``from`` are ``--inside``'s values: before
    parsing, a bare ``--inside`` followed by any other word (not an option)
    is given its default, ``to``, so that word stays a pattern.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        words: list[str] = []
        for i, word in enumerate(args):
            words.append(word)
            if word == "--":
                words.extend(args[i + 1 :])
                break
            following = args[i + 1] if i + 1 < len(args) else "-"
            if word == _INSIDE and following not in _SIDES and not following.startswith("-"):
                words.append("to")
        return super().parse_args(ctx, words)


@click.command(cls=_MirrorCommand)
@click.option(
    "--from", "origin", required=True, metavar="HOST:PORT", help="The broker to copy from."
)
@click.option("--to", "target", required=True, metavar="HOST:PORT", help="The broker to copy to.")
@click.argument("patterns", nargs=-1, required=True, callback=patterns_callback)
@click.option(
    "--prefix",
    default="",
    callback=_prefix_callback,
    help="Put this after the type in each copy's name (daq_rig_data_source -> daq_PREFIXrig_data_source).",
)
@click.option(
    "--poll",
    type=click.FloatRange(min=0, min_open=True),
    default=MIRROR_POLL_S,
    show_default=True,
    metavar="SECONDS",
    help="How often to look for new sources and channels.",
)
@click.option(
    "--from-token-file",
    "origin_token",
    callback=token_file_callback,
    metavar="PATH",
    help="Log in to the origin with the token in this file (its user needs read there).",
)
@click.option(
    "--to-token-file",
    "target_token",
    callback=token_file_callback,
    metavar="PATH",
    help="Log in to the target with the token in this file (its user needs write there).",
)
@click.option(
    "--inside",
    type=click.Choice(_SIDES),
    is_flag=False,
    flag_value="to",
    default=None,
    help="Have a broker copy in its own process, without a process and a socket hop "
    "of its own: the target ('--inside' or '--inside to': it pulls) or the origin "
    "('--inside from': it pushes); this program asks it to and prints its reports.  "
    "A word after a bare --inside that is not 'to' or 'from' is a pattern.",
)
def mirror(
    origin: str,
    target: str,
    patterns: tuple[str, ...],
    prefix: str,
    poll: float,
    origin_token: str | None,
    target_token: str | None,
    inside: str | None,
) -> None:
    """Copy sources matching PATTERNS from one broker to another, now and as they grow.

    Frame N on the origin is frame N on the target, with its timestamp, writer
    and content type; frames the origin evicted before they were copied are
    the same gap on the target.  Runs until Ctrl-C or SIGTERM, connecting
    again whenever either broker goes away, and resumes where the target's
    copy stops.  Without a token file for a side it logs in there with the
    token any client finds (TURBINE_TOKEN, TURBINE_TOKEN_FILE, ~/.config/turbine/token).
    """
    config = MirrorConfig(
        origin,
        target,
        patterns,
        prefix,
        poll=poll,
        origin_token=origin_token,
        target_token=target_token,
        inside=inside or "",
    )

    try:
        run_until_stopped(
            "mirror",
            functools.partial(run_mirror, config),
            f"mirror: copying {' '.join(patterns)} from {origin} to {target}",
        )
    except BaseExceptionGroup as group:
        inner = unwrap(group)
        if isinstance(inner, MirrorUnsupported):  # (said once, exit status 1)
            raise click.ClickException(f"mirror: {inner}") from None
        raise
