"""Shared fixtures: a real `bgd` process on temporary dirs, `bgctl` runs, the fake agent."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import settings

from bgctl.client import Client

# Property tests assert on behaviour, never on speed: no per-example deadline (a
# loaded 2-core box must not turn a slow example into a failure). CI runs a fixed
# sequence of examples so a red build can be replayed; locally they vary.
settings.register_profile("default", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")

TESTS = Path(__file__).parent
FAKE_CLAUDE = TESTS / "fake_claude.py"
ROOT = TESTS.parent


def config_text(extra: str = "", fake: Path = FAKE_CLAUDE, web: bool = False) -> str:
    # The web page is off unless a test asks for it: test daemons then bind no TCP port.
    return (f'stop_grace_s = 1\nidle_timeout_s = 30\n[loops]\njitter = false\n[scheduler]\njitter = false\n'
            + ('' if web else '[web]\nenabled = false\n')
            + f'[agents.claude]\ncommand = [{json.dumps(sys.executable)}, {json.dumps(str(fake))}]\n' + extra)


class Bgd:
    """A real daemon process with its own socket, config and state dirs."""

    def __init__(self, base: Path, sock_dir: Path):
        self.base = base
        self.socket = sock_dir / "bgd.sock"
        self.config_dir = base / "config"
        self.state_dir = base / "state"
        self.work = base / "work"
        for d in (self.config_dir, self.state_dir, self.work):
            d.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.log_path = base / "bgd.log"
        self.env = dict(os.environ, BGD_SOCKET=str(self.socket), BGD_CONFIG_DIR=str(self.config_dir),
                        BGD_STATE_DIR=str(self.state_dir), PYTHONUNBUFFERED="1")
        self.env.pop("BGCTL_NO_SPAWN", None)

    def write_config(self, extra: str = "", web: bool = False) -> None:
        (self.config_dir / "config.toml").write_text(config_text(extra, web=web))

    def start(self, extra_env: dict | None = None, wait: bool = True, args: list[str] | None = None,
              prefix: list[str] | None = None) -> subprocess.Popen:
        env = dict(self.env, **(extra_env or {}))
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([*(prefix or []), sys.executable, "-m", "bgd", *(args or [])], env=env,
                                     stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        if wait:
            self.wait_ready()
        return self.proc

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"bgd exited {self.proc.returncode}: {self.log()}")
            try:
                Client.connect(self.socket, spawn=False).close()
                return
            except Exception:
                time.sleep(0.02)
        raise AssertionError(f"bgd did not start: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def ctl(self, *args: str, input: str | None = None, env: dict | None = None, timeout: float = 30,
            cwd: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bgctl", *args], env=dict(self.env, **(env or {})),
                              capture_output=True, text=True, input=input, timeout=timeout,
                              cwd=cwd or str(self.work))

    def ctl_json(self, *args: str) -> object:
        # Leading, since --json counts only before the prompt or name words.
        result = self.ctl("--json", *args) if "--json" not in args else self.ctl(*args)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def client(self) -> Client:
        return Client.connect(self.socket, spawn=False)

    def rpc(self, method: str, params: dict | None = None):
        with self.client() as c:
            return c.call(method, params)

    def dispatch(self, prompt: str, **params) -> dict:
        return self.rpc("session.dispatch", {"prompt": prompt, "cwd": str(self.work), **params})

    def dispatch_retry(self, prompt: str, timeout: float = 10.0, **params) -> dict:
        """Dispatch, retrying while the daemon has not yet applied a config change."""
        from bgcore.jsonrpc import RpcError
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.dispatch(prompt, **params)
            except RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def wait_session(self, session_id: str, predicate, timeout: float = 20.0) -> dict:
        """Wait, on the event stream (no polling), until the session satisfies `predicate`."""
        with self.client() as c:
            c.sock.settimeout(timeout)
            c.call("events.subscribe", {"session": session_id, "types": ["session.updated"]})
            session = c.call("session.get", {"id": session_id})
            deadline = time.monotonic() + timeout
            while not predicate(session):
                if time.monotonic() > deadline:
                    raise AssertionError(f"session {session_id} never matched; last: {session}")
                note = next(c.notifications_iter())
                if note.method == "event" and note.params["type"] == "session.updated":
                    session = note.params["session"]
            return session

    def wait_state(self, session_id: str, *states: str, timeout: float = 20.0) -> dict:
        return self.wait_session(session_id, lambda s: s["state"] in states, timeout)


    def stop_any(self) -> None:
        """Stop whatever daemon serves this socket, including one bgctl or bgls started on demand."""
        self.stop()
        lock = self.socket.with_name(self.socket.name + ".lock")
        try:
            pid = int(lock.read_text().strip() or 0)
        except (OSError, ValueError):
            return
        if pid <= 0 or not pid_alive(pid):
            return
        try:  # the pid in an old lock file may belong to another process by now
            if b"bgd" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                return
        except OSError:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def bgd(tmp_path):
    sock_dir = Path(tempfile.mkdtemp(prefix="bgd-", dir="/tmp"))
    daemon = Bgd(tmp_path, sock_dir)
    daemon.write_config()
    yield daemon
    daemon.stop_any()
    shutil.rmtree(sock_dir, ignore_errors=True)


@pytest.fixture
def running_bgd(bgd):
    bgd.start()
    return bgd


def wait_until(predicate, timeout: float = 10.0, what: str = "condition"):
    """Poll `predicate` (for state only a query shows, such as a file's effect) until it is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def modules_a_daemon_loads(tmp_path: Path, packages: set[str]) -> list[str]:
    """Which of `packages` a daemon made and installed (as `bgd` does, in a fresh interpreter, with
    tmp_path as its config and state dirs) has imported."""
    code = ("import json, sys\nfrom pathlib import Path\nfrom bgd import features\nfrom bgd.daemon import Daemon\n"
            "features.register_methods()\n"
            f"d = Daemon(Path({str(tmp_path / 's.sock')!r}), Path({str(tmp_path)!r}), Path({str(tmp_path)!r}))\n"
            "features.install(d)\n"
            f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(packages)!r}))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False
