"""The argparse parsers a recorded `Spec` describes: for --help, usage errors and unusual command lines.

Only imported when `bgctl.arguments.quick_parse` declines a command line (or to print help), so the
commands people type most start without argparse.
"""

from __future__ import annotations

import argparse

from . import arguments
from .cli_common import UsageError


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 itself; keep our one-line format
        raise UsageError(message, f"see `{self.prog} --help`")


def build(spec: arguments.Spec, only: str | None = None, parser_class: type = Parser) -> argparse.ArgumentParser:
    """The parser `spec` records; with `only`, its subcommands other than that one are left out
    (building every command's parser costs a few milliseconds, and one is all a command line needs)."""
    parser = parser_class(**_real(spec.kwargs))
    _replay(spec, parser, only)
    return parser


def _replay(spec: arguments.Spec, parser: argparse.ArgumentParser, only: str | None = None) -> None:
    for what, args, kwargs in spec.calls:
        if what == "add_subparsers":
            group, = args
            action = parser.add_subparsers(**_real(kwargs))
            for name, child in group.parsers.items():
                if only is None or name == only:
                    _replay(child, action.add_parser(name, **_real(child.kwargs)))
        else:
            getattr(parser, what)(*args, **_real(kwargs))


def _real(kwargs: dict) -> dict:
    """Keywords with argparse's own SUPPRESS and REMAINDER objects (it compares SUPPRESS by identity)."""
    out = dict(kwargs)
    for key, value in kwargs.items():
        if isinstance(value, str):
            if value == arguments.SUPPRESS:
                out[key] = argparse.SUPPRESS
            elif value == arguments.REMAINDER and key == "nargs":
                out[key] = argparse.REMAINDER
    return out
