"""The socket shell: accept connections, check the peer, move frames.

Each connection has a `FrameReader` (the shared sans-IO codec) and handles
its requests in order; responses to everything parsed from one read go out
together, in writes of about FLUSH_BYTES.  A subscribed connection also gets a
task that forwards events.
Nothing a client sends can raise out of here: protocol errors are answered,
handler errors become JSON-RPC errors, disconnects end only that connection.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from typing import Any

import trio

from bgcore.jsonrpc import (
    INTERNAL_ERROR, METHOD_NOT_FOUND, NEED_DATA, PERMISSION_DENIED, SHUTTING_DOWN, Batch, FrameReader,
    Notification, RemoteProtocolError, Request, Response, RpcError, encode, error_obj, request_obj)

from bgd import fastjson
from bgd.events import event_frame
from bgd.rpc.scope import Scope
from bgd.rpc.table import METHODS, Method, Params

log = logging.getLogger("bgd.rpc.server")
READ_BYTES = 1 << 16
# Responses are handed to the kernel whenever this much has been built, not only once
# a whole read is answered: 64 KiB of pipelined requests make ~400 KiB of responses,
# more than a socket buffer holds, and the client sat idle until the first byte came.
FLUSH_BYTES = 1 << 16
SEND_TIMEOUT_S = 5.0  # a client that has not taken a write of responses after this long is dropped


def peer_uid(sock: trio.socket.SocketType) -> int | None:
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


class Connection:
    def __init__(self, daemon: Any, stream: trio.SocketStream, nursery: trio.Nursery, scope: Scope | None = None):
        self.daemon = daemon
        self.stream = stream
        self.nursery = nursery
        self.scope = scope
        self.send_lock = trio.Lock()
        self.subscriber = None
        # Set once the responses being built are written, so a subscription's
        # first events never overtake the response that started it.
        self.flushed = trio.Event()

    async def send(self, data: bytes) -> None:
        async with self.send_lock:
            await self.stream.send_all(data)

    # Called by events.subscribe: register, then forward backlog and live events.
    def subscribe(self, since: int | None, match) -> dict:
        bus = self.daemon.bus
        if self.subscriber is not None:
            bus.unsubscribe(self.subscriber)
        sub, backlog, missed = bus.subscribe(since, match)
        self.subscriber = sub
        self.nursery.start_soon(self._forward, sub, backlog, self.flushed)
        return {"seq": bus.seq, "missed": missed, "backlog": len(backlog)}

    async def _forward(self, sub, backlog: list[dict], response_written: trio.Event) -> None:
        try:
            await response_written.wait()
            for event in backlog:
                await self.send(event_frame(event))
            # Live events arrive as frames the bus encoded once for every subscriber.
            async for frame in sub.receive:
                batch = [frame]
                while True:
                    try:
                        batch.append(sub.receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                await self.send(b"".join(batch))
            if sub.overflowed:
                await self.send(encode(request_obj("events.overflow", {
                    "seq": self.daemon.bus.seq,
                    "message": "this subscriber fell too far behind; reconnect with since"})))
                await self.stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.daemon.bus.unsubscribe(sub)

    async def handle_frame(self, frame: Any) -> Any:
        """The response object(s) for one frame, or None when nothing is owed."""
        if type(frame) is Batch:
            out = []
            for item in frame.items:
                if isinstance(item, RemoteProtocolError):
                    out.append(error_obj(item.id, item))
                    continue
                response = await self.handle_message(item)
                if response is not None:
                    out.append(response)
            return out or None
        return await self.handle_message(frame)

    async def handle_message(self, msg: Any) -> dict | None:
        """The response to one message, or None when nothing is owed."""
        if type(msg) is Response:
            return None  # clients do not call us back; ignore stray responses
        entry = METHODS.get(msg.method)
        if entry is None or not entry.is_async:
            return self.answer(entry, msg)
        try:
            self._check(entry, msg)
            result = await entry.handler(self.daemon, _params(msg.params), self)
        except Exception as exc:
            return self._refused(msg, exc)
        return {"jsonrpc": "2.0", "id": msg.id, "result": result} if type(msg) is Request else None

    def answer(self, entry: Method | None, msg: Request | Notification) -> dict | None:
        """The response from a plain-`def` handler (or a refusal), with no coroutine at all:
        the per-request path when a pipelined client sends tens of thousands a second."""
        try:
            self._check(entry, msg)
            result = entry.handler(self.daemon, _params(msg.params), self)
        except Exception as exc:
            return self._refused(msg, exc)
        return {"jsonrpc": "2.0", "id": msg.id, "result": result} if type(msg) is Request else None

    def _check(self, entry: Method | None, msg: Request | Notification) -> None:
        if entry is None:
            raise RpcError(METHOD_NOT_FOUND, f"unknown method {msg.method!r}; `bgctl rpc daemon.methods` lists them")
        if self.daemon.shutting_down and entry.name != "daemon.status":
            raise RpcError(SHUTTING_DOWN, "bgd is shutting down; start it again with `bgctl daemon start`")
        if self.scope is not None:
            self.scope.check(msg.method, msg.params)

    @staticmethod
    def _refused(msg: Request | Notification, exc: Exception) -> dict | None:
        if not isinstance(exc, RpcError):
            log.error("method %s failed", msg.method, exc_info=exc)
            exc = RpcError(INTERNAL_ERROR, f"internal error in {msg.method}; see the daemon's log")
        return error_obj(msg.id, exc) if type(msg) is Request else None


_NO_PARAMS = Params(None)


def _params(raw: Any) -> Params:
    return _NO_PARAMS if raw is None else Params(raw)


async def call_as(daemon: Any, scope: Scope, method: Any, params: Any) -> Any:
    """One call made for `scope`'s session from outside the socket (a cluster worker relays its
    session's MCP tools): the method table and the checks of a connection with that scope."""
    entry = METHODS.get(method) if isinstance(method, str) else None
    if entry is None:
        raise RpcError(METHOD_NOT_FOUND, f"unknown method {method!r}")
    if daemon.shutting_down:
        raise RpcError(SHUTTING_DOWN, "bgd is shutting down; call again once it is back")
    scope.check(method, params)
    try:
        result = entry.handler(daemon, _params(params), None)
        return await result if entry.is_async else result
    except RpcError:
        raise
    except Exception as exc:
        log.error("method %s (for session %s) failed", method, scope.session, exc_info=exc)
        raise RpcError(INTERNAL_ERROR, f"internal error in {method}; see the daemon's log") from None


