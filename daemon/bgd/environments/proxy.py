"""The filtering proxy of a confined run: tinyproxy letting through exactly the allowed hosts.

Each confined phase of a run (its setup script, its agent) gets its own tinyproxy on a free port
of 127.0.0.1, with a filter file built from the allowed names (`FilterDefaultDeny Yes`: only what
the filter matches passes, for plain HTTP and for HTTPS CONNECT alike) and a refusal page that
says which policy refused the host. A bridge beside it (systemd-socket-proxyd, else socat:
bgcore.confinement.Bridge) accepts connections on a Unix socket and forwards each to that port;
the socket is what the sandbox sees (sandbox.py puts a second bridge inside the sandbox, on
127.0.0.1:PROXY_PORT, so programs use an ordinary HTTP proxy address). tinyproxy cannot listen on
a Unix socket itself, and the sandbox's network namespace has nothing else that leads out.

tinyproxy logs every refusal ("Proxying refused on filtered domain ..."); the proxy reads its log
as it comes and counts each refused host for the run record.

The text of the configuration, the filter and the parsing of the log are plain functions.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

import trio

from bgcore.confinement import Bridge, Probe, find_bridge

log = logging.getLogger("bgd.environments.proxy")

START_TIMEOUT_S = 10.0
BIND_ATTEMPTS = 3
_REFUSED_RE = re.compile(r'Proxying refused on filtered (?:domain|url) "([^"]*)"')
_BIND_FAILED = "Could not create listening sockets"


class ProxyError(Exception):
    """The filtering proxy could not start; the message says why and what to do."""


def filter_rules(names: Iterable[str]) -> str:
    """tinyproxy's filter file (FilterType ere) for names as network_policy.host_allowed reads them:
    `pypi.org` is that name exactly, `*.github.com` every name under github.com."""
    lines = ["# bgagents: the hosts this run may reach (one POSIX extended regular expression each)"]
    for name in names:
        if name.startswith("*."):
            lines.append(r"^.+\." + _ere_escape(name[2:]) + r"\.?$")
        else:
            lines.append("^" + _ere_escape(name) + r"\.?$")
    return "\n".join(lines) + "\n"


def _ere_escape(text: str) -> str:
    return re.sub(r"([.\\+*?\[\]^$(){}|])", r"\\\1", text)


def refusal_page(policy: str) -> str:
    """The body tinyproxy answers a refused request with (its 403 template: {url} is the request)."""
    return ("<html><head><title>403 Blocked by the network policy</title></head><body>\n"
            "<h1>Blocked by this routine's network policy</h1>\n"
            f"<p>bgagents: {{url}} is not allowed by network = {_html(policy)} of this routine. "
            "Add its host to the routine's network list in routines.toml to let it through.</p>\n"
            "</body></html>\n")


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def tinyproxy_conf(port: int, filter_path: Path, error_page: Path) -> str:
    """tinyproxy.conf for one proxy: loopback only, the filter as an allow-list, logs to stdout."""
    return "\n".join([
        "# bgagents: a routine run's filtering proxy (written for this run; see docs/routines.md)",
        f"Port {port}",
        "Listen 127.0.0.1",
        "Allow 127.0.0.1",
        "Timeout 600",
        "MaxClients 100",
        "LogLevel Notice",     # refusals and errors only: every line is read by bgd
        f'Filter "{filter_path}"',
        "FilterType ere",
        "FilterDefaultDeny Yes",
        "FilterURLs No",
        f'ErrorFile 403 "{error_page}"',
        "DisableViaHeader Yes",
        "",
    ])


def blocked_host(line: str) -> str | None:
    """The host a tinyproxy log line says it refused, or None."""
    match = _REFUSED_RE.search(line)
    return match.group(1).lower() if match else None


def listens(pgid: int, port: int) -> bool:
    """Whether a process of group `pgid` (the proxy, or the wrapper that runs it) listens on
    127.0.0.1:port: the socket's inode in /proc/net/tcp is among that group's open files."""
    wanted = f"0100007F:{port:04X}"
    inodes = set()
    try:
        with open("/proc/net/tcp") as table:
            next(table)
            for row in table:
                fields = row.split()
                if fields[1] == wanted and fields[3] == "0A":
                    inodes.add(f"socket:[{fields[9]}]")
    except OSError:
        return False
    if not inodes:
        return False
    return _owns(pgid, inodes) or any(_owns(pid, inodes) for pid in _members(pgid))


def _owns(pid: int, inodes: set[str]) -> bool:
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def _members(pgid: int) -> list[int]:
    """The other pids of process group `pgid` (a wrapper's children)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == pgid:
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def unix_listens(path: str | Path) -> bool:
    """Whether a Unix socket at `path` accepts connections (a listening entry in /proc/net/unix)."""
    wanted = str(path)
    try:
        with open("/proc/net/unix") as table:
            next(table)
            for row in table:
                fields = row.split(None, 7)
                # Num RefCount Protocol Flags Type St Inode Path; Flags 00010000: listening
                if len(fields) == 8 and fields[7].rstrip("\n") == wanted and int(fields[3], 16) & 0x10000:
                    return True
    except (OSError, ValueError):
        return False
    return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FilteringProxy:
    """One tinyproxy and the bridge that serves it on a Unix socket, for one phase of one run.

    `async with proxy:` is not offered on purpose: the proxy of an agent outlives the call that
    starts it (it lives as long as the agent's process), so the owner calls `start` and `close`."""

    def __init__(self, names: tuple[str, ...], directory: Path, *, policy: str,
                 command: tuple[str, ...] = ("tinyproxy",), bridge: Bridge | None = None, port: int = 0,
                 on_blocked: Callable[[str], None] | None = None):
        self.names = names
        self.directory = Path(directory)
        self.policy = policy
        self.command = tuple(command)
        self.bridge = bridge                  # None: bgcore.confinement.find_bridge() at start
        self.port = port                      # 0: a free port, chosen at start
        self.on_blocked = on_blocked
        self.blocked: Counter[str] = Counter()
        self.socket_path = self.directory / "proxy.sock"
        self.output: list[str] = []           # tinyproxy's last lines, for an error message
        self._tinyproxy: trio.Process | None = None
        self._bridge: trio.Process | None = None
        self.on_close: Callable[[], None] | None = None

    async def start(self, nursery: trio.Nursery) -> None:
        """Start both processes in `nursery` (which then holds them until `close`); raises
        ProxyError when tinyproxy cannot listen (after trying other ports when none was given)."""
        program = self.command[0] if self.command else "tinyproxy"
        if shutil.which(program) is None:
            raise ProxyError(f"the filtering proxy {program!r} is not installed; install tinyproxy "
                             "(Debian/Ubuntu: apt-get install tinyproxy) or set [environment] proxy_command")
        if self.bridge is None:
            found = find_bridge()
            if isinstance(found, Probe):
                raise ProxyError(f"{found.reason}; {found.fix}")
            self.bridge = found
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "filter").write_text(filter_rules(self.names))
        (self.directory / "refused.html").write_text(refusal_page(self.policy))
        fixed = self.port != 0
        attempts = 1 if fixed else BIND_ATTEMPTS
        for attempt in range(attempts):
            port = self.port if fixed else free_port()
            error = await self._start_tinyproxy(nursery, port)
            if error is None:
                self.port = port
                break
            if _BIND_FAILED not in error:
                raise ProxyError(f"the filtering proxy did not start: {error}")
            if attempt == attempts - 1:
                if fixed:
                    raise ProxyError(f"the filtering proxy could not listen on 127.0.0.1:{port}: the port is "
                                     "already taken by another program; stop it or leave the port to bgd")
                raise ProxyError(f"the filtering proxy could not listen on 127.0.0.1: {attempts} free ports were "
                                 "each taken by another program before it could bind them; try the run again")
        await self._start_bridge(nursery)

    async def _start_tinyproxy(self, nursery: trio.Nursery, port: int) -> str | None:
        conf = self.directory / "tinyproxy.conf"
        conf.write_text(tinyproxy_conf(port, self.directory / "filter", self.directory / "refused.html"))
        self.output = []
        try:
            proc = await trio.lowlevel.open_process([*self.command, "-d", "-c", str(conf)],
                                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                    stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            return f"cannot run {self.command[0]!r}: {exc.strerror or exc}"
        self._tinyproxy = proc
        nursery.start_soon(self._read_log, proc)
        exited = trio.Event()

        async def wait_exit() -> None:
            await proc.wait()
            exited.set()

        nursery.start_soon(wait_exit)
        with trio.move_on_after(START_TIMEOUT_S):
            # Listening means its own socket is there: another program on the port does not count.
            while not exited.is_set() and not listens(proc.pid, port):
                await trio.sleep(0.005)
            if not exited.is_set():
                return None
            await trio.sleep(0.05)  # its last lines
            return "; ".join(_meaningful(self.output)[-3:]) or f"it exited with code {proc.returncode}"
        _kill(proc)
        return f"it did not listen on 127.0.0.1:{port} within {START_TIMEOUT_S:g} seconds"

    async def _read_log(self, proc: trio.Process) -> None:
        buffer = b""
        assert proc.stdout is not None
        async for chunk in proc.stdout:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for raw in lines:
                line = raw.decode("utf-8", "replace")
                self.output = (self.output + [line])[-20:]
                host = blocked_host(line)
                if host is not None:
                    self.blocked[host] += 1
                    if self.on_blocked is not None:
                        self.on_blocked(host)

    async def _start_bridge(self, nursery: trio.Nursery) -> None:
        assert self.bridge is not None
        try:
            self.socket_path.unlink()
        except FileNotFoundError:
            pass
        argv = self.bridge.unix_to_tcp(str(self.socket_path), self.port)
        try:
            self._bridge = await trio.lowlevel.open_process(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                            stderr=subprocess.PIPE, start_new_session=True,
                                                            env={**os.environ, **self.bridge.env})
        except OSError as exc:
            raise ProxyError(f"cannot run {argv[0]!r}: {exc.strerror or exc}") from None
        with trio.move_on_after(START_TIMEOUT_S):
            while not unix_listens(self.socket_path):
                if self._bridge.poll() is not None:
                    err = await self._bridge.stderr.receive_some(4096) if self._bridge.stderr else b""
                    raise ProxyError(f"{self.bridge.kind} could not listen on {self.socket_path}: "
                                     f"{err.decode('utf-8', 'replace').strip() or 'it exited'}")
                await trio.sleep(0.005)
            os.chmod(self.socket_path, 0o600)   # systemd-socket-activate makes it 0644 (its directory is 0700)
            nursery.start_soon(self._drain_bridge, self._bridge)
            return
        raise ProxyError(f"{self.bridge.kind} did not listen on {self.socket_path} within {START_TIMEOUT_S:g} seconds")

    async def _drain_bridge(self, proc: trio.Process) -> None:
        """What the bridge says after it started (a connection it could not make), so a full pipe
        never stops it."""
        assert proc.stderr is not None
        async for chunk in proc.stderr:
            for line in chunk.decode("utf-8", "replace").splitlines():
                if line.strip():
                    log.debug("proxy bridge %s: %s", self.socket_path.parent.name, line.strip())

    async def close(self) -> None:
        """Stop both processes (and every connection a socat bridge forked)."""
        for proc in (self._bridge, self._tinyproxy):
            if proc is not None:
                _kill(proc)
        with trio.CancelScope(shield=True):
            for proc in (self._bridge, self._tinyproxy):
                if proc is not None:
                    await proc.wait()
        self._bridge = self._tinyproxy = None
        if self.on_close is not None:
            self.on_close()


def _kill(proc: trio.Process) -> None:
    """SIGKILL the process's whole group (a socat bridge's forked children, tinyproxy's threads)."""
    if proc.returncode is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            proc.kill()
        except ProcessLookupError:
            pass


def _meaningful(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        text = re.sub(r"^[A-Z]+\s+\w{3} \d\d \d\d:\d\d:\d\d\.\d+ \[\d+\]:\s*", "", line).strip()
        if text and not text.startswith(("sending stored logs", "done sending", "Initializing", "Reloading",
                                         "You SHOULD set a UserName")):
            out.append(text)
    return out
