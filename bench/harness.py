"""What every benchmark shares: a real bgd on temporary dirs, waiting on events, stats.

Standalone on purpose (no import from tests/): the benchmarks run the installed
`bgd`/`bgctl` and the fake agent from tests/fake_claude.py, nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

from bgctl.client import Client

ROOT = Path(__file__).resolve().parent.parent
FAKE_CLAUDE = ROOT / "tests" / "fake_claude.py"
FAKE_ACP = ROOT / "tests" / "fake_acp.py"   # the ACP stand-in (needs the [test] extra's agent-client-protocol)
TERMINAL = ("completed", "failed", "stopped")


class Daemon:
    """One bgd process with its own socket, config and state dirs under /tmp."""

    def __init__(self, name: str, *, idle_timeout_s: float = 1.0, extra_config: str = "", web: bool = False,
                 python: str | Path | None = None):
        # /tmp, not a deep pytest-style path: Unix socket paths are short.
        self.base = Path(tempfile.mkdtemp(prefix=f"bgbench-{name}-", dir="/tmp"))
        self.socket = self.base / "bgd.sock"
        self.config_dir = self.base / "config"
        self.state_dir = self.base / "state"
        self.work = self.base / "work"
        for d in (self.config_dir, self.state_dir, self.work):
            d.mkdir()
        (self.config_dir / "config.toml").write_text(
            f"stop_grace_s = 1\nidle_timeout_s = {idle_timeout_s}\n"
            # The web page (and its TCP listener) only where a benchmark measures it.
            + ("" if web else "[web]\nenabled = false\n")
            + f"[agents.claude]\ncommand = [{json.dumps(sys.executable)}, {json.dumps(str(FAKE_CLAUDE))}]\n"
            f'[agents.acp]\nbackend = "acp"\ncommand = [{json.dumps(sys.executable)}, {json.dumps(str(FAKE_ACP))}]\n'
            + extra_config)
        self.env = dict(os.environ, BGD_SOCKET=str(self.socket), BGD_CONFIG_DIR=str(self.config_dir),
                        BGD_STATE_DIR=str(self.state_dir))
        self.env.pop("BGCTL_NO_SPAWN", None)
        self.log_path = self.base / "bgd.log"
        self.python = str(python or sys.executable)  # e.g. a clean venv's (bench_cli.clean_venv)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([self.python, "-m", "bgd", "--log-level", "warning"], env=self.env,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bgd exited {self.proc.returncode}: {self.log_tail()}")
            try:
                Client.connect(self.socket, spawn=False).close()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"bgd did not start: {self.log_tail()}")
                time.sleep(0.02)

    def stop(self, timeout: float = 60.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> "Daemon":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def log_tail(self, lines: int = 5) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def client(self, timeout: float | None = 60.0) -> Client:
        client = Client.connect(self.socket, spawn=False)
        client.sock.settimeout(timeout)
        return client

    def rpc(self, method: str, params: dict | None = None):
        with self.client() as c:
            return c.call(method, params)

    def dispatch(self, client: Client, prompt: str, agent: str | None = None) -> dict:
        params = {"prompt": prompt, "cwd": str(self.work)}
        if agent:
            params["agent"] = agent
        return client.call("session.dispatch", params)

    def run_sessions(self, prompts: Iterable[str], batch: int = 20, timeout: float = 120.0,
                     agent: str | None = None) -> list[str]:
        """Dispatch prompts `batch` at a time, each batch waited to its end; return the ids."""
        prompts = list(prompts)
        ids: list[str] = []
        with self.client() as calls, Watcher(self) as watcher:
            for start in range(0, len(prompts), batch):
                chunk = [self.dispatch(calls, p, agent)["id"] for p in prompts[start:start + batch]]
                watcher.wait(chunk, lambda s: s["state"] in TERMINAL, timeout)
                failed = [watcher.sessions[i] for i in chunk if watcher.sessions[i]["state"] != "completed"]
                if failed:
                    raise RuntimeError(f"session {failed[0]['id']} ended {failed[0]['state']}: "
                                       f"{failed[0]['error']}")
                ids += chunk
        return ids


class Watcher:
    """Follows session.updated events on its own connection (subscribe before acting)."""

    def __init__(self, daemon: Daemon):
        self.client = daemon.client()
        self.client.call("events.subscribe", {"types": ["session.updated", "session.created"]})
        # Subscribed first, so nothing that changes after this list is missed.
        self.sessions: dict[str, dict] = {s["id"]: s for s in self.client.call("session.list", {"all": True})}

    def wait(self, ids: list[str], predicate: Callable[[dict], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = [i for i in ids if not (i in self.sessions and predicate(self.sessions[i]))]
        notes = self.client.notifications_iter()
        while pending:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(pending)} sessions never got there, e.g. {self.sessions.get(pending[0])}")
            note = next(notes)
            if note.method == "event" and "session" in note.params:
                session = note.params["session"]
                self.sessions[session["id"]] = session
            pending = [i for i in pending if not (i in self.sessions and predicate(self.sessions[i]))]

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "Watcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class BusyCore:
    """Another process keeping one core busy (`python -c "while True: pass"`), for the second
    measurement pass: the figures as they are while something else runs on the machine."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.started = 0.0

    def __enter__(self) -> "BusyCore":
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
        self.started = time.monotonic()
        time.sleep(0.2)  # running before the measurement starts
        return self

    def share(self) -> float:
        """How much of one core the busy process got so far (1.0: all of it)."""
        assert self.proc is not None
        return cpu_seconds(self.proc.pid) / max(time.monotonic() - self.started, 1e-9)

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.got = self.share()
            self.proc.kill()
            self.proc.wait()


def passes(measure: Callable[[], dict], busy: bool = True) -> dict:
    """`measure()` as the machine is, then (`busy`) again with one core kept busy: {"quiet": figures,
    "busy": figures with "busy_share", the part of a core the busy process got}."""
    print("  -- as the machine is")
    result = {"quiet": measure()}
    if busy:
        print("  -- with one core kept busy by another process")
        with BusyCore() as hog:
            figures = measure()
        figures["busy_share"] = round(hog.got, 2)
        print(f"  (the busy process got {hog.got:.0%} of a core)")
        result["busy"] = figures
    return result


def rss_kb(pid: int) -> int:
    """VmRSS of a process, in KiB, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def median(values: list[float]) -> float:
    return statistics.median(values)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def https_ok_server(base: Path | str):
    """An HTTPS server on loopback answering every GET with "ok", its certificate (for "localhost")
    from a test CA written to `base`/ca.pem; returns (the server, the CA file). It serves from a
    daemon thread until `server.shutdown()`."""
    import http.server
    import socketserver
    import ssl
    import threading

    import trustme
    ca = trustme.CA()
    cafile = str(Path(base) / "ca.pem")
    ca.cert_pem.write_to_path(cafile)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(context)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True

    server = Server(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, cafile
