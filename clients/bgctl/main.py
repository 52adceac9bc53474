"""`bgctl`: the command-line client of bgd (SPEC §3).

Exit codes (one IntEnum, as httpie does): 0 ok, 1 the daemon answered with
an error, 2 usage error, 3 the daemon cannot be reached, 130 interrupted.
Command modules register their subcommands through `register(sub, common)`;
each handler is `handler(args, ctx) -> int`.
"""

from __future__ import annotations

import argparse
import enum
import json
import os
import sys
from typing import Any, Callable

from bgcore.jsonrpc import RpcError

from .client import Client, DaemonUnreachable


class ExitStatus(enum.IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    UNREACHABLE = 3
    INTERRUPTED = 130


class UsageError(Exception):
    """Bad arguments: exit 2, with an optional second line saying the fix."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


class Context:
    """What a command needs from the world: the client, output streams, flags."""

    def __init__(self, args: argparse.Namespace, out=None, err=None):
        self.args = args
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self._client: Client | None = None

    @property
    def json(self) -> bool:
        return bool(getattr(self.args, "json", False))

    def client(self, spawn: bool | None = None) -> Client:
        if self._client is None:
            if spawn is None:
                spawn = not (getattr(self.args, "no_spawn", False) or os.environ.get("BGCTL_NO_SPAWN") == "1")
            self._client = Client.connect(getattr(self.args, "socket", None), spawn=spawn)
        return self._client

    def call(self, method: str, params: Any = None) -> Any:
        return self.client().call(method, params)

    def print(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def print_json(self, value: Any) -> None:
        self.out.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
        self.out.flush()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def add_common(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: a flag given before the subcommand is not overwritten by the
    # subparser's default.
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print exactly one JSON document")
    parser.add_argument("--socket", default=argparse.SUPPRESS, help="daemon socket (default: $BGD_SOCKET)")
    parser.add_argument("--no-spawn", action="store_true", default=argparse.SUPPRESS,
                        help="do not start the daemon when none answers")


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 itself; keep our one-line format
        raise UsageError(message, f"see `{self.prog} --help`")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser; given argv, only the subparser of the command it names.

    Building every subparser costs a few milliseconds of bgctl's start (SPEC §12:
    it must start fast), so `main` builds just the one it needs.  A word that is
    not a command gets the whole parser, whose error lists the real ones.
    """
    from . import commands

    wanted = _command_word(argv) if argv is not None else None
    parser = Parser(prog="bgctl", description="Control bgd, the background agent daemon.")
    add_common(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    target = _OnlyCommand(sub, wanted) if wanted else sub
    for module in commands.modules():
        module.register(target, add_common)
    if wanted and wanted not in sub.choices:
        return build_parser()
    return parser


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


class _OnlyCommand:
    """Stands in for the subparsers action: builds only the wanted command's parser."""

    def __init__(self, sub, wanted: str):
        self._sub = sub
        self._wanted = wanted

    def add_parser(self, name: str, **kwargs):
        if name == self._wanted or self._wanted in kwargs.get("aliases", ()):
            return self._sub.add_parser(name, **kwargs)
        return _Unbuilt()

    def __getattr__(self, name: str):
        return getattr(self._sub, name)


class _Unbuilt:
    """A parser nobody will use: accepts every call and chain, builds nothing."""

    def __getattr__(self, name: str):
        return self

    def __call__(self, *args, **kwargs):
        return self


def main(argv: list[str] | None = None, out=None, err=None) -> int:
    err = err or sys.stderr
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    ctx = None
    try:
        args = parser.parse_args(argv)
        handler: Callable | None = getattr(args, "handler", None)
        if handler is None:
            parser.print_help(out or sys.stdout)
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
