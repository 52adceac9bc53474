"""`bgctl agents`: the full-screen agent view (SPEC §9).

textual is imported inside the handler only, so every other bgctl command
starts without it.
"""

from __future__ import annotations

import os
import sys

from ..cli_common import ExitStatus, UsageError


def register(sub, add_common) -> None:
    p = sub.add_parser("agents", help="the terminal agent view: every session, live",
                       description="A full-screen view of every background session. Press ? inside for the keys.")
    add_common(p)
    p.add_argument("--cwd", default=None, help="directory the dispatch line starts sessions in (default: here)")
    p.set_defaults(handler=agents)


def agents(args, ctx) -> int:
    cwd = os.path.abspath(os.path.expanduser(args.cwd)) if args.cwd else os.getcwd()
    if not os.path.isdir(cwd):
        raise UsageError(f"--cwd {args.cwd} is not a directory")
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("bgctl agents needs a terminal", "for scripts, use `bgctl ls --json` or `bgctl events -f`")
    # Reach (or start) the daemon the usual way before taking over the screen,
    # so "cannot reach the daemon" is a normal one-line error and exit 3.
    client = ctx.client()
    socket_path = client.socket_path
    ctx.close()

    from bgcore import paths

    from .. import agents_model
    from ..agents_view import run

    code = run(socket_path, cwd, paths.state_dir() / agents_model.SETTINGS_FILE)
    return ExitStatus.OK if code == 0 else ExitStatus.ERROR
