"""Pipelined `daemon.status` on one connection, against a bare trio line-echo server.

The same client code writes N request lines in one go (from a thread, so it
can read while it writes) and reads N lines back through the shared codec.
Target: bgd's requests per second >= 0.5 x the echo server's, both measured
in this run, alternating.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from bgcore.jsonrpc import NEED_DATA, FrameReader, Response, encode_request

from harness import Daemon, median, verdict

TARGET = 0.5
HERE = Path(__file__).resolve().parent


def pipelined(path: Path, n: int) -> float:
    """Seconds from the first byte written to the n-th response read."""
    payload = b"".join(encode_request("daemon.status", None, i) for i in range(1, n + 1))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        sock.settimeout(120)
        reader = FrameReader(1 << 24)
        got = 0
        start = time.perf_counter()
        writer = threading.Thread(target=sock.sendall, args=(payload,))
        writer.start()
        while got < n:
            data = sock.recv(1 << 16)
            if not data:
                raise RuntimeError(f"connection closed after {got} of {n} responses")
            reader.receive_data(data)
            while (frame := reader.next_frame()) is not NEED_DATA:
                if isinstance(frame, Response) and frame.error is not None:
                    raise RuntimeError(f"error response: {frame.error}")
                got += 1
        elapsed = time.perf_counter() - start
        writer.join()
    return elapsed


def _raw_call(path: Path, line: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        sock.sendall(line)
        data = b""
        while not data.endswith(b"\n"):
            data += sock.recv(1 << 16)
    return data


def _server(path: Path, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(HERE / "echo_server.py"), str(path), *extra],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def run(requests: int = 20_000, rounds: int = 5) -> dict:
    with Daemon("rpc") as daemon:
        daemon.start()
        daemon.run_sessions([f"say hello {i}" for i in range(5)])
        # The informational second baseline answers every line with bgd's own
        # daemon.status response, so the client does the same parsing as against
        # bgd: the difference is bgd's own work per request.
        canned = daemon.base / "canned.jsonl"
        canned.write_bytes(_raw_call(daemon.socket, encode_request("daemon.status", None, 1)))
        targets = {"echo": daemon.base / "echo.sock", "canned": daemon.base / "canned.sock",
                   "bgd": daemon.socket}
        servers = [_server(targets["echo"]), _server(targets["canned"], str(canned))]
        try:
            for path in targets.values():  # warm up
                pipelined(path, 1000)
            times: dict[str, list[float]] = {name: [] for name in targets}
            for _ in range(rounds):
                for name, path in targets.items():
                    times[name].append(pipelined(path, requests))
        finally:
            for server in servers:
                server.terminate()
                server.wait()
    rps = {name: requests / median(t) for name, t in times.items()}
    ratio = rps["bgd"] / rps["echo"]
    ok = ratio >= TARGET
    print(f"  line-echo server (baseline)        {rps['echo']:10,.0f} req/s   (median of {rounds} x {requests:,})")
    print(f"  info: canned-status-reply server   {rps['canned']:10,.0f} req/s")
    print(f"  bgd daemon.status                  {rps['bgd']:10,.0f} req/s")
    print(f"  ratio {ratio:.2f} of echo  {verdict(ok)} (target >= {TARGET});  "
          f"{rps['bgd'] / rps['canned']:.2f} of the canned-reply server")
    return {"name": "rpc", "title": "pipelined daemon.status, one connection", "requests": requests,
            "rounds": rounds, "echo_rps": round(rps["echo"]), "canned_rps": round(rps["canned"]),
            "bgd_rps": round(rps["bgd"]), "ratio": round(ratio, 3),
            "ratio_to_canned": round(rps["bgd"] / rps["canned"], 3),
            "figure": f"{rps['bgd']:,.0f} req/s = {ratio:.2f}x echo", "target": f">= {TARGET}x echo", "pass": ok}


if __name__ == "__main__":
    run()
