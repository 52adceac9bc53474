"""One agent child process: argv (never a shell), stdout lines in, stdin lines out.

Backends build the argv and interpret the lines; this shell only moves bytes
and reports the exit.  Lines are cut by bgd.agents.stdout_lines (a line longer
than `max_line` becomes a marker, so a runaway agent cannot grow the daemon's memory).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from typing import Awaitable, Callable

import trio

from bgd.agents.stdout_lines import MAX_LINE_BYTES, LineSplitter

STDERR_TAIL_BYTES = 4096


def start_time(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, /proc/PID/stat), or None where that
    cannot be read: with the pid it names one process, whatever reuses the pid later."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rindex(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def end_left_behind(pid: int, started: int | None) -> bool:
    """Kill the process group of an agent a previous daemon started (its own group, since it was
    started in a new session), if `pid` is still that process; True when it was."""
    if started is None or start_time(pid) != started:
        return False
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


class AgentProcess:
    def __init__(self, argv: list[str], cwd: str, env: dict[str, str],
                 on_line: Callable[[bytes], None],
                 on_exit: Callable[[int], Awaitable[None] | None],
                 max_line: int = MAX_LINE_BYTES, stdin_text: bytes | None = None):
        self.argv = argv
        self.cwd = cwd
        self.env = env
        self.on_line = on_line
        self.on_exit = on_exit
        self.max_line = max_line
        self.stdin_text = stdin_text
        self.process: trio.Process | None = None
        self.stderr_tail = b""
        self.exited = trio.Event()
        self.returncode: int | None = None
        self._stdin_lock = trio.Lock()
        self._stdin_closed = False

    @property
    def pid(self) -> int | None:
        if self.process is None or self.exited.is_set():
            return None
        return self.process.pid

    async def start(self, nursery: trio.Nursery) -> None:
        """Spawn the process (raises OSError when it cannot) and watch it in `nursery`."""
        self.process = await trio.lowlevel.open_process(
            self.argv, cwd=self.cwd, env=self.env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True)
        nursery.start_soon(self._watch)

    async def _watch(self) -> None:
        proc = self.process
        assert proc is not None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_stdout)
            nursery.start_soon(self._read_stderr)
            if self.stdin_text is not None:
                nursery.start_soon(self._feed_stdin, self.stdin_text)
        self.returncode = await proc.wait()
        self.exited.set()
        result = self.on_exit(self.returncode)
        if result is not None:
            await result

    async def _feed_stdin(self, data: bytes) -> None:
        try:
            await self.write(data)
        finally:
            await self.close_stdin()

    async def _read_stdout(self) -> None:
        stream = self.process.stdout
        lines = LineSplitter(self.on_line, self.max_line)
        while True:
            try:
                chunk = await stream.receive_some(1 << 16)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                chunk = b""
            if not chunk:
                break
            lines.feed(chunk)
        lines.end()

    async def _read_stderr(self) -> None:
        stream = self.process.stderr
        while True:
            try:
                chunk = await stream.receive_some(1 << 16)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not chunk:
                return
            self.stderr_tail = (self.stderr_tail + chunk)[-STDERR_TAIL_BYTES:]

    async def write(self, data: bytes) -> bool:
        """Write to stdin; False when the process no longer reads it."""
        if self.process is None or self._stdin_closed:
            return False
        async with self._stdin_lock:
            try:
                await self.process.stdin.send_all(data)
                return True
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return False

    async def write_json(self, obj: dict) -> bool:
        return await self.write(json.dumps(obj).encode() + b"\n")

    async def close_stdin(self) -> None:
        if self.process is None or self._stdin_closed:
            return
        self._stdin_closed = True
        async with self._stdin_lock:
            try:
                await self.process.stdin.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    def signal(self, sig: int) -> None:
        if self.process is None or self.exited.is_set():
            return
        try:
            # The agent runs in its own session; signal its whole group so tools
            # it started go too.
            os.killpg(self.process.pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                self.process.send_signal(sig)
            except ProcessLookupError:
                pass

    async def shutdown(self, grace: float) -> None:
        """Close stdin, then SIGTERM, then SIGKILL, each after `grace` seconds."""
        await self.close_stdin()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with trio.move_on_after(grace):
                await self.exited.wait()
                return
            self.signal(sig)
        await self.exited.wait()

    def stderr_last_line(self) -> str:
        lines = [l for l in self.stderr_tail.decode("utf-8", "replace").splitlines() if l.strip()]
        return lines[-1].strip()[:300] if lines else ""
