"""The baselines of the RPC benchmark: bare trio servers, no JSON, no dispatch.

Same transport, same event loop, same read size and the same writes as bgd's
connection loop: what a read answers goes out in writes of about 64 KiB
(bgd's FLUSH_BYTES).  `echo_server.py SOCKET_PATH` echoes complete lines (a read
is at most 64 KiB, so one write per read); `echo_server.py SOCKET_PATH CANNED_FILE`
answers each line with the bytes of CANNED_FILE (one response line), so the client
parses exactly what it parses from bgd.  Prints "ready" once it listens.
"""

from __future__ import annotations

import sys

import trio


CANNED: bytes | None = None
FLUSH_BYTES = 1 << 16


async def echo(stream: trio.SocketStream) -> None:
    pending = b""
    try:
        while True:
            data = await stream.receive_some(1 << 16)
            if not data:
                return
            data = pending + data
            cut = data.rfind(b"\n") + 1
            pending = data[cut:]
            if not cut:
                continue
            lines = data[:cut]
            if CANNED is None:
                await stream.send_all(lines)
                continue
            left = lines.count(b"\n")
            per_write = max(1, FLUSH_BYTES // len(CANNED))
            while left:
                n = min(left, per_write)
                await stream.send_all(CANNED * n)
                left -= n
    except trio.BrokenResourceError:
        pass


async def main(path: str) -> None:
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(16)
    print("ready", flush=True)
    await trio.serve_listeners(echo, [trio.SocketListener(sock)])


if __name__ == "__main__":
    if len(sys.argv) > 2:
        with open(sys.argv[2], "rb") as f:
            CANNED = f.read()
    trio.run(main, sys.argv[1])
