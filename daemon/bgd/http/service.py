"""The listener's life: started while something wants it, restarted when [http] changes.

`HttpService.run` is a daemon service. It sleeps until `refresh()` (a feature's
definitions changed, or the config was reloaded), then works out whether the
listener is wanted and with which settings, and starts, stops or restarts
hypercorn accordingly. A listener that cannot start (an address it may not use,
a port in use, a bad TLS file) is logged and shown in `daemon.status` as
`http.error`; the daemon goes on serving its socket.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import trio

from bgcore.config import HttpConfig
from bgd.http.address import is_loopback, refusal, url_host

log = logging.getLogger("bgd.http")
# hypercorn's own lines ("Running on ... (CTRL + C to quit)") are not ours to print.
_SERVER_LOG = logging.getLogger("bgd.http.server")
_SERVER_LOG.setLevel(logging.WARNING)

GRACEFUL_S = 2.0         # a stopped listener's open requests get this long to finish
TLS_HANDSHAKE_S = 10.0   # a TLS client that has not finished its handshake by then is dropped
BACKLOG = 128


class ListenerError(Exception):
    """Why the listener cannot start, as one line that says what to do."""


@dataclass
class _Mount:
    name: str
    routes: list
    wanted: Callable[[], bool]
    middleware: list


@dataclass
class _Listener:
    key: Any
    url: str
    stop: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)


class HttpService:
    """The daemon's one HTTP listener (`daemon.http`); features `mount` their routes on it."""

    def __init__(self, config: Callable[[], HttpConfig], config_dir: Path, version: str):
        self._config = config
        self._config_dir = config_dir
        self._version = version
        self._mounts: dict[str, _Mount] = {}
        self._entry: Any = None          # app.Entry, made at the first start (imports starlette)
        self._listener: _Listener | None = None
        self._nursery: trio.Nursery | None = None
        self._wake: trio.Event | None = None
        self._status: dict = {"listening": False, "url": None, "error": None, "wanted_by": []}

    # -- what features call ----------------------------------------------------------

    def mount(self, name: str, routes: Sequence[Any], *, wanted: Callable[[], bool],
              middleware: list | None = None) -> None:
        """Add a feature's starlette routes (and middleware for them alone). The listener runs
        iff some mounted feature's `wanted()` is true, or `[http] enabled = true`."""
        if name in self._mounts:
            raise ValueError(f"an HTTP feature named {name!r} is already mounted")
        self._mounts[name] = _Mount(name, list(routes), wanted, list(middleware or []))
        if self._entry is not None:
            self._entry.app = self._build_app(self._config())
        self.refresh()

    def refresh(self) -> None:
        """Look again at what wants the listener (and at [http]); start, stop or restart it."""
        if self._wake is not None:
            self._wake.set()

    @property
    def base_url(self) -> str | None:
        """e.g. "http://127.0.0.1:7421" while listening, else None."""
        return self._status["url"]

    @property
    def listening(self) -> bool:
        return self._status["listening"]

    def status(self) -> dict:
        """`daemon.status`'s `http`: {listening, url, error, wanted_by}."""
        return dict(self._status)

    # -- the service -----------------------------------------------------------------

    async def run(self, daemon: Any = None, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The daemon service (`daemon.services`); runs until the daemon's nursery is cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._wake = trio.Event()
            await self._apply()  # a listener wanted at start-up listens before the daemon says it is ready
            task_status.started()
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                await self._apply()

    async def _apply(self) -> None:
        config = self._config()
        wanted_by = self._wanted_by(config)
        key = self._settings_key(config) if wanted_by else None
        current = self._listener
        if current is not None and current.key == key and not current.done.is_set():
            self._status["wanted_by"] = wanted_by
            return
        if current is not None:
            current.stop.set()
            await current.done.wait()
            log.info("HTTP listener on %s stopped", current.url)
        self._status = {"listening": False, "url": None, "error": None, "wanted_by": wanted_by}
        if key is None:
            return
        try:
            server_config, url = await self._open(config)
        except ListenerError as exc:
            self._fail(str(exc))
            return
        from bgd.http.app import Entry
        app = self._build_app(config)
        if self._entry is None:
            self._entry = Entry(app, config.body_timeout_s)
        else:
            self._entry.app, self._entry.body_timeout_s = app, config.body_timeout_s
        listener = _Listener(key, url)
        assert self._nursery is not None
        try:
            await self._nursery.start(self._serve, listener, server_config)
        except RuntimeError:  # hypercorn stopped before listening; _serve said why
            return
        self._listener = listener
        self._status = {"listening": True, "url": url, "error": None, "wanted_by": wanted_by}
        log.info("HTTP listener on %s (wanted by %s)", url, ", ".join(wanted_by))

    async def _serve(self, listener: _Listener, server_config: Any, task_status=trio.TASK_STATUS_IGNORED) -> None:
        from hypercorn.trio import serve
        try:
            await serve(self._entry, server_config, shutdown_trigger=listener.stop.wait, task_status=task_status)
        except Exception as exc:
            self._fail(f"the HTTP listener on {listener.url} stopped: {_leaf(exc)}")
        finally:
            listener.done.set()
            if self._listener is listener:
                self._listener = None
                self._status = dict(self._status, listening=False, url=None)

    def _fail(self, error: str) -> None:
        log.error("%s", error)
        self._status = dict(self._status, listening=False, url=None, error=error)

    def _wanted_by(self, config: HttpConfig) -> list[str]:
        names = ["http.enabled"] if config.enabled else []
        for mount in self._mounts.values():
            try:
                if mount.wanted():
                    names.append(mount.name)
            except Exception:
                log.exception("HTTP feature %s: wanted() failed; counted as not wanting the listener", mount.name)
        return names

    def _build_app(self, config: HttpConfig):
        from bgd.http.app import build_app, health_routes
        groups = [("health", health_routes(self._version), [])]
        groups += [(m.name, m.routes, m.middleware) for m in self._mounts.values()]
        return build_app(groups, config.max_body_bytes)

    def _tls_paths(self, config: HttpConfig) -> tuple[Path, Path] | None:
        if not config.tls:
            return None
        assert config.tls_cert is not None and config.tls_key is not None

        def resolve(text: str) -> Path:
            path = Path(text).expanduser()
            return path if path.is_absolute() else self._config_dir / path
        return resolve(config.tls_cert), resolve(config.tls_key)

    def _settings_key(self, config: HttpConfig) -> tuple:
        """What a running listener is keyed by: [http] but `enabled`, and the TLS files as they
        are now, so a renewed certificate and a reload restart it."""
        files = []
        for path in self._tls_paths(config) or ():
            try:
                stat = path.stat()
                files.append((stat.st_mtime_ns, stat.st_size))
            except OSError:
                files.append(None)
        return dataclasses.replace(config, enabled=False), tuple(files)

    async def _open(self, config: HttpConfig) -> tuple[Any, str]:
        """Check the address, load TLS, bind: the hypercorn config for a socket of our own."""
        problem = refusal(config)
        if problem:
            raise ListenerError(problem)
        from hypercorn.config import Config as ServerConfig
        server_config = ServerConfig()
        tls = self._tls_paths(config)
        if tls is not None:
            server_config.certfile, server_config.keyfile = str(tls[0]), str(tls[1])
            try:
                server_config.create_ssl_context()
            except (OSError, ssl.SSLError) as exc:
                raise ListenerError(f"cannot load the TLS certificate {tls[0]} with key {tls[1]}: "
                                    f"{_os_reason(exc)}; fix http.tls_cert / http.tls_key") from None
        try:
            infos = await trio.socket.getaddrinfo(config.host, config.port, type=socket.SOCK_STREAM,
                                                  flags=socket.AI_PASSIVE)
        except OSError as exc:
            raise ListenerError(f"http.listen {config.listen}: cannot resolve {config.host!r} "
                                f"({_os_reason(exc)})") from None
        family, _, proto, _, sockaddr = infos[0]
        if is_loopback(config.host) and not is_loopback(sockaddr[0]):
            raise ListenerError(f"http.listen {config.listen}: {config.host} resolves to {sockaddr[0]}, "
                                "which is not a loopback address; use 127.0.0.1 or [::1]")
        sock = socket.socket(family, socket.SOCK_STREAM, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
        except OSError as exc:
            sock.close()
            raise ListenerError(_bind_error(config, exc)) from None
        port = sock.getsockname()[1]
        host = config.host
        if host in ("0.0.0.0", "::"):
            host = socket.gethostname()
        url = f"{'https' if tls else 'http'}://{url_host(host)}:{port}"
        server_config.bind = [f"fd://{sock.detach()}"]  # hypercorn owns the socket from here on
        server_config.backlog = BACKLOG
        server_config.keep_alive_timeout = config.keep_alive_timeout_s
        server_config.read_timeout = None  # a live event stream reads nothing for minutes
        server_config.graceful_timeout = GRACEFUL_S
        server_config.ssl_handshake_timeout = TLS_HANDSHAKE_S
        server_config.errorlog = _SERVER_LOG
        server_config.accesslog = None
        return server_config, url


def _bind_error(config: HttpConfig, exc: OSError) -> str:
    where = f"http.listen {config.listen}"
    if exc.errno == errno.EADDRINUSE:
        return (f"{where}: port {config.port} is already in use on {config.host} (another program, or "
                "another bgd); free it or choose another port in [http] listen, then reload")
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{where}: {config.host} is not an address of this machine; choose one it has"
    if exc.errno == errno.EACCES:
        return f"{where}: not allowed to bind port {config.port} (below 1024 needs privileges); use a higher port"
    return f"{where}: cannot listen there: {_os_reason(exc)}"


def _os_reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _leaf(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"
