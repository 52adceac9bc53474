"""`GET /v1/health` on the daemon's HTTP listener, against a bare hypercorn + starlette app.

Both answer the same JSON from the same interpreter and packages; the same
concurrent client drives each over keep-alive connections: wrk when it is
installed (`apt-get install wrk`), else threads of `http.client` in this process
(which then shares the CPUs with the servers; the figures say which). Rounds
alternate between the two servers. Target: the daemon's requests per second
>= 0.8 x the bare app's.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from harness import Daemon, median, verdict

TARGET = 0.8
HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wrk(port: int, seconds: float, connections: int) -> float:
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s", f"http://127.0.0.1:{port}/v1/health"],
                         capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def _threads(port: int, seconds: float, connections: int) -> float:
    counts = [0] * connections
    errors: list[str] = []
    deadline = time.perf_counter() + seconds

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            while time.perf_counter() < deadline:
                conn.request("GET", "/v1/health")
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    errors.append(f"status {response.status}")
                    return
                counts[i] += 1
        except OSError as exc:
            errors.append(str(exc))
        finally:
            conn.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"client errors: {errors[:3]}")
    return sum(counts) / (time.perf_counter() - start)


def _body(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=10) as response:
        return response.read()


def run(seconds: float = 5.0, rounds: int = 5, connections: int = 16) -> dict:
    client_name = "wrk" if shutil.which("wrk") else "python threads"
    measure = _wrk if client_name == "wrk" else _threads
    ports = {"bare": _free_port(), "bgd": _free_port()}
    with Daemon("http", extra_config=f'[http]\nenabled = true\nlisten = "127.0.0.1:{ports["bgd"]}"\n') as daemon:
        daemon.start()
        status = daemon.rpc("daemon.status")
        if not status["http"]["listening"]:
            raise RuntimeError(f"the daemon's HTTP listener is not up: {status['http']['error']}")
        bare = subprocess.Popen([sys.executable, str(HERE / "bare_http.py"), str(ports["bare"]), status["version"]],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert bare.stdout is not None and bare.stdout.readline().strip() == "ready"
            if json.loads(_body(ports["bgd"])) != json.loads(_body(ports["bare"])):
                raise RuntimeError("the two servers answer different JSON")
            for port in ports.values():  # warm up
                measure(port, 1.0, connections)
            rps: dict[str, list[float]] = {name: [] for name in ports}
            for _ in range(rounds):
                for name, port in ports.items():
                    rps[name].append(measure(port, seconds, connections))
        finally:
            bare.terminate()
            bare.wait()
    result = {name: median(values) for name, values in rps.items()}
    ratio = result["bgd"] / result["bare"]
    ok = ratio >= TARGET
    print(f"  client: {client_name}, {connections} keep-alive connections, {rounds} x {seconds:g} s each, alternating")
    print(f"  bare hypercorn + starlette (baseline)  {result['bare']:9,.0f} req/s   rounds: "
          + ", ".join(f"{v:,.0f}" for v in rps["bare"]))
    print(f"  bgd's listener                         {result['bgd']:9,.0f} req/s   rounds: "
          + ", ".join(f"{v:,.0f}" for v in rps["bgd"]))
    print(f"  ratio {ratio:.2f} of bare  {verdict(ok)} (target >= {TARGET})")
    return {"name": "http", "title": "GET /v1/health on the HTTP listener", "client": client_name,
            "connections": connections, "seconds": seconds, "rounds": rounds,
            "bare_rps": round(result["bare"]), "bgd_rps": round(result["bgd"]), "ratio": round(ratio, 3),
            "bare_rounds": [round(v) for v in rps["bare"]], "bgd_rounds": [round(v) for v in rps["bgd"]],
            "figure": f"{result['bgd']:,.0f} req/s = {ratio:.2f}x bare", "target": f">= {TARGET}x bare", "pass": ok}


if __name__ == "__main__":
    run()
