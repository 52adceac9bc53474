"""An agent's stdout cut into lines (plain code: no I/O, no trio), for the daemon's process shell
(trio) and the worker's (asyncio) alike.

Blank lines are dropped; a line longer than `max_line` is delivered once, as an `OversizedLine`
holding its first 4096 bytes and its size so far, and the rest of it is skipped, so a runaway agent
cannot grow memory without bound.
"""

from __future__ import annotations

from typing import Callable

MAX_LINE_BYTES = 32 << 20


class OversizedLine(bytes):
    """Stands in for a stdout line that exceeded the limit: its first bytes."""

    total: int = 0


class LineSplitter:
    def __init__(self, on_line: Callable[[bytes], None], max_line: int = MAX_LINE_BYTES):
        self.on_line = on_line
        self.max_line = max_line
        self._buf = bytearray()
        self._dropping = 0  # bytes of an oversized line skipped so far

    def feed(self, chunk: bytes) -> None:
        buf = self._buf
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            if nl < 0:
                piece = chunk[start:]
                if self._dropping:
                    self._dropping += len(piece)
                else:
                    buf += piece
                    if len(buf) > self.max_line:
                        self._dropping = len(buf)
                        head = OversizedLine(bytes(buf[:4096]))
                        head.total = self._dropping
                        buf.clear()
                        self.on_line(head)
                return
            piece = chunk[start:nl]
            start = nl + 1
            if self._dropping:
                self._dropping = 0
                continue
            buf += piece
            line = bytes(buf)
            buf.clear()
            if line.strip():
                self.on_line(line)

    def end(self) -> None:
        """The stream closed: a last line without its newline is a line too."""
        if self._buf.strip() and not self._dropping:
            self.on_line(bytes(self._buf))
        self._buf.clear()


__all__ = ["LineSplitter", "MAX_LINE_BYTES", "OversizedLine"]
