"""`bgctl ls --json` as a cold process, against a bare Python that imports socket and json.

SPEC §12: bgctl answers as fast as a bare Python process that opens a socket.
Target: median(bgctl) / median(baseline) <= 1.5, both measured in this run,
interleaved, so a noisy neighbour slows both alike.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from harness import ROOT, Daemon, median, verdict

TARGET = 1.5
SESSIONS = 5


BASELINE = "baseline: python3 -c 'import socket, json'"


def _time(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=True)
    return time.perf_counter() - start


def run(rounds: int = 30) -> dict:
    script = Path(sys.executable).parent / "bgctl"
    with Daemon("cli") as daemon:
        daemon.start()
        daemon.run_sessions([f"say hello {i}" for i in range(SESSIONS)])
        # Bytecode caching on, in a private cache dir, as on any normal install
        # (this container sets PYTHONDONTWRITEBYTECODE=1, which makes every bgctl
        # start compile its own modules again: reported apart below).
        env = dict(daemon.env, PYTHONPYCACHEPREFIX=str(daemon.base / "pycache"))
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        no_pyc = dict(daemon.env, PYTHONDONTWRITEBYTECODE="1")
        # -S: no site-packages and no .pth hooks, as a lean interpreter starts.
        # Here site alone costs ~20 ms (an editable-install finder and a CA-injecting
        # .pth), which both sides pay and which flatters the main ratio.
        bare = dict(env, PYTHONPATH=os.pathsep.join(str(ROOT / d) for d in ("core", "clients")))
        commands = {
            BASELINE: ([sys.executable, "-c", "import socket, json"], env),
            "bgctl ls --json (console script)": ([str(script), "ls", "--json"], env),
            "python3 -m bgctl ls --json": ([sys.executable, "-m", "bgctl", "ls", "--json"], env),
            "info: bgctl ls --json, no bytecode cache": ([str(script), "ls", "--json"], no_pyc),
            "info: python3 -S -c 'import socket, json'": ([sys.executable, "-S", "-c", "import socket, json"], bare),
            "info: python3 -S -m bgctl ls --json": ([sys.executable, "-S", "-m", "bgctl", "ls", "--json"], bare),
        }
        on_path = shutil.which("bgctl")
        if on_path and Path(on_path).resolve() != script.resolve():
            # e.g. a pyenv shim: a shell script in front of the console script.
            commands[f"info: bgctl on PATH ({on_path})"] = ([on_path, "ls", "--json"], env)
        for name, (cmd, cmd_env) in commands.items():
            if "bgctl" in name:
                listed = subprocess.run(cmd, env=cmd_env, capture_output=True, text=True, check=True)
                assert len(json.loads(listed.stdout)) == SESSIONS, (name, listed.stdout)
        names = list(commands)
        for name in names:  # fill the bytecode and page caches
            _time(*commands[name])
        samples: dict[str, list[float]] = {name: [] for name in names}
        for i in range(rounds):
            order = names[i % len(names):] + names[:i % len(names)]
            for name in order:
                samples[name].append(_time(*commands[name]))
    def med(name: str) -> float:
        return median(samples[name])

    base = med(BASELINE)
    bare_base = med("info: python3 -S -c 'import socket, json'")
    rows = []
    passed = True
    for name in names:
        m = med(name)
        against = bare_base if "-S" in name else base
        row = {"command": name, "median_ms": round(m * 1000, 2), "min_ms": round(min(samples[name]) * 1000, 2),
               "ratio": round(m / against, 3)}
        if name != BASELINE and not name.startswith("info:"):
            row["pass"] = m / base <= TARGET
            passed = passed and row["pass"]
        rows.append(row)
    for row in rows:
        mark = "" if "pass" not in row else f"  {verdict(row['pass'])} (target <= {TARGET})"
        print(f"  {row['command']:<62} median {row['median_ms']:7.1f} ms  min {row['min_ms']:7.1f} ms  "
              f"ratio {row['ratio']:.2f}{mark}")
    worst = max(r["ratio"] for r in rows if "pass" in r)
    return {"name": "cli", "title": "bgctl ls --json, cold process", "rounds": rounds, "sessions": SESSIONS,
            "rows": rows, "figure": f"{worst:.2f}x baseline", "target": f"<= {TARGET}x", "pass": passed}


if __name__ == "__main__":
    run()
