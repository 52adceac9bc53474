"""The daemon: owns the socket, the store, the event bus and the sessions.

`Daemon.run` is the trio shell around them: it listens, serves, handles
SIGTERM (graceful stop) and SIGHUP (config reload), and on the way out asks
every agent to stop and flushes the store.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable

import trio

from bgd import systemd
from bgcore.config import Config, ConfigError, load_config
from bgd.events import EventBus
from bgd.http import HttpService
from bgd.rpc.server import handle_connection
from bgd.sessions.manager import SessionManager
from bgd.store import Store

log = logging.getLogger("bgd")
CHECKPOINT_INTERVAL_S = 0.5  # how often the WAL is copied back while writes go on
CHECKPOINT_IDLE_S = 8.0      # the longest wait between looks while nothing is written


class AlreadyRunning(RuntimeError):
    pass


class Daemon:
    def __init__(self, socket_path: Path, config_dir: Path, state_dir: Path):
        self.socket_path = socket_path
        self.config_dir = config_dir
        self.state_dir = state_dir
        self.pid = os.getpid()
        # What daemon.status reports that never changes while the daemon runs.
        self.identity = {"version": _version(), "pid": self.pid, "socket": str(socket_path),
                         "config_dir": str(config_dir), "state_dir": str(state_dir)}
        self.started = time.monotonic()
        self.config: Config = load_config(config_dir)
        for warning in self.config.warnings:
            log.warning("%s", warning)
        self.config_error: str | None = None
        self.store = Store(state_dir / "bgd.sqlite3")
        self.bus = EventBus(self.store, self.config.event_retention)
        self.sessions = SessionManager(self.store, self.bus, lambda: self.config,
                                       str(config_dir / "config.toml"))
        self.shutting_down = False
        self._shutdown: trio.Event | None = None  # made by run(), inside trio
        self._lock_fd: int | None = None
        # Features that run beside the sessions (schedulers, watchers) add
        # `async def service(daemon, task_status)` here; each is started in
        # the daemon's nursery once the store is loaded.
        self.services: list[Callable[..., Any]] = []
        self.on_resume: list[Callable[[Any], None]] = []
        self.on_reload: list[Callable[[Config], None]] = []
        # The HTTP listener: features mount their routes on it; it listens while one wants it.
        self.http = HttpService(lambda: self.config.http, config_dir, _version())
        self.services.append(self.http.run)
        self.on_reload.append(lambda config: self.http.refresh())

    def uptime(self) -> float:
        return time.monotonic() - self.started

    # -- lifecycle ----------------------------------------------------------------

    def request_shutdown(self) -> None:
        self.shutting_down = True
        if self._shutdown is not None:
            self._shutdown.set()

    def reload_config(self) -> dict:
        try:
            config = load_config(self.config_dir)
        except ConfigError as exc:
            self.config_error = str(exc)
            log.error("config reload failed, keeping the last good config: %s", exc)
            self.bus.publish("config.error", error=str(exc))
            return {"reloaded": False, "error": str(exc)}
        self.config = config
        self.config_error = None
        self.bus.retention = config.event_retention
        for warning in config.warnings:
            log.warning("%s", warning)
        for hook in self.on_reload:
            hook(config)
        self.bus.publish("config.reloaded", warnings=list(config.warnings))
        log.info("config reloaded")
        return {"reloaded": True, "warnings": list(config.warnings)}

    def _listen(self) -> socket.socket:
        inherited = systemd.inherited_socket()
        if inherited is not None:
            log.info("using the socket systemd passed in")
            return inherited
        directory = self.socket_path.parent
        if not directory.exists():
            directory.mkdir(parents=True, mode=0o700)
            os.chmod(directory, 0o700)
        elif directory.name == "bgagents":
            # Our own runtime dir: keep it private even if something loosened it.
            # A directory the user chose for BGD_SOCKET (say /tmp) is theirs to keep.
            os.chmod(directory, 0o700)
        lock_path = self.socket_path.with_name(self.socket_path.name + ".lock")
        self._lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                pid = os.pread(self._lock_fd, 32, 0).decode(errors="replace").strip()
                raise AlreadyRunning(f"a daemon is already running on {self.socket_path}"
                                     + (f" (pid {pid})" if pid else "")) from None
            raise
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, str(os.getpid()).encode(), 0)
        # We hold the lock, so a socket file here is a dead daemon's: replace it.
        try:
            self.socket_path.unlink()
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            sock.bind(str(self.socket_path))
        finally:
            os.umask(old_umask)
        os.chmod(self.socket_path, 0o600)
        sock.listen(512)
        return sock

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self._shutdown = trio.Event()
        raw = self._listen()
        raw.setblocking(False)
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(raw))
        try:
            async with trio.open_nursery() as nursery:
                self.sessions.nursery = nursery
                self.sessions.load()
                nursery.start_soon(self._signals)
                nursery.start_soon(self._checkpoints)
                for service in self.services:
                    await nursery.start(service, self)
                nursery.start_soon(trio.serve_listeners, self._handle, [listener])
                log.info("bgd %s listening on %s (pid %d)", _version(), self.socket_path, self.pid)
                systemd.notify("READY=1")
                task_status.started()
                await self._shutdown.wait()
                self.shutting_down = True
                systemd.notify("STOPPING=1")
                log.info("shutting down: stopping agents")
                with trio.move_on_after(self.config.stop_grace_s * 2 + 5):
                    await self.sessions.shutdown()
                nursery.cancel_scope.cancel()
        finally:
            await listener.aclose()
            self._cleanup()

    async def _handle(self, stream: trio.SocketStream) -> None:
        await handle_connection(self, stream)

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    self.reload_config()
                else:
                    log.info("received %s", signal.Signals(signum).name)
                    self.request_shutdown()

    async def _checkpoints(self) -> None:
        """Checkpoint the store's WAL from a worker thread (store.py says why not inside a
        commit): every CHECKPOINT_INTERVAL_S while writes go on; while nothing is written,
        it looks less and less often, down to once every CHECKPOINT_IDLE_S."""
        seen, interval = self.store.changes(), CHECKPOINT_INTERVAL_S
        while True:
            await trio.sleep(interval)
            changes = self.store.changes()
            if changes == seen:
                interval = min(interval * 2, CHECKPOINT_IDLE_S)
                continue
            seen, interval = changes, CHECKPOINT_INTERVAL_S
            try:
                await trio.to_thread.run_sync(self.store.checkpoint)
            except sqlite3.Error as exc:
                # Nothing is lost (the WAL keeps every commit); say so once per failure and go on.
                log.warning("WAL checkpoint failed (%s); the next one will try again", exc)

    def _cleanup(self) -> None:
        try:
            self.bus.flush()  # the agents' last lines, if they still wait for their commit
        finally:
            self.store.close()
        if self._lock_fd is not None:
            # Only the lock holder owns the socket path; systemd owns an inherited one.
            try:
                self.socket_path.unlink()
            except FileNotFoundError:
                pass
            os.close(self._lock_fd)
            self._lock_fd = None


def _version() -> str:
    from bgd import __version__
    return __version__
