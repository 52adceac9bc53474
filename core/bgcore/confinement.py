"""Whether this machine can confine a routine run, and what a confined run may not see.

A confined run (SPEC §8: a network policy other than "full") runs in a bubblewrap sandbox with a
network namespace of its own, a filtering proxy (tinyproxy) as its only way out, and socat between
the two. `probe` tries exactly that kind of sandbox once and says whether it works here, and if
not, why and what to do; the daemon refuses such a run as `sandbox_unavailable` with that reason,
and `bgctl doctor` shows the same check.

Standard library only (bgctl runs the probe itself): a probe is one short `bwrap ... true`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Iterable

__all__ = ["AGENT_STATE_PATHS", "CREDENTIAL_PATHS", "Probe", "SOCKET_VARIABLES", "SYSTEM_SOCKETS", "agent_state_paths", "credential_paths", "probe",
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


def probe(bwrap: str = "bwrap", proxy: str = "tinyproxy", socat: str = "socat", timeout: float = 10.0) -> Probe:
    """Try a sandbox like a confined run's; name the first missing piece with its fix."""
    if shutil.which(bwrap) is None:
        return Probe(False, f"bubblewrap ({bwrap!r}) is not installed, so a run cannot get a network of its own",
                     "install it (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap), "
                     "or set [routines] bwrap to its path in config.toml")
    try:
        result = subprocess.run(probe_argv(bwrap), capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return Probe(False, f"a test sandbox ({bwrap}) did not finish within {timeout:g} seconds",
                     "check that bubblewrap works: bwrap --ro-bind / / --unshare-net true")
    except OSError as exc:
        return Probe(False, f"cannot run {bwrap!r}: {exc.strerror or exc}",
                     "reinstall bubblewrap or set [routines] bwrap to a working one")
    if result.returncode != 0:
        message = (result.stderr.strip().splitlines() or [f"it exited with code {result.returncode}"])[-1]
        return Probe(False, f"bubblewrap cannot make a sandbox here: {message}", _namespace_fix(message))
    for program, package, key in ((proxy, "tinyproxy", "proxy_command"), (socat, "socat", "socat")):
        if shutil.which(program) is None:
            return Probe(False, f"{package} ({program!r}) is not installed; a confined run's only way out is "
                                "the filtering proxy",
                         f"install it (Debian/Ubuntu: apt-get install {package}), or set [routines] {key}")
    return Probe(True, f"confined runs work here (bubblewrap {bwrap}, {proxy}, {socat})")


def _namespace_fix(message: str) -> str:
    text = message.lower()
    if "permission" in text or "operation not permitted" in text or "namespace" in text:
        return ("allow unprivileged user namespaces: sysctl -w kernel.unprivileged_userns_clone=1 (Debian), "
                "or on Ubuntu 23.10 and later allow them for bwrap (an AppArmor profile for /usr/bin/bwrap, or "
                "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0); inside a container, run it with "
                "user namespaces allowed")
    return "check that bubblewrap works: bwrap --ro-bind / / --unshare-net true"
