"""JSON-RPC handlers, one module per namespace; importing this registers them all."""

from . import daemon, events, loop, schedule, session, task  # noqa: F401
