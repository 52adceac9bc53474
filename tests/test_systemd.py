"""systemd integration: the shipped units, socket activation, sd_notify.

The units in contrib/systemd are checked with `systemd-analyze verify` (as user
units, with ExecStart pointed at the bgd installed here).  Socket activation is
exercised the way systemd does it: the test owns a listening socket and hands
it to bgd as fd 3 with LISTEN_FDS=1 and LISTEN_PID=<bgd's pid>.  READY=1 is
read from a NOTIFY_SOCKET datagram socket the test binds.  No systemd manager
runs in a container, so `systemctl --user` itself is not exercised here.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from bgctl.client import Client
from conftest import ROOT, wait_until

UNITS = ROOT / "contrib" / "systemd"

# Becomes bgd with the listening socket on fd 3: exec keeps the pid, so
# LISTEN_PID can name the process that will read it, as systemd's does.
ACTIVATE = (
    "import os, sys\n"
    "fd = int(sys.argv[1])\n"
    "if fd != 3:\n"
    "    os.dup2(fd, 3)\n"
    "    os.close(fd)\n"
    "os.environ['LISTEN_FDS'] = '1'\n"
    "os.environ['LISTEN_PID'] = str(os.getpid())\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def installed_bgd() -> str | None:
    """The bgd console script of this interpreter (not a pyenv shim), else the one on PATH."""
    beside = Path(sys.executable).parent / "bgd"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("bgd")


def unit_settings(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file's settings by section (repeated keys keep every value)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


# -- the unit files -------------------------------------------------------------------


def test_units_say_what_the_issue_asks(monkeypatch):
    service = unit_settings(UNITS / "bgd.service")
    sock = unit_settings(UNITS / "bgd.socket")
    assert service["Service"]["Type"] == ["notify"]
    assert service["Service"]["Restart"] == ["on-failure"]
    assert service["Service"]["ExecStart"] == ["%h/.local/bin/bgd"]
    assert sock["Socket"]["ListenStream"] == ["%t/bgagents/bgd.sock"]
    assert sock["Socket"]["SocketMode"] == ["0600"]
    assert sock["Socket"]["DirectoryMode"] == ["0700"]
    # %t is $XDG_RUNTIME_DIR: the socket is where bgctl looks by default.
    from bgcore import paths
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    monkeypatch.delenv("BGD_SOCKET", raising=False)
    assert str(paths.socket_path(None)) == "/run/user/1000/bgagents/bgd.sock"


def _verify_mode(tmp: Path) -> tuple[list[str], dict]:
    """Options under which `systemd-analyze verify` works here, proved on a trivial unit."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    runtime = tmp / "runtime"
    runtime.mkdir(mode=0o700)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime))
    probe = tmp / "probe" / "probe.service"
    probe.parent.mkdir()
    probe.write_text("[Service]\nType=oneshot\nExecStart=/bin/true\n")
    tried = []
    for options in (["--user", "--man=no"], ["--man=no"]):
        cmd = [analyze, "verify", *options, str(probe)]
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        if result.returncode == 0:
            return [analyze, "verify", *options], env
        tried.append(f"{' '.join(options)}: {(result.stderr or result.stdout).strip()[:200]}")
    pytest.skip("systemd-analyze verify cannot run in this container: " + " | ".join(tried))


def test_units_pass_systemd_analyze_verify(tmp_path):
    cmd, env = _verify_mode(tmp_path)
    bgd = installed_bgd()
    assert bgd, "bgd is not installed (pip install -e .)"
    units = tmp_path / "units"
    units.mkdir()
    shutil.copy(UNITS / "bgd.socket", units / "bgd.socket")
    text = (UNITS / "bgd.service").read_text()
    text, count = re.subn(r"^ExecStart=%h/\.local/bin/bgd$", f"ExecStart={bgd}", text, flags=re.M)
    assert count == 1
    (units / "bgd.service").write_text(text)
    result = subprocess.run([*cmd, str(units / "bgd.socket"), str(units / "bgd.service")],
                            env=env, capture_output=True, text=True, timeout=60, cwd=units)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, output
    # Warnings (an unknown key, a bad specifier) do not fail verify: refuse them too.
    about_us = [line for line in output.splitlines() if "bgd." in line]
    assert not about_us, output


# -- socket activation ------------------------------------------------------------------


def _listening_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    os.chmod(path, 0o600)
    sock.listen(16)
    return sock


def _activate(bgd, listener: socket.socket, extra_env: dict | None = None) -> subprocess.Popen:
    """Start bgd as systemd would for a socket unit: the listener as fd 3, LISTEN_* set."""
    env = dict(bgd.env, **(extra_env or {}))
    log = open(bgd.log_path, "ab")
    fd = listener.fileno()
    proc = subprocess.Popen([sys.executable, "-c", ACTIVATE, str(fd), sys.executable, "-m", "bgd"],
                            env=env, pass_fds=(fd,), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    log.close()
    return proc


def _status(path: Path, timeout: float = 20.0) -> dict:
    with Client.connect(path, spawn=False) as client:
        client.sock.settimeout(timeout)
        return client.call("daemon.status")


def test_bgd_serves_an_inherited_socket(bgd):
    listener = _listening_socket(bgd.socket)
    inode = os.stat(bgd.socket).st_ino
    try:
        bgd.proc = _activate(bgd, listener)
        status = _status(bgd.socket)
        assert status["pid"] == bgd.proc.pid
        assert status["socket"] == str(bgd.socket)
        # bgctl reaches it the ordinary way, and never spawns a daemon of its own.
        listed = bgd.ctl("--no-spawn", "ls", "--json")
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout) == []
        s = bgd.dispatch("say through systemd")
        assert bgd.wait_state(s["id"], "completed")["last_message"] == "through systemd"
        # It used the socket it was given: same file, no lock file of its own.
        assert os.stat(bgd.socket).st_ino == inode
        assert not bgd.socket.with_name("bgd.sock.lock").exists()
        assert "using the socket systemd passed in" in bgd.log()
        assert bgd.stop(signal.SIGTERM) == 0
        # The socket belongs to systemd: bgd leaves it, and it still takes connections
        # (systemd would start bgd again for them).
        assert bgd.socket.exists() and os.stat(bgd.socket).st_ino == inode
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.connect(str(bgd.socket))
    finally:
        listener.close()


