"""One agent process on a worker (asyncio), and the `RunControl` its backend driver reports to.

The worker runs the same backend driver (bgd.agents) as a local session, but its `ctl` does not
change a session: every call becomes a numbered record in the owner's transcript log, and the
owning daemon applies the records to the session in order, once each.  Writes to the agent's stdin
stay here.  The process shell mirrors bgd.agents.process for asyncio: argv (never a shell), its own
process group, stdout split into lines (a line over MAX_LINE_BYTES cut to an `OversizedLine`), a
stderr tail, stdin writes serialized, and a shutdown that closes stdin, then SIGTERMs, then SIGKILLs.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import signal
import sys
from typing import Any, Callable

from bgd.agents.process import STDERR_TAIL_BYTES
from bgd.agents.stdout_lines import MAX_LINE_BYTES, LineSplitter

log = logging.getLogger("bgd.worker")


def _die_with_parent() -> None:
    """In the child, before exec: a worker killed with SIGKILL takes its agent with it (Linux)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG


class LocalAgent:
    """An agent child process driven from asyncio."""

    def __init__(self, argv: list[str], cwd: str, env: dict[str, str], on_line: Callable[[bytes], None],
                 stdin_text: bytes | None = None, max_line: int = MAX_LINE_BYTES):
        self.argv = argv
        self.cwd = cwd
        self.env = env
        self.on_line = on_line
        self.stdin_text = stdin_text
        self.max_line = max_line
        self.process: asyncio.subprocess.Process | None = None
        self.stderr_tail = b""
        self.exited = asyncio.Event()
        self.returncode: int | None = None
        self._stdin_lock = asyncio.Lock()
        self._stdin_closed = False
        self._watch: asyncio.Task | None = None

    @property
    def pid(self) -> int | None:
        return None if self.process is None or self.exited.is_set() else self.process.pid

    async def start(self) -> None:
        """Spawn the process (raises OSError when it cannot) and watch it."""
        self.process = await asyncio.create_subprocess_exec(
            *self.argv, cwd=self.cwd, env=self.env, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True,
            limit=1 << 16, preexec_fn=_die_with_parent)
        self._watch = asyncio.create_task(self._run())

    async def _run(self) -> None:
        proc = self.process
        assert proc is not None
        tasks = [asyncio.create_task(self._read_stdout()), asyncio.create_task(self._read_stderr())]
        if self.stdin_text is not None:
            tasks.append(asyncio.create_task(self._feed_stdin(self.stdin_text)))
        await asyncio.gather(*tasks)
        self.returncode = await proc.wait()
        self.exited.set()

    async def _feed_stdin(self, data: bytes) -> None:
        try:
            await self.write(data)
        finally:
            await self.close_stdin()

    async def _read_stdout(self) -> None:
        stream = self.process.stdout
        lines = LineSplitter(self.on_line, self.max_line)
        while True:
            chunk = await stream.read(1 << 16)
            if not chunk:
                break
            lines.feed(chunk)
        lines.end()

    async def _read_stderr(self) -> None:
        stream = self.process.stderr
        while True:
            chunk = await stream.read(1 << 16)
            if not chunk:
                return
            self.stderr_tail = (self.stderr_tail + chunk)[-STDERR_TAIL_BYTES:]

    async def write(self, data: bytes) -> bool:
        if self.process is None or self._stdin_closed:
            return False
        async with self._stdin_lock:
            try:
                self.process.stdin.write(data)
                await self.process.stdin.drain()
                return True
            except (BrokenPipeError, ConnectionResetError, RuntimeError, OSError):
                return False

    async def write_json(self, obj: dict) -> bool:
        return await self.write(json.dumps(obj).encode() + b"\n")

    async def close_stdin(self) -> None:
        if self.process is None or self._stdin_closed:
            return
        self._stdin_closed = True
        async with self._stdin_lock:
            try:
                self.process.stdin.close()
                await self.process.stdin.wait_closed()
            except (BrokenPipeError, ConnectionResetError, OSError):
                pass

    def signal(self, sig: int) -> None:
        if self.process is None or self.exited.is_set():
            return
        try:
            os.killpg(self.process.pid, sig)   # its own group: the tools it started go too
        except (ProcessLookupError, PermissionError):
            try:
                self.process.send_signal(sig)
            except ProcessLookupError:
                pass

    async def shutdown(self, grace: float) -> None:
        """Close stdin, then SIGTERM, then SIGKILL, each after `grace` seconds."""
        await self.close_stdin()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                await asyncio.wait_for(self.exited.wait(), grace)
                return
            except asyncio.TimeoutError:
                self.signal(sig)
        await self.exited.wait()

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def stderr_last_line(self) -> str:
        lines = [l for l in self.stderr_tail.decode("utf-8", "replace").splitlines() if l.strip()]
        return lines[-1].strip()[:300] if lines else ""


class WorkerControl:
    """The `RunControl` (bgd.agents.base) of a driver on a worker: calls become log records."""

    def __init__(self, session, emit: Callable[[str, Any], None]):
        self.session = session
        self.stopping = False
        self.in_turn = True
        self.open_requests: set[str] = set()
        self.agent: LocalAgent | None = None
        self._emit = emit
        self._on_fail: Callable[[], None] = lambda: None
        self._on_idle: Callable[[], None] = lambda: None
        self._background: set[asyncio.Task] = set()

    def record(self, kind: str, data: Any) -> None:
        self._emit("record", [kind, data])

    def assistant(self, text: str) -> None:
        if text:
            self._emit("assistant", text)

    def ask(self, pending: dict) -> None:
        if not self.stopping:
            self.open_requests.add(str(pending.get("request_id")))
            self._emit("ask", pending)

    def withdraw(self, request_id: str) -> None:
        self.open_requests.discard(str(request_id))
        self._emit("withdraw", request_id)

    def turn_done(self, *, error: str | None = None, cost_usd: float | None = None,
                  turns: int | None = None, text: str | None = None) -> None:
        self.in_turn = False
        self.open_requests.clear()
        self._emit("turn_done", {"error": error, "cost_usd": cost_usd, "turns": turns, "text": text})
        self._on_idle()

    def fail(self, error: str, *, stop: bool = True) -> None:
        self._emit("fail", {"error": error, "stop": stop})
        if stop:
            self._on_fail()

    def died(self, code: int) -> None:
        # The exit is reported by the worker itself (an "exit" record); the owner's driver
        # decides what it means, as for a local process.
        pass

    def stderr_tail(self) -> str:
        return self.agent.stderr_last_line() if self.agent is not None else ""

    def send(self, obj: dict) -> None:
        if self.agent is not None:
            self.start_soon(self.agent.write_json, obj)

    async def write(self, obj: dict) -> bool:
        if self.agent is None:
            return False
        return await self.agent.write_json(obj)

    def start_soon(self, fn, *args: Any) -> None:
        task = asyncio.get_running_loop().create_task(fn(*args))
        self._background.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("session %s: the driver's background work failed", self.session.id, exc_info=task.exception())

    def end_background(self) -> None:
        """The process is gone: what the driver was doing in the background (waiting for an answer
        of the agent's, say) ends with it, as its `exited` ends it in the daemon."""
        for task in list(self._background):
            task.cancel()

    def set_agent_session(self, agent_session_id: str) -> None:
        self._emit("agent_session", agent_session_id)

    def add_usage(self, tokens: dict | None) -> None:
        if tokens:
            self._emit("usage", tokens)
