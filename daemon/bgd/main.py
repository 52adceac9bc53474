"""`bgd`: run the daemon in the foreground."""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from pathlib import Path

import trio

from bgcore import paths

from bgd import __version__

# A young collection once this many more containers were made than freed (CPython's default is
# 700): a request's short-lived ones (a GitHub delivery's parsed payload alone is hundreds of dicts)
# set off the default every request or two, each tracing what that request still holds.
GC_YOUNG_THRESHOLD = 10_000


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        # A cluster worker (SPEC §14): its own process, asyncio, no socket.
        from bgd.cluster.worker import main as worker_main
        return worker_main(argv[1:])
    parser = argparse.ArgumentParser(prog="bgd", description="The bgagents daemon (runs in the foreground).")
    parser.add_argument("--socket", help="socket path (default: $BGD_SOCKET or the user runtime dir)")
    parser.add_argument("--config-dir", help="config dir (default: $BGD_CONFIG_DIR or ~/.config/bgagents)")
    parser.add_argument("--state-dir", help="state dir (default: $BGD_STATE_DIR or ~/.local/state/bgagents)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--version", action="version", version=f"bgd {__version__}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s bgd[%(process)d] %(levelname)s %(name)s: %(message)s")
    from bgcore.config import ConfigError
    from bgd.daemon import AlreadyRunning, Daemon
    from bgd.store import StoreError
    from bgd import features
    features.register_methods()
    socket_path = paths.socket_path(args.socket)
    config_dir = Path(args.config_dir) if args.config_dir else paths.config_dir()
    state_dir = Path(args.state_dir) if args.state_dir else paths.state_dir()
    try:
        daemon = Daemon(socket_path, config_dir, state_dir)
        features.install(daemon)
        # What is loaded by now (modules, features, the stored sessions) lives as long as the daemon:
        # out of the collector's sight.
        gc.freeze()
        gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
        trio.run(daemon.run)
    except AlreadyRunning as exc:
        print(f"bgd: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"bgd: {exc}\nfix the file and start bgd again", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"bgd: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
