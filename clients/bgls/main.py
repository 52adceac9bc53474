"""`bgls [--socket PATH] [--no-spawn]`: the language server on stdio."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from bgcore import paths

from . import __version__


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bgls", description="bgagents language server (LSP over stdio); editors start it.")
    parser.add_argument("--socket", metavar="PATH", help="the daemon's socket (default: $BGD_SOCKET or "
                                                         "the user runtime dir)")
    parser.add_argument("--no-spawn", action="store_true",
                        help="do not start bgd when it is not running (also BGCTL_NO_SPAWN=1)")
    parser.add_argument("--log-level", default=os.environ.get("BGLS_LOG", "WARNING"),
                        help="stderr log level: DEBUG, INFO, WARNING (default; also $BGLS_LOG)")
    parser.add_argument("--stdio", action="store_true", help="accepted for editors that pass it; stdio is the default")
    parser.add_argument("--version", action="version", version=f"bgls {__version__}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # stdout is the protocol: keep a private handle on it and point fd 1 (and
    # sys.stdout) at stderr, so a stray print or a child process cannot corrupt it.
    lsp_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(),
                        format="bgls %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pygls").setLevel(max(logging.WARNING, logging.getLogger().level))

    from .server import build_server

    spawn = not (args.no_spawn or os.environ.get("BGCTL_NO_SPAWN") == "1")
    server = build_server(paths.socket_path(args.socket), spawn=spawn)
    server.start_io(sys.stdin.buffer, lsp_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
