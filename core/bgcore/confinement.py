"""Whether this machine can confine a routine run, and what a confined run may not see.

A confined run (SPEC §8: a network policy other than "full") runs in a bubblewrap sandbox with a
network namespace of its own, a filtering proxy (tinyproxy) as its only way out, and a bridge
between the two (`find_bridge`: systemd-socket-proxyd where it is installed, else socat). `probe`
tries exactly that kind of sandbox once and says whether it works here, and if not, why and what
to do; the daemon refuses such a run as `sandbox_unavailable` with that reason, and `bgctl doctor`
shows the same check.

Standard library only (bgctl runs the probe itself): a probe is one short `bwrap ... true`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Iterable

__all__ = ["AGENT_STATE_PATHS", "Bridge", "CREDENTIAL_PATHS", "Probe", "SOCAT", "SOCKET_PROXYD_PATHS",
           "SOCKET_VARIABLES", "SYSTEM_SOCKETS", "agent_state_paths", "credential_paths", "find_bridge", "probe",
           "probe_argv"]

# Under $HOME: what a confined run cannot read unless its routine grants it (`grant = [...]`),
# besides bgd's own config and state dirs and the user's runtime dir (agent sockets). Documented in
# docs/routines.md ("What a confined run sees").
CREDENTIAL_PATHS: tuple[str, ...] = (
    ".ssh", ".gnupg", ".aws", ".azure", ".config/gcloud", ".config/gh", ".config/hub", ".config/glab-cli",
    ".netrc", ".git-credentials", ".config/git/credentials", ".docker", ".kube", ".npmrc", ".yarnrc",
    ".pypirc", ".config/pip/pip.conf", ".cargo/credentials", ".cargo/credentials.toml", ".gem/credentials",
    ".m2/settings.xml", ".gradle/gradle.properties", ".terraform.d/credentials.tfrc.json", ".vault-token",
    ".password-store", ".local/share/keyrings", ".config/op", ".config/rclone", ".s3cfg", ".boto",
    ".config/doctl", ".config/heroku", ".netlify", ".config/netlify", ".config/vercel",
)

# Unix sockets of system services that could reach the network (or the machine) on a confined
# run's behalf, a network namespace does not cover them: hidden. (Its /tmp is its own, so /tmp's
# sockets, X11's among them, are gone too; abstract sockets belong to the network namespace.)
SYSTEM_SOCKETS: tuple[str, ...] = (
    "/run/user", "/run/dbus", "/var/run/dbus", "/run/docker.sock", "/var/run/docker.sock", "/run/containerd",
    "/run/podman", "/run/snapd.socket", "/run/snapd-snap.socket", "/run/libvirt", "/run/cups",
)

# Where an agent keeps its own state (login, settings, conversation files): writable in a confined
# run so the agent works as it does outside. By backend and by the program's basename; more with
# `state_paths` under [agents.NAME].
AGENT_STATE_PATHS: dict[str, tuple[str, ...]] = {
    "claude": (".claude", ".claude.json", ".local/state/claude"),
    "gemini": (".gemini",),
    "codex": (".codex",),
    "aider": (".aider",),
    "goose": (".config/goose", ".local/share/goose"),
}

# Variables of the daemon's environment that would hand a confined run a way around its
# confinement (agent sockets outside the sandbox); they are removed from its environment.
SOCKET_VARIABLES = ("SSH_AUTH_SOCK", "GPG_AGENT_INFO", "DBUS_SESSION_BUS_ADDRESS")


def credential_paths(home: str, existing=os.path.lexists) -> list[str]:
    """The CREDENTIAL_PATHS that exist under `home`, as absolute paths."""
    return [p for p in (os.path.join(home, rel) for rel in CREDENTIAL_PATHS) if existing(p)]


def agent_state_paths(backend: str, command: Iterable[str], configured: Iterable[str], home: str) -> list[str]:
    """The absolute paths an agent keeps its state in (see AGENT_STATE_PATHS)."""
    program = os.path.basename(next(iter(command), "")).lower()
    out: list[str] = []
    for rel in (*AGENT_STATE_PATHS.get(backend, ()), *AGENT_STATE_PATHS.get(program, ()), *configured):
        path = os.path.join(home, os.path.expanduser(rel)) if not os.path.isabs(os.path.expanduser(rel)) \
            else os.path.expanduser(rel)
        if path not in out:
            out.append(path)
    return out


@dataclass(frozen=True)
class Bridge:
    """What carries a confined run's connections to its proxy, twice: inside the sandbox from
    127.0.0.1:PORT to a Unix socket bound in, and outside from that socket to tinyproxy's port
    (tinyproxy listens only on TCP, and the sandbox has no network but that socket).

    `systemd-socket-proxyd` is one event-driven process for all connections (splice(2) between
    the two sockets), handed its listening socket by `systemd-socket-activate`; `socat` forks a
    process per connection, which costs about a millisecond each way (docs/benchmarks.md)."""
    kind: str               # "systemd-socket-proxyd" or "socat"
    program: str            # socat, or systemd-socket-proxyd's path
    activate: str = ""      # systemd-socket-activate, for the systemd kind

    def tcp_to_unix(self, port: int, path: str) -> list[str]:
        """Listen on 127.0.0.1:port, forward each connection to the Unix socket `path`."""
        if self.kind == "socat":
            return [self.program, f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr,nodelay", f"UNIX-CONNECT:{path}"]
        return [self.activate, "-l", f"127.0.0.1:{port}", self.program, path]

    def unix_to_tcp(self, path: str, port: int) -> list[str]:
        """Listen on the Unix socket `path`, forward each connection to 127.0.0.1:port."""
        if self.kind == "socat":
            return [self.program, f"UNIX-LISTEN:{path},fork,mode=600,unlink-early", f"TCP:127.0.0.1:{port},nodelay"]
        return [self.activate, "-l", path, self.program, f"127.0.0.1:{port}"]

    @property
    def env(self) -> dict[str, str]:
        """Its environment's additions: systemd's tools say only what goes wrong."""
        return {"SYSTEMD_LOG_LEVEL": "warning"} if self.kind != "socat" else {}

    def describe(self) -> str:
        if self.kind == "socat":
            return f"socat ({self.program}: a process per connection; systemd-socket-proxyd is faster where installed)"
        return f"systemd-socket-proxyd ({self.program})"


SOCAT = Bridge("socat", "socat")
# Where distributions install it (not on PATH): Debian, Ubuntu, Fedora, Arch, openSUSE.
SOCKET_PROXYD_PATHS = ("/usr/lib/systemd/systemd-socket-proxyd", "/lib/systemd/systemd-socket-proxyd")


def find_bridge(choice: str = "auto", socat: str = "socat", which=shutil.which,
                executable=lambda path: os.access(path, os.X_OK)) -> "Bridge | Probe":
    """The bridge `[environment] bridge = choice` gives on this machine ("auto": systemd-socket-proxyd
    where both it and systemd-socket-activate are installed, else socat), or a failed Probe that
    says what is missing and how to fix it."""
    if choice != "socat":
        proxyd = which("systemd-socket-proxyd") or next((p for p in SOCKET_PROXYD_PATHS if executable(p)), None)
        activate = which("systemd-socket-activate")
        if proxyd is not None and activate is not None:
            return Bridge("systemd-socket-proxyd", proxyd, activate)
        if choice == "systemd-socket-proxyd":
            missing = "systemd-socket-proxyd" if proxyd is None else "systemd-socket-activate"
            return Probe(False, f"{missing} is not installed; [environment] bridge = \"systemd-socket-proxyd\" needs "
                                "it and systemd-socket-activate (both from systemd)",
                         "install systemd's tools (Debian/Ubuntu: apt-get install systemd), or set [environment] "
                         "bridge = \"auto\" to use socat where they are missing")
    found = which(socat)
    if found is None:
        return Probe(False, f"neither systemd-socket-proxyd nor socat ({socat!r}) is installed; a confined run "
                            "reaches its proxy through one of them",
                     "install socat (Debian/Ubuntu: apt-get install socat) or systemd's tools, or set "
                     "[environment] socat to its path")
    return Bridge("socat", found)


@dataclass(frozen=True)
class Probe:
    ok: bool
    reason: str            # what works, or why it does not
    fix: str | None = None

    def to_json(self) -> dict:
        return {"ok": self.ok, "reason": self.reason, "fix": self.fix}


def probe_argv(bwrap: str) -> list[str]:
    """The sandbox a probe makes: the parts a confined run uses (new network and pid namespaces, a
    read-only root, a private /tmp)."""
    return [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
            "--unshare-net", "--unshare-pid", "--unshare-ipc", "--die-with-parent", "--new-session", "--", "true"]


def probe(bwrap: str = "bwrap", proxy: str = "tinyproxy", socat: str = "socat", timeout: float = 10.0,
          bridge: str = "auto") -> Probe:
    """Try a sandbox like a confined run's; name the first missing piece with its fix."""
    if shutil.which(bwrap) is None:
        return Probe(False, f"bubblewrap ({bwrap!r}) is not installed, so a run cannot get a network of its own",
                     "install it (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap), "
                     "or set [environment] bwrap to its path in config.toml")
    try:
        result = subprocess.run(probe_argv(bwrap), capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return Probe(False, f"a test sandbox ({bwrap}) did not finish within {timeout:g} seconds",
                     "check that bubblewrap works: bwrap --ro-bind / / --unshare-net true")
    except OSError as exc:
        return Probe(False, f"cannot run {bwrap!r}: {exc.strerror or exc}",
                     "reinstall bubblewrap or set [environment] bwrap to a working one")
    if result.returncode != 0:
        message = (result.stderr.strip().splitlines() or [f"it exited with code {result.returncode}"])[-1]
        return Probe(False, f"bubblewrap cannot make a sandbox here: {message}", _namespace_fix(message))
    if shutil.which(proxy) is None:
        return Probe(False, f"tinyproxy ({proxy!r}) is not installed; a confined run's only way out is the "
                            "filtering proxy",
                     "install it (Debian/Ubuntu: apt-get install tinyproxy), or set [environment] proxy_command")
    old = _old_tinyproxy(proxy, timeout)
    if old is not None:
        return Probe(False, f"{proxy} is tinyproxy {old}, older than 1.11: its configuration has no FilterType, "
                            "so it cannot be a confined run's proxy",
                     "install tinyproxy 1.11 or later (Debian 11, Ubuntu 22.04 and later have it), or set "
                     "[environment] proxy_command to one")
    found = find_bridge(bridge, socat)
    if isinstance(found, Probe):
        return found
    return Probe(True, f"confined runs work here (bubblewrap {bwrap}, {proxy}, bridge: {found.describe()})")


def _old_tinyproxy(program: str, timeout: float) -> str | None:
    """The version `program -v` reports when it is a tinyproxy older than 1.11 (1.10 and before read
    `FilterExtended`, not `FilterType`, and refuse the whole file), else None (a wrapper that says
    something else is left to the proxy's own start)."""
    try:
        result = subprocess.run([program, "-v"], capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.match(r"tinyproxy (\d+)\.(\d+)(\S*)", (result.stdout or result.stderr).strip())
    if match is None or (int(match.group(1)), int(match.group(2))) >= (1, 11):
        return None
    return f"{match.group(1)}.{match.group(2)}{match.group(3)}"


def _namespace_fix(message: str) -> str:
    text = message.lower()
    if "permission" in text or "operation not permitted" in text or "namespace" in text:
        return ("allow unprivileged user namespaces: sysctl -w kernel.unprivileged_userns_clone=1 (Debian), "
                "or on Ubuntu 23.10 and later allow them for bwrap (an AppArmor profile for /usr/bin/bwrap, or "
                "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0); inside a container, run it with "
                "user namespaces allowed")
    return "check that bubblewrap works: bwrap --ro-bind / / --unshare-net true"
