"""bgctl's commands, one module per group; each has `register(sub, add_common)`."""

from __future__ import annotations


def modules() -> list:
    from . import daemon, raw, sessions

    found = [daemon, sessions, raw]
    # Groups added by later features register here as well.
    for name in ("loops", "tasks", "schedule", "agents", "web"):
        try:
            found.append(__import__(f"{__name__}.{name}", fromlist=["register"]))
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
    return found
