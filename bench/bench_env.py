"""Routine environments: a run's preparation from a cached setup, and the filtering proxy's latency.

1. Preparation. A generated repository (FILES files in DIRS directories, a few commits) is a local
   bare remote of a routine whose setup script writes SETUP_FILES small files into the workspace.
   A first run builds the cache; then ROUNDS runs are prepared from it (their `prepare_s`: the copy
   of the template, the fetch and reset of the clone, the branch guard) alternating with a bare
   `git clone` of the same remote (what a run without a setup does, measured in the same process
   tree). Target: median cached preparation <= 1.5 x median bare clone, and the setup script ran
   exactly once.
2. Proxy latency. A local HTTPS server (trustme's certificate for localhost). A client makes
   REQUESTS fresh connections, each a full request: directly, and from inside a confined sandbox
   through the chain a run uses (the bridge in the sandbox -> Unix socket -> the bridge outside
   -> tinyproxy -> server), once per bridge this machine has (systemd-socket-proxyd, socat). One
   long-lived client per line, one request at a time, the clients taking turns request by request
   (so the machine's bursts of load fall on every line alike). Target: p99(through the proxy) - p99(direct) <= 5 ms, for the bridge
   a run uses here (bgcore.confinement.find_bridge). Also printed: the CPU time per connection of
   the processes outside the sandbox (tinyproxy and the outer bridge), from /proc.

`python3 bench/bench_env.py [--only prep|proxy] [--requests N] [--rounds N]` runs
it alone; `bench/run.py --only env_proxy` runs the proxy part in the suite.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from harness import Daemon, https_ok_server, median, percentile, verdict

PREP_TARGET = 1.5
LATENCY_TARGET_MS = 5.0
FILES, DIRS, SETUP_FILES = 3000, 60, 200

_CLIENT = textwrap.dedent("""
    # One request per line read from stdin (a fresh connection each), its time written back.
    import http.client, ssl, sys, time
    host, port, proxy_port, cafile = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    context = ssl.create_default_context(cafile=cafile)
    for _ in sys.stdin:
        start = time.perf_counter()
        if proxy_port:
            conn = http.client.HTTPSConnection("127.0.0.1", proxy_port, context=context, timeout=10)
            conn.set_tunnel(host, port)
        else:
            conn = http.client.HTTPSConnection(host, port, context=context, timeout=10)
        conn.request("GET", "/")
        response = conn.getresponse()
        response.read()
        conn.close()
        if response.status != 200:
            raise SystemExit(f"status {response.status}")
        print(time.perf_counter() - start, flush=True)
