"""`bgctl ls --json` as a cold process, as a user installs it, against that Python importing socket and json.

SPEC §12: bgctl answers as fast as a bare Python process that opens a socket.  Measured in a clean
virtual environment that this benchmark builds itself: `python -m venv`, then a plain (not editable)
`pip install` of this source tree, so no editable-install finder and no `.pth` hook of the development
environment flatters or burdens either side.  The venv is cached under the temp dir, keyed by a hash
of the source tree and the interpreter, so a second run with the same tree reuses it.
Target: median(bgctl) / median(baseline) <= 1.3, both in that venv, measured in this run, interleaved,
so a noisy neighbour slows both alike.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import ROOT, Daemon, median, verdict

TARGET = 1.3
SESSIONS = 5
# What pip installs from the tree (pyproject.toml's packages and its readme).
SOURCES = ("pyproject.toml", "README.md", "core", "daemon", "clients")
SKIP = {"__pycache__", "build", "dist", ".pytest_cache"}

BASELINE = "baseline: python -c 'import socket, json' (clean venv)"
JUDGED = "bgctl ls --json (clean venv, console script)"


def tree_hash() -> str:
    digest = hashlib.sha256(f"{sys.version}\0{sys.executable}\0".encode())
    for top in SOURCES:
        for path in sorted(_files(ROOT / top)):
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _files(path: Path):
    if path.is_file():
        yield path
        return
    for entry in path.iterdir():
        if entry.name in SKIP or entry.name.endswith(".egg-info"):
            continue
        yield from _files(entry)


def clean_venv() -> tuple[Path, bool]:
    """A venv with this tree pip-installed (not editable): (its directory, whether it was reused)."""
    import fcntl

    cache = Path(tempfile.gettempdir())
    key = tree_hash()
    venv = cache / f"bgbench-cli-venv-{key}"
    done = venv / ".installed"
    with open(cache / f"bgbench-cli-venv-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run building the same venv: wait for it
        for old in cache.glob("bgbench-cli-venv-*"):
            marker = old / ".installed"
            if old != venv and old.is_dir() and marker.exists() and time.time() - marker.stat().st_mtime > 86400:
                shutil.rmtree(old, ignore_errors=True)  # an older tree's, unused for a day
                old.with_name(old.name + ".lock").unlink(missing_ok=True)
        if done.exists():
            done.touch()
            return venv, True
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        with tempfile.TemporaryDirectory(prefix="bgbench-cli-src-") as src:
            # A copy, so that building the wheel leaves no build/ or .egg-info in the tree.
            for top in SOURCES:
                origin = ROOT / top
                if origin.is_dir():
                    shutil.copytree(origin, Path(src) / top, ignore=shutil.ignore_patterns(*SKIP, "*.egg-info"))
                else:
                    shutil.copy2(origin, Path(src) / top)
            env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
            env.pop("PYTHONDONTWRITEBYTECODE", None)  # pip compiles the installed modules, as for a user
            subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", src], env=env,
                           check=True, stdout=subprocess.DEVNULL)
        done.write_text(key + "\n")
        return venv, False


def pth_files(python: Path) -> list[str]:
    """The .pth files the venv's site-packages holds (python -m venv brings setuptools' own)."""
    out = subprocess.run([str(python), "-c", "import site, os; d = site.getsitepackages()[0]; "
                          "print('\\n'.join(sorted(f for f in os.listdir(d) if f.endswith('.pth'))))"],
                         capture_output=True, text=True, check=True)
    return out.stdout.split()


def extra_imports(python: Path, bgctl: Path, env: dict) -> list[str]:
    """Modules `bgctl ls --json` imports that the baseline does not (from -X importtime)."""
    def imported(cmd: list[str]) -> set[str]:
        trace = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stderr
        return {line.split("|")[-1].strip() for line in trace.splitlines() if line.startswith("import time:")}
    base = imported([str(python), "-X", "importtime", "-c", "import socket, json"])
    ours = imported([str(python), "-X", "importtime", str(bgctl), "ls", "--json"])
    return sorted(ours - base - {"module"})


def _time(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=True)
    return time.perf_counter() - start


def run(rounds: int = 50) -> dict:
    t0 = time.perf_counter()
    venv, reused = clean_venv()
    build_s = time.perf_counter() - t0
    python, script = venv / "bin" / "python", venv / "bin" / "bgctl"
    print(f"  clean venv {venv} ({'reused' if reused else f'built in {build_s:.0f} s'}); "
          f".pth files: {', '.join(pth_files(python)) or 'none'}")
    dev_script = Path(sys.executable).parent / "bgctl"
    with Daemon("cli") as daemon:
        daemon.start()
        daemon.run_sessions([f"say hello {i}" for i in range(SESSIONS)])
        # As a user runs it: nothing of this shell's Python settings.  The venv holds the bytecode pip
        # compiled; the development environment's runs get a private bytecode cache (this container
        # sets PYTHONDONTWRITEBYTECODE=1, which would make every start compile bgctl again).
        user_env = {k: v for k, v in daemon.env.items() if not k.startswith("PYTHON")}
        dev_env = dict(user_env, PYTHONPYCACHEPREFIX=str(daemon.base / "pycache"))
        commands = {
            BASELINE: ([str(python), "-c", "import socket, json"], user_env),
            JUDGED: ([str(script), "ls", "--json"], user_env),
            "info: python -m bgctl ls --json (clean venv)": ([str(python), "-m", "bgctl", "ls", "--json"], user_env),
            "info: baseline in the development environment": ([sys.executable, "-c", "import socket, json"], dev_env),
            "info: bgctl ls --json in the development environment": ([str(dev_script), "ls", "--json"], dev_env),
        }
        for name, (cmd, cmd_env) in commands.items():
            if "bgctl" in name:
                listed = subprocess.run(cmd, env=cmd_env, capture_output=True, text=True, check=True)
                assert len(json.loads(listed.stdout)) == SESSIONS, (name, listed.stdout)
        extra = extra_imports(python, script, user_env)
        names = list(commands)
        for name in names:  # fill the page cache (and the development environment's bytecode cache)
            _time(*commands[name])
        samples: dict[str, list[float]] = {name: [] for name in names}
        for i in range(rounds):
            order = names[i % len(names):] + names[:i % len(names)]
            for name in order:
                samples[name].append(_time(*commands[name]))

    def med(name: str) -> float:
        return median(samples[name])

    base, dev_base = med(BASELINE), med("info: baseline in the development environment")
    rows = []
    for name in names:
        m = med(name)
        against = dev_base if "development environment" in name else base
        row = {"command": name, "median_ms": round(m * 1000, 2), "min_ms": round(min(samples[name]) * 1000, 2),
               "ratio": round(m / against, 3)}
        if name == JUDGED:
            row["pass"] = m / base <= TARGET
        rows.append(row)
    for row in rows:
        mark = "" if "pass" not in row else f"  {verdict(row['pass'])} (target <= {TARGET})"
        print(f"  {row['command']:<56} median {row['median_ms']:7.1f} ms  min {row['min_ms']:7.1f} ms  "
              f"ratio {row['ratio']:.2f}{mark}")
    print(f"  imported by bgctl ls --json beyond the baseline: {', '.join(extra)}")
    judged = next(r for r in rows if r["command"] == JUDGED)
    return {"name": "cli", "title": "bgctl ls --json, cold process, clean venv", "rounds": rounds,
            "sessions": SESSIONS, "venv": str(venv), "venv_reused": reused, "pth_files": pth_files(python),
            "extra_imports": extra, "rows": rows, "figure": f"{judged['ratio']:.2f}x baseline",
            "target": f"<= {TARGET}x", "pass": judged["pass"]}


if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    run(rounds)
