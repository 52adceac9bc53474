"""The daemon's features, in one list: each is a package `bgd.<name>` with its RPC
handlers in `methods.py` and, if it runs beside the sessions, an `install(daemon)`.

A new feature adds its name here; nothing else in the daemon changes.
"""

from __future__ import annotations

from importlib import import_module

# Infrastructure handlers (daemon.*, events.*, schedule.*) live in bgd.rpc.
RPC_MODULES = ("bgd.rpc.daemon_methods", "bgd.rpc.event_methods", "bgd.rpc.schedule_methods")
FEATURES = ("sessions", "loops", "tasks", "environments", "routines", "web", "cluster")


def register_methods() -> None:
    """Import every handler module, which registers its methods in bgd.rpc.table.METHODS."""
    for name in RPC_MODULES:
        import_module(name)
    for feature in FEATURES:
        import_module(f"bgd.{feature}.methods")


def install(daemon) -> None:
    """Wire the features that run beside the sessions into the daemon."""
    for feature in FEATURES:
        package = import_module(f"bgd.{feature}")
        if hasattr(package, "install"):
            package.install(daemon)
