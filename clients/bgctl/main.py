"""`bgctl`: the command-line client of bgd (SPEC §3).

Exit codes (one IntEnum, as httpie does): 0 ok, 1 the daemon answered with an error, 2 usage error,
3 the daemon cannot be reached, 130 interrupted.  Command modules register their subcommands through
`register(sub, add_common)`; each handler is `handler(args, ctx) -> int`.

SPEC §12 wants bgctl to start about as fast as a bare Python process that opens a socket, so a
command line imports only the module of the command it names (`commands.COMMANDS`), which records
its arguments on a `Spec`; `quick_parse` reads the usual command lines from that record and argparse
is imported only for help, usage errors and unusual spellings (`bgctl.full_parser`).
"""

from __future__ import annotations

import sys

from bgcore.jsonrpc import RpcError

from . import commands
from .arguments import Spec, quick_parse
from .cli_common import Context, ExitStatus, UsageError, add_common
from .client import DaemonUnreachable

DESCRIPTION = "Control bgd, the background agent daemon."


def command_spec(word: str | None = None) -> Spec:
    """The recorded arguments of every command, or only of the module that registers `word`."""
    root = Spec(prog="bgctl", description=DESCRIPTION)
    add_common(root)
    sub = root.add_subparsers(dest="command", metavar="COMMAND")
    for module in commands.modules() if word is None else [commands.module_for(word)]:
        module.register(sub, add_common)
    return root


def build_parser(argv: list[str] | None = None):
    """The argparse parser: the whole one; given argv, with only the subparser of the command it names.

    A word that is not a command gets the whole parser, whose error lists the real ones.
    """
    from . import full_parser

    word = _command_word(argv) if argv is not None else None
    if word not in commands.COMMANDS:
        word = None
    return full_parser.build(command_spec(word), only=word)


def parse(argv: list[str]):
    """The parsed command line; UsageError for a bad one (argparse's --help exits by itself)."""
    word = _command_word(argv)
    if word in commands.COMMANDS:
        spec = command_spec(word)
        args = quick_parse(spec, argv)
        if args is not None:
            return args
    else:
        word, spec = None, command_spec()
    from . import full_parser

    return full_parser.build(spec, only=word).parse_args(argv)


def _command_word(argv: list[str]) -> str | None:
    """The subcommand argv names: its first word that is not an option (or --socket's value)."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word == "--socket":
            skip = True
        elif word == "--":
            return None
        elif not word.startswith("-"):
            return word
    return None


def main(argv: list[str] | None = None, out=None, err=None) -> int:
    err = err or sys.stderr
    argv = list(sys.argv[1:] if argv is None else argv)
    ctx = None
    try:
        args = parse(argv)
        handler = getattr(args, "handler", None)
        if handler is None:
            build_parser().print_help(out or sys.stdout)
            return ExitStatus.USAGE
        ctx = Context(args, out, err)
        return int(handler(args, ctx) or 0)
    except UsageError as exc:
        err.write(f"bgctl: {exc}\n" + (f"{exc.hint}\n" if exc.hint else ""))
        return ExitStatus.USAGE
    except RpcError as exc:
        err.write(f"bgctl: {exc.message}\n")
        return ExitStatus.ERROR
    except DaemonUnreachable as exc:
        err.write(f"bgctl: {exc}\nstart it with `bgctl daemon start` (or run `bgd`)\n")
        return ExitStatus.UNREACHABLE
    except KeyboardInterrupt:
        return ExitStatus.INTERRUPTED
    except BrokenPipeError:
        return ExitStatus.OK
    finally:
        if ctx is not None:
            ctx.close()


if __name__ == "__main__":
    sys.exit(main())
