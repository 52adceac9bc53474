"""The bubblewrap sandbox a routine's setup script and agent run in.

A *confined* sandbox (network policy other than "full"):
- a network namespace of its own: only loopback, and on it the bridge (systemd-socket-proxyd or
  socat, bgcore.confinement.Bridge; started inside, before the program) listening on
  127.0.0.1:PROXY_PORT and forwarding to the filtering proxy's Unix socket, bound in at
  PROXY_SOCKET; the program gets HTTP_PROXY and friends pointing there;
- the whole file system read-only, with a private /tmp (a directory of the run), the workspace
  read-write, and hidden behind empty directories (or an empty file): bgd's state dir (every
  run's workspace, the setup caches, the database), its config dir (env files, secrets), the
  user's runtime dir (agent sockets, bgd's own socket) and the credential files of
  bgcore.confinement.CREDENTIAL_PATHS, except what the routine grants (read-only) and the
  agent's own state (read-write);
- its own pid and IPC namespaces: when the program ends, everything it started ends with it.

An *unconfined* sandbox (network "full", used only to show the workspace at its template's path
and to end what a setup script left running): the host's file system as it is, the pid namespace,
and the workspace bound at the template's path.

`bwrap_argv` is a plain function of a `Sandbox` and the program's argv.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field

from bgcore.confinement import SOCAT, Bridge

__all__ = ["DAEMON_SOCKET", "PROXY_SOCKET", "Sandbox", "bwrap_argv", "proxy_env"]

INSIDE_TMP = "/tmp"
PROXY_SOCKET = "/tmp/.bgagents-proxy.sock"
DAEMON_SOCKET = "/tmp/.bgagents-daemon.sock"
BRIDGE_WAIT_S = 5


@dataclass
class Sandbox:
    bwrap: str = "bwrap"
    confined: bool = True
    binds: list[tuple[str, str]] = field(default_factory=list)   # (host path, path inside), read-write
    tmp: str | None = None                                       # host directory mounted at /tmp
    hidden: list[tuple[str, bool]] = field(default_factory=list)  # (path, is a directory)
    readable: list[str] = field(default_factory=list)            # granted back read-only
    writable: list[str] = field(default_factory=list)            # the agent's state, read-write
    proxy_socket: str | None = None                              # host path of the proxy's socket
    daemon_socket: str | None = None                             # host path of the run's daemon socket
    proxy_port: int = 3128
    bridge: Bridge = SOCAT                                       # what listens on proxy_port inside
    chdir: str | None = None
    empty: str = "/dev/null"                                     # an empty file, put over hidden files


def _under(path: str, parent: str) -> bool:
    path, parent = os.path.normpath(path), os.path.normpath(parent)
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def bwrap_argv(sandbox: Sandbox, command: list[str]) -> list[str]:
    """The argv that runs `command` in `sandbox` (later mounts cover earlier ones)."""
    s = sandbox
    argv = [s.bwrap]
    if s.confined:
        argv += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
        if s.tmp is not None:
            argv += ["--bind", s.tmp, INSIDE_TMP]
        for path, is_dir in s.hidden:
            if s.tmp is not None and _under(path, INSIDE_TMP):
                continue  # the private /tmp already hides it
            argv += ["--tmpfs", path] if is_dir else ["--ro-bind", s.empty, path]
        for path in s.readable:
            argv += ["--ro-bind", path, path]
        for path in s.writable:
            argv += ["--bind", path, path]
    else:
        argv += ["--dev-bind", "/", "/", "--proc", "/proc"]
    for host, inside in s.binds:
        argv += ["--bind", host, inside]
    if s.confined:
        if s.proxy_socket is not None:
            argv += ["--bind", s.proxy_socket, PROXY_SOCKET]
        if s.daemon_socket is not None:
            argv += ["--bind", s.daemon_socket, DAEMON_SOCKET]
        argv += ["--unshare-net", "--unshare-ipc", "--new-session"]
    argv += ["--unshare-pid", "--die-with-parent"]
    if s.chdir is not None:
        argv += ["--chdir", s.chdir]
    argv.append("--")
    if s.confined and s.proxy_socket is not None:
        return argv + ["bash", "--noprofile", "--norc", "-c", _bridge_script(s.bridge, s.proxy_port),
                       "bgagents-bridge", *command]
    return argv + list(command)


def _bridge_script(bridge: Bridge, port: int) -> str:
    # The bridge inside the sandbox: 127.0.0.1:port -> the proxy's socket. The program starts once
    # it listens (its LISTEN line in /proc/net/tcp), so its first request never finds nothing there.
    listen = f":{port:04X} 00000000:0000 0A"
    tries = BRIDGE_WAIT_S * 100
    command = " ".join([*(f"{k}={shlex.quote(v)}" for k, v in bridge.env.items()),
                        shlex.join(bridge.tcp_to_unix(port, PROXY_SOCKET))])
    return (f"{command} & "
            f"i=0; until grep -q '{listen}' /proc/net/tcp; do i=$((i+1)); "
            f"if [ $i -gt {tries} ]; then echo 'bgagents: the proxy bridge did not start' >&2; break; fi; "
            f"sleep 0.01; done; exec \"$@\"")


def proxy_env(port: int) -> dict[str, str]:
    """What points a program at the sandbox's proxy (both spellings; loopback stays direct)."""
    url = f"http://127.0.0.1:{port}"
    env = {}
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        env[name] = url
        env[name.lower()] = url
    env["NO_PROXY"] = env["no_proxy"] = "localhost,127.0.0.1,::1"
    return env
