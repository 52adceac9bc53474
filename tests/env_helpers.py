"""Helpers of the routine-environment tests: local HTTP(S) servers with names, and what the machine
must have for them (bubblewrap, tinyproxy, a bridge: systemd-socket-proxyd or socat; root for a
mount namespace of the daemon's own).

Names without touching the machine: the daemon (and so the proxy it starts) runs in a mount
namespace of its own (`unshare -m`) where a test hosts file is bound over /etc/hosts, mapping
`allowed.test` and `blocked.test` to 127.0.0.1. Nothing outside that namespace sees the names.
"""

from __future__ import annotations

import http.server
import os
import shutil
import socketserver
import ssl
import threading
from pathlib import Path

import pytest

NAMES = ("allowed.test", "blocked.test")


def need_confinement() -> None:
    missing = [tool for tool in ("bwrap", "tinyproxy") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (tests/run installs bubblewrap, tinyproxy and socat as root)")
    from bgcore.confinement import probe
    result = probe()
    if not result.ok:
        pytest.skip(f"confinement does not work on this machine: {result.reason}")


def bridges() -> list:
    """The bridges this machine has (bgcore.confinement.find_bridge), each one a test parameter."""
    from bgcore.confinement import Bridge, find_bridge
    found = [find_bridge(kind) for kind in ("systemd-socket-proxyd", "socat")]
    return [pytest.param(b, id=b.kind) if isinstance(b, Bridge) else
            pytest.param(None, id=kind, marks=pytest.mark.skip(reason=b.reason))
            for kind, b in zip(("systemd-socket-proxyd", "socat"), found)]


def need_names() -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("named test servers need a mount namespace for the daemon (unshare -m as root)")


def hosts_file(directory: Path) -> Path:
    path = directory / "hosts"
    path.write_text("127.0.0.1 localhost\n::1 localhost\n" + "".join(f"127.0.0.1 {n}\n" for n in NAMES))
    return path


def named_prefix(hosts: Path) -> list[str]:
    """A command prefix that runs the rest in a mount namespace with `hosts` as /etc/hosts (the
    daemon keeps its pid: the shell execs it)."""
    return ["unshare", "-m", "--propagation", "private", "sh", "-c",
            'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts)]


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (the standard library's name)
        body = f"hello from {self.server.label}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class Servers:
    """One HTTP server per name (each on its own port of 127.0.0.1), optionally with TLS."""

    def __init__(self, tls: ssl.SSLContext | None = None):
        self.servers: dict[str, _Server] = {}
        for name in NAMES:
            server = _Server(("127.0.0.1", 0), _Handler)
            server.label = name
            if tls is not None:
                server.socket = tls.wrap_socket(server.socket, server_side=True)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self.servers[name] = server
        self.scheme = "https" if tls is not None else "http"

    def url(self, name: str) -> str:
        return f"{self.scheme}://{name}:{self.servers[name].server_address[1]}/"

    def close(self) -> None:
        for server in self.servers.values():
            server.shutdown()
            server.server_close()


@pytest.fixture
def servers():
    s = Servers()
    yield s
    s.close()


def user_prefix(hosts: Path, uid: int, gid: int, needed: list[str], stage: Path) -> list[str]:
    """A command prefix that runs the rest as uid:gid (setpriv, no capabilities left) in a mount
    namespace of its own with `hosts` as /etc/hosts, where each of the `needed` paths (the test's
    Python, its virtualenv, the source tree) can be reached by that user: a directory on their way
    that others cannot enter (a Python installed under /root) is covered by an empty tmpfs there,
    into which the parts on the way are bound back. Nothing changes outside the namespace."""
    script = ['mount --bind "$0" /etc/hosts']
    covered: dict[str, set[str]] = {}
    for path in needed:
        parts = Path(os.path.realpath(path)).parts
        for depth in range(2, len(parts)):
            ancestor = os.path.join(*parts[:depth])
            if not os.stat(ancestor).st_mode & 0o001 and os.stat(ancestor).st_uid != uid:
                covered.setdefault(ancestor, set()).add(os.path.join(ancestor, parts[depth]))
                break
    for n, (ancestor, children) in enumerate(sorted(covered.items())):
        for m, child in enumerate(sorted(children)):
            (stage / f"{n}-{m}").mkdir(parents=True)
            script.append(f'mount --bind "{child}" "{stage}/{n}-{m}"')
        script.append(f'mount -t tmpfs -o mode=755 bgagents-test "{ancestor}"')
        for m, child in enumerate(sorted(children)):
            script.append(f'mkdir -p "{child}" && mount --bind "{stage}/{n}-{m}" "{child}"')
    script.append(f'exec setpriv --reuid={uid} --regid={gid} --clear-groups -- "$@"')
    return ["unshare", "-m", "--propagation", "private", "sh", "-ec", " && ".join(script), str(hosts)]