async def handle_connection(daemon: Any, stream: trio.SocketStream, scope: Scope | None = None) -> None:
    uid = peer_uid(stream.socket)
    if uid is not None and uid != os.getuid():
        try:
            await stream.send_all(encode(error_obj(None, RpcError(
                PERMISSION_DENIED, "this bgd belongs to another user"))))
            # Closing at once can fail the peer's own first write (EPIPE) before it reads
            # why; let it finish (bounded) so it always gets the explanation.
            with trio.move_on_after(1):
                await stream.send_eof()
                while await stream.receive_some(1 << 16):
                    pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        await stream.aclose()
        return
    async with trio.open_nursery() as nursery:
        conn = Connection(daemon, stream, nursery, scope)
        try:
            await _serve(conn, FrameReader(daemon.config.max_frame_bytes, loads=fastjson.loads))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            if conn.subscriber is not None:
                daemon.bus.unsubscribe(conn.subscriber)
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                await stream.aclose()


async def _serve(conn: Connection, reader: FrameReader) -> None:
    dumps_line = fastjson.dumps_line
    while True:
        data = await conn.stream.receive_some(READ_BYTES)
        reader.receive_data(data)
        # Each response is encoded as soon as it is made, while its objects are still
        # in the CPU's cache, and appended to one buffer, so its bytes are freed at
        # once (a read's worth of dicts encoded at the end, or a list of bytes kept
        # for a join, each cost more than the encoding itself).
        out = bytearray()
        fatal = False
        while True:
            try:
                frame = reader.next_frame()
            except RemoteProtocolError as err:
                out += dumps_line(error_obj(err.id, err))
                if err.fatal:
                    fatal = True
                    break
                continue
            if frame is NEED_DATA:
                break
            if type(frame) is Request and (entry := METHODS.get(frame.method)) is not None and not entry.is_async:
                response = conn.answer(entry, frame)
            else:
                response = await conn.handle_frame(frame)
            if response is not None:
                out += dumps_line(response)
                if len(out) >= FLUSH_BYTES:
                    if not await _send_shielded(conn, out):
                        return
                    out = bytearray()
        if out and not await _send_shielded(conn, out):
            return
        conn.flushed.set()
        conn.flushed = trio.Event()
        if fatal or not data:
            return


async def _send_shielded(conn: Connection, data: bytearray) -> bool:
    """Write responses; False if the client did not take them within SEND_TIMEOUT_S.

    Shielded, so a shutdown cannot swallow the answer to the request that asked for
    it; bounded, so a client that stops reading cannot hold its connection forever. A write cut
    short leaves half a frame on the wire: the caller must close the connection."""
    with trio.move_on_after(SEND_TIMEOUT_S) as scope:
        scope.shield = True
        await conn.send(data)
    return not scope.cancelled_caught
