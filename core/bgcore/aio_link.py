"""An asyncio client's link to bgd: calls, and an event stream that survives restarts.

Shared by the asyncio clients (bgls, the agent view) so they follow the daemon
the same way.  Standard library + `bgcore.jsonrpc` only; the daemon is started
on demand only through a `spawn` callable the client passes in (bgcore knows
no client).  Not for bgctl's hot path: importing asyncio costs start-up time.

`DaemonLink.run()` keeps one subscribed connection for as long as it runs:

- subscribe with `since` = the last event seq seen, so a reconnect resumes
  where it left off and nothing the daemon still retains is lost;
- resync with `session.list` on the first connect, when the daemon says
  events were missed, when its seq went backwards (a new state dir), or on
  every connect if asked to (`always_resync`).  Subscribing comes first, so an
  event between the two is in the stream or the list, never in neither; the
  events that arrive before the list answer are handed over with the list;
- never deliver an event twice (events at or below the last seq are dropped);
- after losing the daemon, retry with a doubling back-off.

Events that come in the same read as the subscribe answer are kept: the
reader hands every frame over in order, synchronously, and the link holds
events until it knows what the subscription means.

Two ways to call: `call()` uses the followed connection (an answer comes after
the events written before it; fails at once while the link is down), `call_alone()` a short
connection of its own (a slow call holds nothing up; may start the daemon).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from pathlib import Path
from typing import Any, Callable

from .jsonrpc import NEED_DATA, Batch, FrameReader, Notification, RemoteProtocolError, Response, RpcError, encode_request

log = logging.getLogger("bgcore.aio_link")

READ_LIMIT = 256 << 20  # a transcript answer can be big
CALL_TIMEOUT_S = 60.0
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 2.0
NOT_CONNECTED = "daemon unreachable — reconnecting…"


class DaemonUnreachable(Exception):
    """No daemon answers on the socket, or the connection to it was lost."""


class Connection:
    """One socket to the daemon: requests matched to answers by id, notifications to a callback.

    A reader task parses every frame as it arrives and hands them over in
    order, synchronously, so nothing that came with an answer is lost.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 on_notification: Callable[[Notification], None] | None = None, read_limit: int = READ_LIMIT):
        self.writer = writer
        self.on_notification = on_notification
        self._frames = FrameReader(read_limit)
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._ended: DaemonUnreachable | None = None
        self.reading = asyncio.create_task(self._read(reader))

    @classmethod
    async def open(cls, socket_path: Path, **kwargs: Any) -> "Connection":
        reader, writer = await asyncio.open_unix_connection(str(socket_path), limit=1 << 20)
        return cls(reader, writer, **kwargs)

    async def call(self, method: str, params: Any = None, timeout: float = CALL_TIMEOUT_S) -> Any:
        """One request; raises RpcError (the daemon said no) or DaemonUnreachable."""
        if self._ended is not None:
            raise DaemonUnreachable(str(self._ended))
        msg_id = next(self._ids)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._waiting[msg_id] = future
        try:
            self.writer.write(encode_request(method, params, msg_id))
            await self.writer.drain()
            return await asyncio.wait_for(future, timeout)
        except OSError as exc:
            raise DaemonUnreachable(f"lost the connection to the daemon ({exc.strerror or exc})") from None
        except asyncio.TimeoutError:
            raise DaemonUnreachable(f"the daemon did not answer {method} within {timeout:.0f}s") from None
        finally:
            self._waiting.pop(msg_id, None)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                try:
                    data = await reader.read(1 << 16)
                except OSError as exc:
                    raise DaemonUnreachable(f"lost the connection to the daemon ({exc.strerror or exc})") from None
                if not data:
                    raise DaemonUnreachable("the daemon closed the connection")
                self._frames.receive_data(data)
                while True:
                    try:
                        frame = self._frames.next_frame()
                    except RemoteProtocolError as exc:
                        if exc.fatal:
                            raise DaemonUnreachable(f"the daemon sent something unreadable: {exc.message}") from None
                        log.warning("skipping an unreadable frame from the daemon: %s", exc.message)
                        continue
                    if frame is NEED_DATA:
                        break
                    for msg in frame.items if isinstance(frame, Batch) else [frame]:
                        self._take(msg)
        except DaemonUnreachable as exc:
            self._end(exc)
        except Exception as exc:  # a bug in a callback's caller: end this connection, never hang a call
            log.exception("reading from the daemon failed")
            self._end(DaemonUnreachable(f"{type(exc).__name__}: {exc}"))
        finally:
            self._end(DaemonUnreachable("the connection was closed"))

    def _take(self, msg: Any) -> None:
        if isinstance(msg, Response):
            if msg.id is None and msg.error is not None:
                # An error not tied to a request ("this bgd belongs to another user"): the answer
                # to every call waiting, and the end of the connection.
                for future in self._waiting.values():
                    if not future.done():
                        future.set_exception(msg.error)
                raise DaemonUnreachable(msg.error.message)
            future = self._waiting.get(msg.id)
            if future is not None and not future.done():
                if msg.error is not None:
                    future.set_exception(msg.error)
                else:
                    future.set_result(msg.result)
        elif isinstance(msg, Notification) and self.on_notification is not None:
            self.on_notification(msg)

    def _end(self, reason: DaemonUnreachable) -> None:
        if self._ended is None:
            self._ended = reason
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(DaemonUnreachable(str(self._ended)))
        self._waiting.clear()

    async def wait_closed(self) -> DaemonUnreachable:
        """Wait until the connection ends; return why."""
        await asyncio.wait({self.reading})  # (never raises, even once the reader is cancelled)
        return self._ended or DaemonUnreachable("the connection was closed")

    def close(self) -> None:
        self.reading.cancel()
        self.writer.close()


