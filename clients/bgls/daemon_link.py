"""bgls's link to the daemon: the shared asyncio link (bgcore.aio_link), set up for an editor.

Two kinds of connection: a short one per call (the daemon answers a connection's
requests in order, so separate connections keep a slow call from holding up the
others), and the link's long-lived subscription that follows the event stream.
The follower reconnects after the daemon goes away and resumes with `since`, so
nothing is lost or seen twice; when the daemon says events were missed (or on
the first connect) it reloads the sessions whole.  Calls and the first connect
start the daemon when none runs (bgctl's start-on-demand), unless spawn=False.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

from bgcore import aio_link
from bgcore.aio_link import DaemonUnreachable
from bgcore.jsonrpc import RpcError

CALL_TIMEOUT_S = 60.0
RETRY_FIRST_S = 0.02
RETRY_MAX_S = 1.0
EVENT_TYPES = ["session.created", "session.updated", "session.removed"]


class EventSink(Protocol):
    """What the follower tells the server."""

    def on_reset(self, sessions: list[dict]) -> None: ...
    def on_events(self, events: list[dict]) -> None: ...
    def on_connection(self, connected: bool, detail: str | None) -> None: ...


class DaemonLink(aio_link.DaemonLink):
    def __init__(self, socket_path: Path, *, spawn: bool = True,
                 spawner: Callable[[Path], Any] | None = None):
        super().__init__(socket_path, types=EVENT_TYPES, spawn=(spawner or _spawn_daemon) if spawn else None,
                         backoff=(RETRY_FIRST_S, RETRY_MAX_S), call_timeout=CALL_TIMEOUT_S)

    async def call(self, method: str, params: Any = None, *, spawn: bool | None = None,
                   timeout: float = CALL_TIMEOUT_S) -> Any:
        """One request on its own connection; raises RpcError (the daemon said no) or DaemonUnreachable."""
        return await self.call_alone(method, params, spawn=spawn is not False, timeout=timeout)

    async def follow(self, sink: EventSink) -> None:
        """Follow the event stream forever, reconnecting with `since` when the daemon comes back."""
        def resync(sessions: list[dict], since: list[dict]) -> None:
            # Applying what came after subscribing, in order, ends where the daemon is.
            sink.on_reset(sessions)
            if since:
                sink.on_events(since)

        self.on_resync, self.on_events, self.on_state = resync, sink.on_events, sink.on_connection
        await self.run()


def _spawn_daemon(path: Path) -> None:
    from bgctl.client import spawn_daemon  # the same start-on-demand as bgctl

    spawn_daemon(path)


__all__ = ["DaemonLink", "DaemonUnreachable", "EventSink", "RpcError", "EVENT_TYPES"]
