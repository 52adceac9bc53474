#!/usr/bin/env python3
"""Run bgagents' benchmarks: `python3 bench/run.py [--only cli,rpc,latency,rss,loops,tasks,http,webhooks,fire,web_dom,cluster,env,env_proxy] [--quick] [--no-busy]`.

Each benchmark measures its own baseline in the same run (the machines are
shared and noisy, so only ratios travel), prints its figures and PASS/FAIL
against its target.  This runner prints a summary table, writes everything to
bench/results/<UTC time>.json, and exits 0 whatever the verdicts (it is a
measurement, not a test; a benchmark that crashes is reported as ERROR).

The latency, loops and tasks benchmarks measure each figure twice: as the machine
is, then with one core kept busy by another process (`--no-busy` skips that pass).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_cli  # noqa: E402
import bench_cluster  # noqa: E402
import bench_editor  # noqa: E402
import bench_env  # noqa: E402
import bench_http  # noqa: E402
import bench_latency  # noqa: E402
import bench_loops  # noqa: E402
import bench_rpc  # noqa: E402
import bench_routines  # noqa: E402
import bench_rss  # noqa: E402
import bench_schedule  # noqa: E402
import bench_tasks  # noqa: E402
import bench_web  # noqa: E402

BUSY_PASS = {"latency", "loops", "tasks"}  # these take busy=: a second pass with one core kept busy
BENCHMARKS = {
    "cli": (bench_cli.run, {}, {"rounds": 10}),
    "rpc": (bench_rpc.run, {}, {"requests": 5000, "rounds": 3}),
    "latency": (bench_latency.run, {}, {"sessions": 20, "lines": 20}),
    "rss": (bench_rss.run, {}, {"sessions": 100}),
    "loops": (bench_loops.run, {"idle_s": 60.0}, {"idle_s": 5.0}),
    "tasks": (bench_tasks.run, {}, {"tasks": 1000, "idle_s": 5, "adds": 3, "burst": 100}),
    "editor": (bench_editor.run, {}, {"changes": 5}),
    "schedule": (bench_schedule.run, {}, {"count": 3000}),
    "http": (bench_http.run, {}, {"seconds": 2.0, "rounds": 2}),
    "web_render": (bench_web.run_render, {}, {"sessions": 200, "requests": 10}),
    "web_dom": (bench_web.run_dom, {}, {"sessions": 20, "lines": 10, "pages": 3}),
    "web_idle": (bench_web.run_idle, {}, {"idle_s": 10.0, "sessions": 5}),
    "cluster": (bench_cluster.run, {}, {"sessions": 12, "lines": 20, "victims": 2}),
    "env": (bench_env.run, {}, {"rounds": 3, "requests": 100}),
    "env_proxy": (bench_env.run_proxy, {}, {"requests": 100}),
    "webhooks": (bench_routines.run_webhooks, {}, {"deliveries": 1000, "routines": 20, "rounds": 1}),
    "fire": (bench_routines.run_fire, {}, {"fires": 10, "medium_files": 500, "medium_commits": 5}),
}


def machine() -> dict:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "platform": platform.platform(), "loadavg_before": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", help="comma-separated subset of: " + ", ".join(BENCHMARKS))
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run; figures not comparable)")
    parser.add_argument("--no-busy", action="store_true", help="skip the second pass with one core kept busy")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    started = datetime.datetime.now(datetime.timezone.utc)
    report = {"started": started.isoformat(timespec="seconds"), "quick": args.quick, "busy_pass": not args.no_busy,
              "machine": machine(),
              "results": []}
    print(f"bgagents benchmarks · {report['machine']['cpus']} CPUs · {report['machine']['cpu']} · "
          f"Python {report['machine']['python']} · load {report['machine']['loadavg_before'][0]:.2f}")
    for name in names:
        run, full, quick = BENCHMARKS[name]
        print(f"\n== {name}")
        t0 = time.perf_counter()
        try:
            kwargs = dict(quick if args.quick else full)
            if name in BUSY_PASS:
                kwargs["busy"] = not args.no_busy
            result = run(**kwargs)
        except Exception as exc:  # a broken benchmark must not hide the others
            traceback.print_exc()
            result = {"name": name, "title": name, "figure": f"{type(exc).__name__}: {exc}", "target": "",
                      "pass": None}
        result["seconds"] = round(time.perf_counter() - t0, 1)
        report["results"].append(result)
    report["machine"]["loadavg_after"] = os.getloadavg()

    print("\n== summary")
    width = max(len(r["title"]) for r in report["results"])
    for r in report["results"]:
        mark = "ERROR" if r["pass"] is None else ("PASS" if r["pass"] else "FAIL")
        busy = "" if "pass_busy" not in r else f" (one core busy: {'PASS' if r['pass_busy'] else 'FAIL'})"
        print(f"  {mark:<5}  {r['title']:<{width}}  {r['figure']}  (target {r['target']}){busy}")
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"{started.strftime('%Y%m%dT%H%M%SZ')}{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
