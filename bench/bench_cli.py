"""`bgctl ls --json` as a cold process, against a bare Python that imports socket and json.

SPEC §12: bgctl answers as fast as a bare Python process that opens a socket.
Target: median(bgctl) / median(baseline) <= 1.5, both measured in this run,
interleaved, so a noisy neighbour slows both alike.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from harness import Daemon, median, verdict

TARGET = 1.5
SESSIONS = 5


def _time(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=True)
    return time.perf_counter() - start


def run(rounds: int = 30) -> dict:
    script = Path(sys.executable).parent / "bgctl"
    commands = {
        "baseline: python3 -c 'import socket, json'": [sys.executable, "-c", "import socket, json"],
        "bgctl ls --json (console script)": [str(script), "ls", "--json"],
        "python3 -m bgctl ls --json": [sys.executable, "-m", "bgctl", "ls", "--json"],
    }
    on_path = shutil.which("bgctl")
    informational = set()
    if on_path and Path(on_path).resolve() != script.resolve():
        # e.g. a pyenv shim: a shell script in front of the console script.
        commands[f"bgctl on PATH ({on_path})"] = [on_path, "ls", "--json"]
        informational.add(f"bgctl on PATH ({on_path})")
    with Daemon("cli") as daemon:
        daemon.start()
        daemon.run_sessions([f"say hello {i}" for i in range(SESSIONS)])
        env = daemon.env
        listed = subprocess.run(commands["bgctl ls --json (console script)"], env=env, capture_output=True,
                                text=True, check=True)
        assert len(json.loads(listed.stdout)) == SESSIONS, listed.stdout
        names = list(commands)
        for name in names:  # warm the page cache and .pyc files
            _time(commands[name], env)
        samples: dict[str, list[float]] = {name: [] for name in names}
        for i in range(rounds):
            order = names[i % len(names):] + names[:i % len(names)]
            for name in order:
                samples[name].append(_time(commands[name], env))
    base_name = names[0]
    base = median(samples[base_name])
    rows = []
    passed = True
    for name in names:
        m = median(samples[name])
        row = {"command": name, "median_ms": round(m * 1000, 2), "min_ms": round(min(samples[name]) * 1000, 2),
               "ratio": round(m / base, 3)}
        if name != base_name and name not in informational:
            row["pass"] = m / base <= TARGET
            passed = passed and row["pass"]
        rows.append(row)
    for row in rows:
        mark = "" if "pass" not in row else f"  {verdict(row['pass'])} (target <= {TARGET})"
        print(f"  {row['command']:<60} median {row['median_ms']:7.1f} ms  min {row['min_ms']:7.1f} ms  "
              f"ratio {row['ratio']:.2f}{mark}")
    worst = max(r["ratio"] for r in rows if "pass" in r)
    return {"name": "cli", "title": "bgctl ls --json, cold process", "rounds": rounds, "sessions": SESSIONS,
            "rows": rows, "figure": f"{worst:.2f}x baseline", "target": f"<= {TARGET}x", "pass": passed}


if __name__ == "__main__":
    run()
