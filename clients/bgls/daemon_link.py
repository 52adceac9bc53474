"""bgls's link to the daemon: an asyncio client on the shared codec (bgcore.jsonrpc).

Two kinds of connection: a short one per call (the daemon answers a connection's
requests in order, so separate connections keep a slow call from holding up the
others), and one long-lived subscription that follows the event stream.  The
follower reconnects after the daemon goes away and resumes with `since`, so
nothing is lost or seen twice; when the daemon says events were missed (or on
the first connect) it reloads the sessions whole.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from pathlib import Path
from typing import Any, Callable, Protocol

from bgcore.jsonrpc import (NEED_DATA, FrameReader, Notification, RemoteProtocolError, Response, RpcError,
                            encode_request)

log = logging.getLogger("bgls.daemon")

READ_LIMIT = 256 << 20  # a transcript answer can be big
CALL_TIMEOUT_S = 60.0
RETRY_FIRST_S = 0.02
RETRY_MAX_S = 1.0
EVENT_TYPES = ["session.created", "session.updated", "session.removed"]


class DaemonUnreachable(Exception):
    """No daemon answers on the socket (and none could be started)."""


class EventSink(Protocol):
    """What the follower tells the server."""

    def on_reset(self, sessions: list[dict]) -> None: ...
    def on_events(self, events: list[dict]) -> None: ...
    def on_connection(self, connected: bool, detail: str | None) -> None: ...


class _Connection:
    """One socket to the daemon, framed by the shared codec."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.frames = FrameReader(READ_LIMIT)
        self.ids = itertools.count(1)
        self.pending: list = []  # read but not yet taken: what came in the same read as a response

    async def send(self, method: str, params: Any = None) -> int:
        msg_id = next(self.ids)
        self.writer.write(encode_request(method, params, msg_id))
        await self.writer.drain()
        return msg_id

    async def messages(self) -> list:
        """The next messages: every frame that one read completed (at least one)."""
        if self.pending:
            out, self.pending = self.pending, []
            return out
        while True:
            out = []
            while True:
                try:
                    frame = self.frames.next_frame()
                except RemoteProtocolError as exc:
                    if exc.fatal:
                        raise DaemonUnreachable(f"the daemon sent something unreadable: {exc.message}") from None
                    log.warning("skipping an unreadable frame from the daemon: %s", exc.message)
                    continue
                if frame is NEED_DATA:
                    break
                out.append(frame)
            if out:
                return out
            data = await self.reader.read(1 << 16)
            if not data:
                raise DaemonUnreachable("the daemon closed the connection")
            self.frames.receive_data(data)

    async def call(self, method: str, params: Any = None) -> Any:
        msg_id = await self.send(method, params)
        kept: list = []
        while True:
            batch = await self.messages()
            for i, msg in enumerate(batch):
                if isinstance(msg, Response) and (msg.id == msg_id or msg.id is None and msg.error is not None):
                    # Notifications around the response (a subscription's first events) stay for the reader.
                    self.pending = kept + batch[i + 1:] + self.pending
                    if msg.error is not None:
                        raise msg.error
                    return msg.result
                if isinstance(msg, Notification):
                    kept.append(msg)

    def close(self) -> None:
        self.writer.close()