class DaemonLink:
    """A self-healing link to the daemon.

    on_events(events)          events after the (re)sync, a list per read, in seq order, each once
    on_resync(sessions, since) the full `session.list`, and the events newer than the subscription
                               that came before the list answer was taken in (given only here, not
                               to on_events), so the list can be corrected where they are newer
    on_state(connected, detail) the link went up (detail None) or down (detail says why);
                               called on each change, and once if the first attempt fails

    spawn(socket_path) starts a daemon (blocking; run in a thread); when given, the
    first connection of `run()` and `call_alone()` start one when none answers.
    After the first connection `run()` never does: a daemon stopped on purpose stays stopped.
    """

    def __init__(self, socket_path: str | Path, *,
                 on_events: Callable[[list[dict]], None] | None = None,
                 on_resync: Callable[[list[dict], list[dict]], None] | None = None,
                 on_state: Callable[[bool, str | None], None] | None = None,
                 types: list[str] | None = None,
                 spawn: Callable[[Path], Any] | None = None,
                 always_resync: bool = False,
                 backoff: tuple[float, float] = (BACKOFF_FIRST_S, BACKOFF_MAX_S),
                 call_timeout: float = CALL_TIMEOUT_S,
                 read_limit: int = READ_LIMIT):
        self.socket_path = Path(socket_path)
        self.on_events = on_events
        self.on_resync = on_resync
        self.on_state = on_state
        self.types = types
        self.spawn = spawn
        self.always_resync = always_resync
        self.backoff = backoff
        self.call_timeout = call_timeout
        self.read_limit = read_limit
        self.last_seq: int | None = None   # the last event seq seen: `since` on the next subscribe
        self.connected = False
        self._reported: bool | None = None   # the state on_state last heard
        self._conn: Connection | None = None
        self._held: list[dict] | None = None  # events read while (re)subscribing, not yet handed over
        self._kick = asyncio.Event()
        self._spawn_lock = asyncio.Lock()
        self._closed = False

    # -- calls ------------------------------------------------------------------------

    async def call(self, method: str, params: Any = None, *, timeout: float | None = None) -> Any:
        """One request on the followed connection; fails at once while it is down."""
        conn = self._conn
        if conn is None:
            raise DaemonUnreachable(NOT_CONNECTED)
        return await conn.call(method, params, self.call_timeout if timeout is None else timeout)

    async def call_alone(self, method: str, params: Any = None, *, spawn: bool = True,
                         timeout: float | None = None) -> Any:
        """One request on a connection of its own (started daemon included, when `spawn` allows)."""
        conn = await self._connect(spawn and self.spawn is not None)
        try:
            return await conn.call(method, params, self.call_timeout if timeout is None else timeout)
        finally:
            conn.close()

    async def _connect(self, spawn: bool, on_notification: Callable | None = None) -> Connection:
        def attempt() -> Any:
            return Connection.open(self.socket_path, on_notification=on_notification, read_limit=self.read_limit)

        try:
            return await attempt()
        except OSError as exc:
            if not spawn:
                raise DaemonUnreachable(f"no daemon answers on {self.socket_path} ({exc.strerror or exc})") from None
        async with self._spawn_lock:
            try:  # another caller may have started it while we waited for the lock
                return await attempt()
            except OSError:
                pass
            log.info("starting bgd for %s", self.socket_path)
            try:
                await asyncio.to_thread(self.spawn, self.socket_path)
            except Exception as exc:  # the spawner's own error says what went wrong
                raise DaemonUnreachable(str(exc)) from None
            self.retry_now()  # the follower need not wait out its back-off
        try:
            return await attempt()
        except OSError as exc:
            raise DaemonUnreachable(f"no daemon answers on {self.socket_path} ({exc.strerror or exc})") from None

    # -- following the event stream --------------------------------------------------------

    async def run(self) -> None:
        """Connect, subscribe, resync, read; on any loss report it and retry. Runs until cancelled or closed."""
        first_s, max_s = self.backoff
        delay = first_s
        first = True
        while not self._closed:
            try:
                conn = await self._connect(first and self.spawn is not None, self._on_notification)
            except DaemonUnreachable as exc:
                self._set_state(False, str(exc))
                first = False
                await self._sleep(delay)
                delay = min(delay * 2, max_s)
                continue
            first = False
            self._conn = conn
            try:
                await self._start(conn)
                delay = first_s
                detail = str(await conn.wait_closed())
            except (DaemonUnreachable, OSError) as exc:
                detail = str(exc)
            except RpcError as exc:
                detail = exc.message
            except Exception as exc:  # a malformed answer, a bug: never let the link die
                log.exception("the daemon link failed")
                detail = f"{type(exc).__name__}: {exc}"
            finally:
                self._conn = None
                self._held = None
                conn.close()
            log.info("event stream ended: %s", detail)
            if not self._closed:
                self._set_state(False, detail)
            await self._sleep(delay)
            delay = min(delay * 2, max_s)

    async def _start(self, conn: Connection) -> None:
        params: dict[str, Any] = {}
        if self.types is not None:
            params["types"] = self.types
        if self.last_seq is not None:
            params["since"] = self.last_seq
        self._held = []
        answer = await conn.call("events.subscribe", params, self.call_timeout)
        seq = answer.get("seq", 0)
        sessions = None
        if self.always_resync or self.last_seq is None or answer.get("missed") or seq < self.last_seq:
            # (a seq lower than ours: a daemon with a fresh state dir, a new history)
            sessions = await conn.call("session.list", {}, self.call_timeout)
            self.last_seq = seq  # the list covers everything up to the subscription
        held, self._held = self._fresh(self._held), None
        log.info("following bgd events after seq %s", self.last_seq)
        if sessions is not None:
            _safely(self.on_resync, sessions, held)
        elif held:
            _safely(self.on_events, held)
        self._set_state(True, None)

    def _on_notification(self, msg: Notification) -> None:
        if msg.method == "events.overflow":
            raise DaemonUnreachable("fell behind the event stream; resuming with since")
        if msg.method != "event" or not isinstance(msg.params, dict) or not isinstance(msg.params.get("seq"), int):
            return
        if self._held is not None:
            self._held.append(msg.params)  # seq is checked once the subscription says where we are
            return
        fresh = self._fresh([msg.params])
        if fresh:
            _safely(self.on_events, fresh)

    def _fresh(self, events: list[dict]) -> list[dict]:
        """The events not seen yet, moving `last_seq` past them."""
        out = []
        for event in events:
            if event["seq"] <= (self.last_seq if self.last_seq is not None else -1):
                continue  # already seen (a resync overlaps the stream)
            self.last_seq = event["seq"]
            out.append(event)
        return out

    def _set_state(self, connected: bool, detail: str | None) -> None:
        # Only changes are reported (and the first failure): retries while down stay quiet.
        if connected == self._reported:
            return
        self.connected = self._reported = connected
        _safely(self.on_state, connected, detail)

    async def _sleep(self, delay: float) -> None:
        """Back off, unless `retry_now()` asks for an attempt at once."""
        self._kick.clear()
        try:
            await asyncio.wait_for(self._kick.wait(), delay)
        except asyncio.TimeoutError:
            pass

    def retry_now(self) -> None:
        self._kick.set()

    def close(self) -> None:
        """Stop `run()` and drop the connection."""
        self._closed = True
        self._kick.set()
        if self._conn is not None:
            self._conn.close()


def _safely(callback: Callable | None, *args: Any) -> None:
    if callback is None:
        return
    try:
        callback(*args)
    except Exception:  # a bug in a client must not take the link down with it
        log.exception("a daemon link callback failed")


__all__ = ["Connection", "DaemonLink", "DaemonUnreachable", "RpcError", "NOT_CONNECTED"]