def test_listen_fds_for_another_pid_is_ignored(bgd):
    """LISTEN_FDS meant for a parent (LISTEN_PID not ours) must not make bgd grab fd 3."""
    bgd.start(extra_env={"LISTEN_FDS": "1", "LISTEN_PID": "1"})
    assert stat.S_ISSOCK(os.stat(bgd.socket).st_mode)
    assert bgd.rpc("daemon.status")["pid"] == bgd.proc.pid
    assert "using the socket systemd passed in" not in bgd.log()


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                    reason="systemd-socket-activate is not installed (apt-get install systemd)")
def test_systemd_socket_activate_starts_bgd_on_first_connection(bgd):
    env_flags = []
    for key in ("BGD_SOCKET", "BGD_CONFIG_DIR", "BGD_STATE_DIR", "PATH", "HOME", "PYTHONPATH"):
        if key in bgd.env:
            env_flags.append(f"--setenv={key}={bgd.env[key]}")
    log = open(bgd.log_path, "ab")
    bgd.proc = subprocess.Popen(["systemd-socket-activate", f"--listen={bgd.socket}", *env_flags,
                                 sys.executable, "-m", "bgd"],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    log.close()
    def listening() -> bool:
        assert bgd.proc.poll() is None, bgd.log()
        return bgd.socket.exists()
    wait_until(listening, 10, "systemd-socket-activate's socket")
    # Nothing runs bgd until this connection arrives; it is answered all the same.
    status = _status(bgd.socket)
    assert status["pid"] == bgd.proc.pid  # systemd-socket-activate execs bgd in place
    assert "using the socket systemd passed in" in bgd.log()
    assert bgd.stop(signal.SIGTERM) == 0


class Activator:
    """What systemd does for bgd.socket: hold the listener, start bgd whenever a
    connection waits and no bgd runs."""

    def __init__(self, bgd, listener: socket.socket):
        self.bgd = bgd
        self.listener = listener
        self.pids: list[int] = []
        self.current: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            readable, _, _ = select.select([self.listener], [], [], 0.05)
            if not readable or self._stop.is_set():
                continue
            self.current = _activate(self.bgd, self.listener)
            self.pids.append(self.current.pid)
            while self.current.poll() is None and not self._stop.is_set():
                time.sleep(0.02)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        if self.current is not None and self.current.poll() is None:
            self.current.send_signal(signal.SIGTERM)
            try:
                self.current.wait(20)
            except subprocess.TimeoutExpired:
                self.current.kill()
                self.current.wait()


def test_bgctl_daemon_stop_returns_under_socket_activation(bgd):
    """The socket keeps answering after bgd exits (systemd starts a new one), so
    `bgctl daemon stop` must wait for the old pid to go, not for silence."""
    listener = _listening_socket(bgd.socket)
    activator = Activator(bgd, listener)
    try:
        first = _status(bgd.socket)["pid"]
        # Before the fix this waited for silence that never comes and failed after 30 s.
        stopped = bgd.ctl("--json", "daemon", "stop", timeout=60)
        assert stopped.returncode == 0, stopped.stderr + bgd.log()
        assert json.loads(stopped.stdout) == {"stopped": True, "pid": first}
        assert first in activator.pids
        again = _status(bgd.socket)["pid"]
        assert again != first
    finally:
        activator.close()
        listener.close()


# -- sd_notify ----------------------------------------------------------------------------


def _notify_socket(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(20)
    return sock


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_ready_is_sent_once_the_socket_listens(bgd, abstract):
    tmp = Path(tempfile.mkdtemp(prefix="bgd-notify-", dir="/tmp"))
    try:
        if abstract:
            name = f"bgd-test-notify-{os.getpid()}-{time.monotonic_ns()}"
            receiver, address = _notify_socket("\0" + name), "@" + name
        else:
            path = tmp / "notify"
            receiver, address = _notify_socket(str(path)), str(path)
        with receiver:
            bgd.start(extra_env={"NOTIFY_SOCKET": address}, wait=False)
            message = receiver.recv(4096).decode()
            assert "READY=1" in message.split("\n")
            # READY=1 promises a listening socket: connect at once, no retrying.
            assert Client.connect(bgd.socket, spawn=False).call("daemon.status")["pid"] == bgd.proc.pid
            bgd.proc.send_signal(signal.SIGTERM)
            assert "STOPPING=1" in receiver.recv(4096).decode().split("\n")
            assert bgd.proc.wait(20) == 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_ready_with_an_inherited_socket(bgd):
    tmp = Path(tempfile.mkdtemp(prefix="bgd-notify-", dir="/tmp"))
    listener = _listening_socket(bgd.socket)
    try:
        with _notify_socket(str(tmp / "notify")) as receiver:
            bgd.proc = _activate(bgd, listener, {"NOTIFY_SOCKET": str(tmp / "notify")})
            assert "READY=1" in receiver.recv(4096).decode().split("\n")
            assert _status(bgd.socket)["pid"] == bgd.proc.pid
    finally:
        bgd.stop()
        listener.close()
        shutil.rmtree(tmp, ignore_errors=True)