class DaemonLink:
    def __init__(self, socket_path: Path, *, spawn: bool = True,
                 spawner: Callable[[Path], Any] | None = None):
        self.socket_path = socket_path
        self.spawn = spawn
        self._spawner = spawner
        self._spawn_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self.last_seq: int | None = None
        self.connected = False

    # -- calls ------------------------------------------------------------------

    async def call(self, method: str, params: Any = None, *, spawn: bool | None = None,
                   timeout: float = CALL_TIMEOUT_S) -> Any:
        """One request on its own connection; raises RpcError (the daemon said no) or DaemonUnreachable."""
        conn = await self._connect(self.spawn if spawn is None else spawn)
        try:
            return await asyncio.wait_for(conn.call(method, params), timeout)
        except asyncio.TimeoutError:
            raise DaemonUnreachable(f"the daemon did not answer {method} within {timeout:.0f}s") from None
        except OSError as exc:
            raise DaemonUnreachable(f"lost the connection to the daemon ({exc.strerror or exc})") from None
        finally:
            conn.close()

    async def _connect(self, spawn: bool) -> _Connection:
        try:
            return await self._open()
        except OSError as exc:
            if not spawn:
                raise DaemonUnreachable(f"no daemon answers on {self.socket_path} ({exc.strerror or exc})") from None
        async with self._spawn_lock:
            try:  # another caller may have started it while we waited for the lock
                return await self._open()
            except OSError:
                pass
            log.info("starting bgd for %s", self.socket_path)
            try:
                await asyncio.to_thread(self._spawner or _spawn_daemon, self.socket_path)
            except Exception as exc:  # the spawner's own error says what went wrong
                raise DaemonUnreachable(str(exc)) from None
            self._wake.set()  # the follower need not wait out its back-off
        try:
            return await self._open()
        except OSError as exc:
            raise DaemonUnreachable(f"no daemon answers on {self.socket_path} ({exc.strerror or exc})") from None

    async def _open(self) -> _Connection:
        reader, writer = await asyncio.open_unix_connection(str(self.socket_path), limit=1 << 20)
        return _Connection(reader, writer)

    # -- the event stream -----------------------------------------------------------

    async def follow(self, sink: EventSink) -> None:
        """Follow the event stream forever, reconnecting with `since` when the daemon comes back."""
        delay = RETRY_FIRST_S
        first = True
        while True:
            try:
                conn = await self._connect(spawn=first and self.spawn)
            except DaemonUnreachable as exc:
                if first or self.connected:
                    self.connected = False
                    sink.on_connection(False, str(exc))
                first = False
                await self._back_off(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            first = False
            try:
                await self._stream(conn, sink)
            except (DaemonUnreachable, OSError, RpcError) as exc:
                detail = exc.message if isinstance(exc, RpcError) else str(exc)
                log.info("event stream ended: %s", detail)
                if self.connected:
                    self.connected = False
                    sink.on_connection(False, detail)
                delay = RETRY_FIRST_S
            finally:
                conn.close()

    async def _back_off(self, delay: float) -> None:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), delay)
        except asyncio.TimeoutError:
            pass

    async def _stream(self, conn: _Connection, sink: EventSink) -> None:
        params: dict[str, Any] = {"types": EVENT_TYPES}
        if self.last_seq is not None:
            params["since"] = self.last_seq
        answer = await conn.call("events.subscribe", params)
        seq = answer.get("seq", 0)
        if self.last_seq is None or answer.get("missed") or seq < self.last_seq:
            # (a seq lower than ours: a daemon with a fresh state dir, a new history)
            # Events from here on are queued on `conn` while the list is read; applying
            # them afterwards, in order, ends where the daemon is.
            sessions = await self.call("session.list", {}, spawn=False)
            self.last_seq = seq
            sink.on_reset(sessions)
        log.info("following bgd events from seq %s", self.last_seq)
        self.connected = True
        sink.on_connection(True, None)
        while True:
            batch = []
            for msg in await conn.messages():
                if not isinstance(msg, Notification):
                    continue
                if msg.method == "events.overflow":
                    raise DaemonUnreachable("fell behind the event stream; resuming with since")
                event = msg.params if msg.method == "event" and isinstance(msg.params, dict) else None
                if event is None or not isinstance(event.get("seq"), int):
                    continue
                if event["seq"] <= (self.last_seq or 0):
                    continue  # already seen (a resync overlaps the live stream)
                self.last_seq = event["seq"]
                batch.append(event)
            if batch:
                sink.on_events(batch)


def _spawn_daemon(path: Path) -> None:
    from bgctl.client import spawn_daemon  # the same start-on-demand as bgctl

    spawn_daemon(path)

__all__ = ["DaemonLink", "DaemonUnreachable", "EventSink", "RpcError", "EVENT_TYPES"]
