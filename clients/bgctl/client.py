"""A blocking client of the daemon socket, on the shared codec.

Standard library only: this is `bgctl`'s hot path (so paths are `os.path` strings: `pathlib` and
`typing` cost start-up time).  It starts the daemon on demand (like watchman) unless told not to.
"""

from __future__ import annotations

import itertools
import os
import socket
import sys
import time

from bgcore import paths
from bgcore.jsonrpc import NEED_DATA, FrameReader, Notification, RemoteProtocolError, Response, RpcError, encode_request

READ_LIMIT = 256 << 20  # responses can carry big transcripts
SPAWN_TIMEOUT_S = 15.0


class DaemonUnreachable(Exception):
    """No daemon answers on the socket (exit code 3)."""


class Client:
    def __init__(self, socket_path: str, sock: socket.socket):
        self.socket_path = socket_path
        self.sock = sock
        self.reader = FrameReader(READ_LIMIT)
        self.ids = itertools.count(1)
        self.notifications: list[Notification] = []

    @classmethod
    def connect(cls, socket_path: str | os.PathLike | None = None, *, spawn: bool = True) -> "Client":
        path = paths.socket_file(os.fspath(socket_path) if socket_path else None)
        try:
            return cls(path, _open(path))
        except OSError as exc:
            if not spawn:
                raise DaemonUnreachable(f"no daemon answers on {path} ({exc.strerror or exc})") from None
        spawn_daemon(path)
        return cls(path, _open(path))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def call(self, method: str, params=None):
        msg_id = next(self.ids)
        self._send(encode_request(method, params, msg_id))
        while True:
            msg = self._next_message()
            if isinstance(msg, Response) and msg.id == msg_id:
                if msg.error is not None:
                    raise msg.error
                return msg.result
            if isinstance(msg, Notification):
                self.notifications.append(msg)
            elif isinstance(msg, Response) and msg.id is None and msg.error is not None:
                raise msg.error

    def notifications_iter(self):
        """Notifications as they arrive (after any that came with responses)."""
        while True:
            while self.notifications:
                yield self.notifications.pop(0)
            msg = self._next_message()
            if isinstance(msg, Notification):
                yield msg

    def _send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise DaemonUnreachable(f"the daemon closed the connection ({exc.strerror or exc})") from None

    def _next_message(self):
        while True:
            try:
                frame = self.reader.next_frame()
            except RemoteProtocolError as exc:
                raise DaemonUnreachable(f"the daemon sent something unreadable: {exc.message}") from None
            if frame is not NEED_DATA:
                return frame
            try:
                data = self.sock.recv(1 << 16)
            except OSError as exc:
                raise DaemonUnreachable(f"lost the connection to the daemon ({exc.strerror or exc})") from None
            if not data:
                raise DaemonUnreachable("the daemon closed the connection")
            self.reader.receive_data(data)


def _open(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


def daemon_log_path() -> str:
    return str(paths.state_dir() / "bgd.log")


def spawn_daemon(path: str | os.PathLike) -> int:
    """Start `bgd` in the background for `path` and wait until it answers; return its pid."""
    import subprocess

    path = os.fspath(path)
    log_path = daemon_log_path()
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    env = dict(os.environ, BGD_SOCKET=path)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "bgd"], env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, start_new_session=True, cwd="/")
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    delay = 0.005
    while time.monotonic() < deadline:
        try:
            _open(path).close()
            return proc.pid
        except OSError:
            pass
        code = proc.poll()
        if code is not None and code != 1:  # 1: another daemon won the race; keep waiting for it
            raise DaemonUnreachable(f"bgd exited with code {code} while starting: {_log_tail(log_path)}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
    raise DaemonUnreachable(f"bgd did not start listening on {path} within {SPAWN_TIMEOUT_S:.0f}s; "
                            f"see {log_path}")


def _log_tail(log_path: str) -> str:
    try:
        with open(log_path, errors="replace") as f:
            lines = [line for line in f.read().splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"


__all__ = ["Client", "DaemonUnreachable", "RpcError", "spawn_daemon"]
