"""Resident memory of an idle bgd holding 1,000 finished sessions.

1,000 sessions are made by dispatching `say x` (batches of 25, each waited to
its end), then the daemon is restarted so it holds what it loads from its
store, not what it touched while working; its VmRSS is read from /proc after
it has sat idle for a second.  Target: <= 60 MB.  Reported beside it, measured
the same way in the same run: a bare `python3 -c 'import trio, sqlite3;
trio.run(trio.sleep, 2)'`.
"""

from __future__ import annotations

import subprocess
import sys
import time

from harness import Daemon, rss_kb, verdict

TARGET_MB = 60.0
BASELINE = "import trio, sqlite3; trio.run(trio.sleep, 2)"


def _baseline_kb() -> int:
    proc = subprocess.Popen([sys.executable, "-c", BASELINE])
    try:
        time.sleep(1.0)
        return rss_kb(proc.pid)
    finally:
        proc.wait()


def run(sessions: int = 1000) -> dict:
    with Daemon("rss", idle_timeout_s=0.5) as daemon:
        daemon.start()
        started = time.perf_counter()
        daemon.run_sessions(["say x"] * sessions, batch=25, timeout=600)
        made_s = time.perf_counter() - started
        time.sleep(1.0)
        busy_kb = rss_kb(daemon.pid)
        daemon.stop()
        daemon.start()
        time.sleep(1.0)
        status = daemon.rpc("daemon.status")
        assert status["sessions"] == sessions, status
        time.sleep(1.0)
        idle_kb = rss_kb(daemon.pid)
    base_kb = _baseline_kb()
    mb = idle_kb / 1024
    ok = mb <= TARGET_MB
    print(f"  {sessions} finished sessions made in {made_s:.0f} s")
    print(f"  bgd idle after restart  {mb:6.1f} MB  {verdict(ok)} (target <= {TARGET_MB:.0f} MB)")
    print(f"  baseline (trio+sqlite3) {base_kb / 1024:6.1f} MB   ratio {idle_kb / base_kb:.2f}")
    print(f"  info: bgd before the restart, after making them: {busy_kb / 1024:.1f} MB")
    return {"name": "rss", "title": f"idle bgd RSS with {sessions} finished sessions", "sessions": sessions,
            "bgd_idle_mb": round(mb, 1), "baseline_mb": round(base_kb / 1024, 1),
            "ratio": round(idle_kb / base_kb, 2), "bgd_before_restart_mb": round(busy_kb / 1024, 1),
            "figure": f"{mb:.1f} MB ({idle_kb / base_kb:.2f}x baseline {base_kb / 1024:.1f} MB)",
            "target": f"<= {TARGET_MB:.0f} MB", "pass": ok}


if __name__ == "__main__":
    run()
