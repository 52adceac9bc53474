"""The daemon's MCP tools for a run on a worker (SPEC §5.4, §14): the socket its MCP server calls.

A cluster session's agent gets the same MCP server as a local one (bgd.agents.mcp_server), but the
socket that server calls is one this worker serves for that run alone, in a directory only this
user can enter.  A call it takes (only the methods the MCP server uses, only for the run's own
session: `protocol.mcp_scope`) becomes an "mcp" record in the run's transcript log; the owning
daemon runs it through its method table as that session and sends the result, or the error, back
as a delivery ("mcp_result"), which answers the call.  With no answer within `timeout_s` (the
owning daemon restarting, or cut off from the Temporal server) the call fails with an error that
says so: the agent never waits forever.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
from typing import Any, Callable

from bgcore.jsonrpc import (AGENT_UNAVAILABLE, INVALID_REQUEST, NEED_DATA, Batch, FrameReader, RemoteProtocolError,
                            Request, RpcError, encode, error_obj, result_obj)

from bgd.agents.mcp_server import SERVER_NAME, server_env
from bgd.cluster import protocol as p

RELAY_TIMEOUT_S = 25.0   # under the MCP server's own 30 s wait for an answer on its socket


class McpRelay:
    """One run's socket for its MCP server; `emit(op, arg)` appends a record to the run's log."""

    def __init__(self, session_id: str, origin: str | None, emit: Callable[[str, Any], None],
                 timeout_s: float = RELAY_TIMEOUT_S):
        self.scope = p.mcp_scope(session_id, origin)
        self.emit = emit
        self.timeout_s = timeout_s
        self.calls = 0
        self.waiting: dict[int, asyncio.Future] = {}
        self.directory: str | None = None
        self._server: asyncio.AbstractServer | None = None

    @property
    def socket_path(self) -> str:
        assert self.directory is not None
        return os.path.join(self.directory, "daemon.sock")

    async def start(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="bgd-mcp-")   # mode 0700: this user's alone
        self._server = await asyncio.start_unix_server(self._serve, path=self.socket_path)
        os.chmod(self.socket_path, 0o600)

    async def close(self) -> None:
        """The run is over: no more calls; the ones waiting fail."""
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(RpcError(AGENT_UNAVAILABLE, "the session's run ended before the owning "
                                                                 "daemon answered"))
        if self._server is not None:
            self._server.close()
            self._server = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def config(self, mcp_config: str) -> str:
        """The owner's MCP config, with the daemon's own server run by this machine's Python and
        calling this relay (the other servers, a routine's, run here as they are)."""
        data = json.loads(mcp_config)
        own = (data.get("mcpServers") or {}).get(SERVER_NAME)
        if isinstance(own, dict):
            own["command"] = sys.executable
            own["env"] = {**(own.get("env") or {}), **server_env(self.socket_path)}
        return json.dumps(data)

    # -- calls ---------------------------------------------------------------------------

    async def call(self, method: Any, params: Any) -> Any:
        """Relay one call to the owning daemon; its result, or RpcError with its error."""
        self.scope.check(method, params)
        self.calls += 1
        call = self.calls
        future = asyncio.get_running_loop().create_future()
        self.waiting[call] = future
        self.emit("mcp", {"call": call, "method": method, "params": params})
        try:
            return await asyncio.wait_for(future, self.timeout_s)
        except asyncio.TimeoutError:
            raise RpcError(AGENT_UNAVAILABLE, f"the owning bgagents daemon did not answer {method} within "
                                              f"{self.timeout_s:g} s (it may be restarting, or cut off from the "
                                              "Temporal server); the call may still take effect once it is "
                                              "back, so check before calling again") from None
        finally:
            self.waiting.pop(call, None)

    def answered(self, message: dict) -> bool:
        """The owner's answer to a call (an "mcp_result" delivery); False when nobody waits for it
        any more (it came after the call timed out)."""
        future = self.waiting.get(message.get("call"))
        if future is None or future.done():
            return False
        if message.get("error") is not None:
            future.set_exception(RpcError.from_wire(message["error"]))
        else:
            future.set_result(message.get("result"))
        return True

    # -- the socket ------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frames = FrameReader()
        try:
            while data := await reader.read(1 << 16):
                frames.receive_data(data)
                while True:
                    try:
                        frame = frames.next_frame()
                    except RemoteProtocolError as exc:
                        writer.write(encode(error_obj(exc.id, exc)))
                        if exc.fatal:
                            return
                        continue
                    if frame is NEED_DATA:
                        break
                    if type(frame) is Request:
                        writer.write(encode(await self._answer(frame)))
                    elif type(frame) is Batch:   # the MCP server sends none
                        writer.write(encode(error_obj(None, RpcError(INVALID_REQUEST, "no batches here"))))
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _answer(self, request: Request) -> dict:
        try:
            return result_obj(request.id, await self.call(request.method, request.params))
        except RpcError as exc:
            return error_obj(request.id, exc)
