"""The agent view's connection to bgd: asyncio on the shared sans-IO codec.

One Unix-socket connection carries both the event stream and the view's
calls (responses are matched by id; `event` notifications go to a
callback).  `run()` keeps it alive for as long as the view lives: when the
daemon goes away it reports itself down, retries with a short backoff, and on
reconnecting subscribes again with `since` (so nothing retained is missed) and
resyncs the whole list with `session.list`.  It never spawns a daemon: a
person who stopped bgd on purpose does not want the view to bring it back.

No textual here; the view passes plain callbacks.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any, Callable

from bgcore.jsonrpc import NEED_DATA, FrameReader, Notification, RemoteProtocolError, Response, RpcError, encode_request

from .client import READ_LIMIT, DaemonUnreachable

CALL_TIMEOUT_S = 30.0
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 2.0
EVENT_TYPES = ["session"]   # created, updated, removed, transcript


class DaemonLink:
    """A self-healing connection to the daemon.

    on_event(event)          every `event` notification's params, in order
    on_sync(sessions, since) after each (re)connect: the full session list, and
                             the events that arrived between subscribing and
                             the list (already given to on_event), so the list
                             can be corrected where they are newer than it
    on_status(up, message)   the link went up or down
    """

    def __init__(self, socket_path: str | Path, *, on_event: Callable[[dict], None],
                 on_sync: Callable[[list[dict]], None], on_status: Callable[[bool, str], None]):
        self.socket_path = Path(socket_path)
        self.on_event = on_event
        self.on_sync = on_sync
        self.on_status = on_status
        self.seq: int | None = None          # the last event seq seen, for `since`
        self.connected = False
        self.missed = False                  # the daemon no longer had some events we asked for
        self._ids = itertools.count(1)
        self._writer: asyncio.StreamWriter | None = None
        self._waiting: dict[int, asyncio.Future] = {}
        self._closed = False
        self._kick = asyncio.Event()
        self._syncing: list[dict] | None = None   # events seen while a session.list is in flight

    # -- calls -------------------------------------------------------------------

    async def call(self, method: str, params: Any = None, timeout: float = CALL_TIMEOUT_S) -> Any:
        """One request; raises RpcError (the daemon said no) or DaemonUnreachable."""
        writer = self._writer
        if writer is None or writer.is_closing():
            raise DaemonUnreachable("daemon unreachable — reconnecting…")
        msg_id = next(self._ids)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._waiting[msg_id] = future
        try:
            writer.write(encode_request(method, params, msg_id))
            await writer.drain()
            return await asyncio.wait_for(future, timeout)
        except (OSError, ConnectionError) as exc:
            raise DaemonUnreachable(f"lost the daemon ({exc})") from None
        except asyncio.TimeoutError:
            raise DaemonUnreachable(f"the daemon did not answer {method} within {timeout:.0f}s") from None
        finally:
            self._waiting.pop(msg_id, None)

    # -- the connection's life ------------------------------------------------------

    async def run(self) -> None:
        """Connect, subscribe, sync, read; on any loss, report and retry. Runs until cancelled."""
        delay = BACKOFF_FIRST_S
        while not self._closed:
            try:
                reader, writer = await asyncio.open_unix_connection(str(self.socket_path), limit=1 << 16)
            except OSError as exc:
                self._down(f"daemon unreachable — reconnecting… ({exc.strerror or exc})")
                await self._sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            self._writer = writer
            read_task = asyncio.create_task(self._read(reader))
            message = "daemon unreachable — reconnecting…"
            try:
                await self._start(read_task)
                delay = BACKOFF_FIRST_S
                await read_task
            except (DaemonUnreachable, RpcError, OSError, ConnectionError, EOFError) as exc:
                message += f" ({getattr(exc, 'message', None) or exc})"
            except Exception as exc:  # a malformed answer, a bug: never let the link die
                import logging
                logging.getLogger(__name__).exception("agent view link failed")
                message += f" ({type(exc).__name__}: {exc})"
            finally:
                read_task.cancel()
                if read_task.done() and not read_task.cancelled():
                    read_task.exception()   # already reported above; mark it retrieved
                self._writer = None
                writer.close()
                self._fail_waiting()
            self._down(message)
            await self._sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)

    async def _start(self, read_task: asyncio.Task) -> None:
        # Subscribe before listing: an event between the two is then both in
        # the stream and in the list, never in neither.
        params: dict[str, Any] = {"types": EVENT_TYPES}
        if self.seq is not None:
            params["since"] = self.seq
        self._syncing = []
        try:
            answer = await self._call_while_reading("events.subscribe", params, read_task)
            self.missed = bool(answer.get("missed"))
            if self.seq is None:
                self.seq = answer.get("seq")
            sessions = await self._call_while_reading("session.list", {}, read_task)
            since, self._syncing = self._syncing, None
        finally:
            self._syncing = None
        self.connected = True
        _safely(self.on_status, True, "")
        _safely(self.on_sync, sessions, since)

    async def _call_while_reading(self, method: str, params: Any, read_task: asyncio.Task) -> Any:
        call = asyncio.ensure_future(self.call(method, params))
        done, _ = await asyncio.wait({call, read_task}, return_when=asyncio.FIRST_COMPLETED)
        if call not in done:
            call.cancel()
            raise DaemonUnreachable("the daemon closed the connection")
        return call.result()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        frames = FrameReader(READ_LIMIT)
        while True:
            data = await reader.read(1 << 16)
            frames.receive_data(data)
            while True:
                try:
                    frame = frames.next_frame()
                except RemoteProtocolError as exc:
                    if exc.fatal:
                        raise DaemonUnreachable(f"unreadable data from the daemon: {exc.message}") from None
                    continue
                if frame is NEED_DATA:
                    break
                self._handle(frame)
            if not data:
                raise DaemonUnreachable("the daemon closed the connection")

    def _handle(self, frame: Any) -> None:
        if isinstance(frame, Response):
            future = self._waiting.get(frame.id)
            if future is not None and not future.done():
                if frame.error is not None:
                    future.set_exception(frame.error)
                else:
                    future.set_result(frame.result)
        elif isinstance(frame, Notification):
            if frame.method == "event" and isinstance(frame.params, dict):
                seq = frame.params.get("seq")
                if isinstance(seq, int):
                    self.seq = seq if self.seq is None else max(self.seq, seq)
                if self._syncing is not None:
                    self._syncing.append(frame.params)
                _safely(self.on_event, frame.params)
            elif frame.method == "events.overflow":
                # We fell behind; drop the connection and come back with `since`.
                if self._writer is not None:
                    self._writer.close()

    def _fail_waiting(self) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(DaemonUnreachable("daemon unreachable — reconnecting…"))
        self._waiting.clear()

    def _down(self, message: str) -> None:
        self.connected = False
        _safely(self.on_status, False, message)

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
        self._closed = True
        self._kick.set()
        if self._writer is not None:
            self._writer.close()


def _safely(callback: Callable, *args: Any) -> None:
    try:
        callback(*args)
    except Exception:  # a bug in the view must not take the link down with it
        import logging
        logging.getLogger(__name__).exception("agent view callback failed")


__all__ = ["DaemonLink", "DaemonUnreachable", "RpcError"]
