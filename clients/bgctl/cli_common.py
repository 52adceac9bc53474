"""What `bgctl.main` and every command module share: exit codes, usage errors, the context, common flags.

Standard library, `bgctl.arguments` and `bgctl.client` only (this is on every command's path), and no
import of `bgctl.main` or of a command module, so nothing here can close an import cycle.  Commands
declare their arguments with `REMAINDER` and `SUPPRESS` from here, not from argparse.
"""

from __future__ import annotations

import enum
import json
import os
import sys

from .arguments import REMAINDER, SUPPRESS
from .client import Client

__all__ = ["REMAINDER", "SUPPRESS", "Context", "ExitStatus", "UsageError", "add_common"]


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

    def __init__(self, args, out=None, err=None):
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

    def call(self, method: str, params=None):
        return self.client().call(method, params)

    def print(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def print_json(self, value) -> None:
        self.out.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
        self.out.flush()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def add_common(parser) -> None:
    """--json, --socket, --no-spawn: on the top parser and on every command's."""
    # SUPPRESS: a flag given before the subcommand is not overwritten by the
    # subparser's default.
    parser.add_argument("--json", action="store_true", default=SUPPRESS, help="print exactly one JSON document")
    parser.add_argument("--socket", default=SUPPRESS, help="daemon socket (default: $BGD_SOCKET)")
    parser.add_argument("--no-spawn", action="store_true", default=SUPPRESS,
                        help="do not start the daemon when none answers")