""")


def _git(*args: str, cwd: Path | None = None) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="Bench", GIT_AUTHOR_EMAIL="b@example.com", GIT_COMMITTER_NAME="Bench",
               GIT_COMMITTER_EMAIL="b@example.com")
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


def _make_remote(base: Path) -> tuple[Path, int]:
    seed, remote = base / "seed", base / "app.git"
    _git("init", "-q", "-b", "main", str(seed))
    line = "x = 'some source text of an ordinary length, repeated to make files of a few KiB'\n"
    for i in range(FILES):
        path = seed / f"pkg{i % DIRS}" / f"mod{i}.py"
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"# module {i}\n" + line * (20 + i % 60))
    _git("add", "-A", cwd=seed)
    _git("commit", "-q", "-m", "first", cwd=seed)
    for n in range(3):
        (seed / "pkg0" / "mod0.py").write_text(f"# change {n}\n")
        _git("commit", "-q", "-am", f"change {n}", cwd=seed)
    _git("init", "-q", "--bare", "-b", "main", str(remote))
    _git("push", "-q", str(remote), "main", cwd=seed)
    size = sum(p.stat().st_size for p in remote.rglob("*") if p.is_file())
    return remote, size


def _wait_run(daemon: Daemon, run_id: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        rec = daemon.rpc("routine.get_run", {"id": run_id})
        if rec["status"] not in ("queued", "preparing"):
            return rec
        if time.monotonic() > deadline:
            raise RuntimeError(f"run {run_id} still {rec['status']}")
        time.sleep(0.02)


def preparation(rounds: int) -> dict:
    base = Path(tempfile.mkdtemp(prefix="bgbench-env-", dir="/tmp"))
    try:
        remote, size = _make_remote(base)
        counter = base / "setup-runs"
        setup = (f"echo run >> {counter}; mkdir -p .cache && for i in $(seq {SETUP_FILES}); do "
                 "echo \"built $i\" > .cache/f$i; done")
        routines = (f'[routines.bench]\nprompt = "say done"\nrepos = ["{remote}"]\n'
                    f'[routines.bench.environment]\nsetup = {json.dumps(setup)}\n')
        clone_s: list[float] = []
        prepare_s: list[float] = []
        with Daemon("env", extra_config="[routines]\nstagger = false\nkeep_workspaces_days = 0\n") as daemon:
            (daemon.config_dir / "routines.toml").write_text(routines)
            daemon.start()
            first = _wait_run(daemon, daemon.rpc("routine.run", {"name": "bench"})["id"])
            if first["cache"] != "built" or first["status"] not in ("running", "finished"):
                raise RuntimeError(f"the first run did not build the cache: {first}")
            for i in range(rounds):
                dest = base / f"clone{i}"
                start = time.perf_counter()
                _git("clone", "--quiet", str(remote), str(dest))
                clone_s.append(time.perf_counter() - start)
                shutil.rmtree(dest)
                rec = _wait_run(daemon, daemon.rpc("routine.run", {"name": "bench"})["id"])
                if rec["cache"] != "hit":
                    raise RuntimeError(f"run {rec['id']} did not use the cache: {rec['cache']} ({rec.get('error')})")
                prepare_s.append(rec["prepare_s"])
            setups = counter.read_text().count("run")
        bare, cached = median(clone_s), median(prepare_s)
        ratio = cached / bare
        ok = ratio <= PREP_TARGET and setups == 1
        print(f"  repository: {FILES} files, {size / 1e6:.1f} MB as a bare remote; the setup adds {SETUP_FILES} files")
        print(f"  bare git clone (baseline)    median {bare * 1000:7.1f} ms   rounds: "
              + ", ".join(f"{v * 1000:.0f}" for v in clone_s))
        print(f"  run prepared from the cache  median {cached * 1000:7.1f} ms   rounds: "
              + ", ".join(f"{v * 1000:.0f}" for v in prepare_s))
        print(f"  ratio {ratio:.2f}, setup ran {setups} time(s)  {verdict(ok)} (target <= {PREP_TARGET}, once)")
        return {"repo_files": FILES, "repo_bytes": size, "setup_files": SETUP_FILES, "rounds": rounds,
                "clone_ms": round(bare * 1000, 1), "prepare_ms": round(cached * 1000, 1), "ratio": round(ratio, 3),
                "setup_runs": setups, "pass": ok}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _cpu_s(pid: int) -> float:
    """A process's CPU time so far, with its reaped children's (a socat bridge's forks)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


WARM = 20   # requests per client before measuring (systemd-socket-activate execs the proxy at the first)


def latency(requests: int) -> dict:
    import trio
    from bgcore.confinement import Bridge, find_bridge, probe
    from bgd.environments.proxy import FilteringProxy
    from bgd.environments.sandbox import Sandbox, bwrap_argv, proxy_env

    check = probe()
    if not check.ok:
        raise RuntimeError(f"confinement does not work here: {check.reason}")
    base = Path(tempfile.mkdtemp(prefix="bgbench-proxy-", dir="/tmp"))
    server, cafile = https_ok_server(base)
    port = server.server_address[1]
    client = base / "client.py"
    client.write_text(_CLIENT)
    (base / "tmp").mkdir()
    in_use = find_bridge()
    if not isinstance(in_use, Bridge):
        raise RuntimeError(f"no bridge here: {in_use.reason}")
    kinds = [b for b in (find_bridge(k) for k in ("systemd-socket-proxyd", "socat")) if isinstance(b, Bridge)]
    times: dict[str, list[float]] = {"direct": [], **{b.kind: [] for b in kinds}}
    cpu: dict[str, float] = {}

    def client_argv(proxy_port: int) -> list[str]:
        return [sys.executable, str(client), "localhost", str(port), str(proxy_port), str(cafile)]

    def interleave(clients: dict[str, subprocess.Popen]) -> None:
        """One request at a time, each client in turn (the order rotating), so a burst of load on
        the machine falls on all of them alike."""
        names = list(clients)
        for i in range(WARM + requests):
            for name in names[i % len(names):] + names[:i % len(names)]:
                clients[name].stdin.write("\n")
                clients[name].stdin.flush()
                line = clients[name].stdout.readline()
                if not line:
                    raise RuntimeError(f"the {name} client stopped")
                if i >= WARM:
                    times[name].append(float(line))

    async def measure() -> None:
        async with trio.open_nursery() as nursery:
            proxies = {}
            clients: dict[str, subprocess.Popen] = {}
            try:
                for bridge in kinds:
                    proxies[bridge.kind] = proxy = FilteringProxy(("localhost",), base / f"proxy-{bridge.kind}",
                                                                  policy='["localhost"]', bridge=bridge)
                    await proxy.start(nursery)
                env = dict(os.environ, **proxy_env(3128))
                pipes = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
                clients["direct"] = subprocess.Popen(client_argv(0), **pipes)
                for bridge in kinds:
                    sandbox = Sandbox(binds=[(str(base), str(base))], tmp=str(base / "tmp"),
                                      proxy_socket=str(proxies[bridge.kind].socket_path), bridge=bridge,
                                      chdir=str(base))
                    clients[bridge.kind] = subprocess.Popen(bwrap_argv(sandbox, client_argv(3128)), env=env, **pipes)
                pids = {kind: [proxy._tinyproxy.pid, proxy._bridge.pid] for kind, proxy in proxies.items()}
                before = {kind: sum(map(_cpu_s, ps)) for kind, ps in pids.items()}
                await trio.to_thread.run_sync(interleave, clients)
                cpu.update({kind: sum(map(_cpu_s, ps)) - before[kind] for kind, ps in pids.items()})
            finally:
                for proc in clients.values():
                    proc.stdin.close()
                    proc.wait()
                for proxy in proxies.values():
                    await proxy.close()

    load_before = os.getloadavg()
    try:
        trio.run(measure)
    finally:
        server.shutdown()
        shutil.rmtree(base, ignore_errors=True)
    load_after = os.getloadavg()
    p = {name: {q: percentile(values, q) * 1000 for q in (50, 99)} for name, values in times.items()}
    print(f"  {requests} HTTPS requests per line, each on a new connection (TLS handshake included), one at a "
          f"time, the lines taking turns; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print(f"  direct (baseline)                     p50 {p['direct'][50]:6.2f} ms   p99 {p['direct'][99]:6.2f} ms")
    figures = {}
    for bridge in kinds:
        q = p[bridge.kind]
        added = {n: q[n] - p["direct"][n] for n in (50, 99)}
        cpu_us = cpu[bridge.kind] / (WARM + len(times[bridge.kind])) * 1e6
        mark = "  (the one runs use here)" if bridge.kind == in_use.kind else ""
        print(f"  sandbox -> {bridge.kind:<21} p50 {q[50]:6.2f} ms   p99 {q[99]:6.2f} ms   added p50 {added[50]:5.2f}, "
              f"p99 {added[99]:5.2f} ms; outside the sandbox {cpu_us:.0f} us CPU per connection{mark}")
        figures[bridge.kind] = {"p50_ms": round(q[50], 3), "p99_ms": round(q[99], 3), "added_p50_ms": round(added[50], 3),
                                "added_p99_ms": round(added[99], 3), "outside_cpu_us": round(cpu_us)}
    chosen = figures[in_use.kind]
    ok = chosen["added_p99_ms"] <= LATENCY_TARGET_MS
    print(f"  added p99 through {in_use.kind}: {chosen['added_p99_ms']:.2f} ms  {verdict(ok)} "
          f"(target p99 <= {LATENCY_TARGET_MS} ms)")
    return {"requests": len(times[in_use.kind]), "bridge": in_use.kind, "loadavg": [load_before[0], load_after[0]],
            "direct_p50_ms": round(p["direct"][50], 3), "direct_p99_ms": round(p["direct"][99], 3),
            "proxied_p50_ms": chosen["p50_ms"], "proxied_p99_ms": chosen["p99_ms"],
            "added_p50_ms": chosen["added_p50_ms"], "added_p99_ms": chosen["added_p99_ms"], "bridges": figures,
            "pass": ok}


def run_proxy(requests: int = 1000) -> dict:
    """The proxy part alone (bench/run.py --only env_proxy)."""
    lat = latency(requests)
    return {"name": "env_proxy", "title": "routine environments: proxy latency", "latency": lat,
            "figure": f"proxy +{lat['added_p99_ms']:.2f} ms p99 ({lat['bridge']}; load {lat['loadavg'][0]:.2f})",
            "target": f"<= {LATENCY_TARGET_MS} ms p99", "pass": lat["pass"]}


def run(rounds: int = 9, requests: int = 1000) -> dict:
    print("  -- preparation from a cached setup")
    prep = preparation(rounds)
    print("  -- the filtering proxy's latency")
    lat = latency(requests)
    ok = prep["pass"] and lat["pass"]
    return {"name": "env", "title": "routine environments: cached preparation, proxy latency",
            "preparation": prep, "latency": lat,
            "figure": f"prep {prep['ratio']:.2f}x clone (setup ran {prep['setup_runs']}x); "
                      f"proxy +{lat['added_p99_ms']:.2f} ms p99",
            "target": f"<= {PREP_TARGET}x clone, once; <= {LATENCY_TARGET_MS} ms p99", "pass": ok}


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description="routine environments: cached preparation, proxy latency")
    parser.add_argument("--only", choices=("prep", "proxy"), help="one part (default: both)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    if args.only == "proxy":
        result = run_proxy(args.requests)
    elif args.only == "prep":
        result = preparation(args.rounds)
    else:
        result = run(args.rounds, args.requests)
    print(json.dumps(result, indent=2))
