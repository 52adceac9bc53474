#!/usr/bin/env python3
"""Each hop of a confined run's way out, alone: `python3 bench/env_hops.py [REQUESTS]`.

A local HTTPS server (trustme's certificate for localhost); a client makes REQUESTS fresh
connections per case (TCP, TLS handshake, GET; CONNECT first where tinyproxy is in the way), the
cases alternating in 4 blocks, and for each prints p50/p90/p99/max, what it adds to the direct
case, and the CPU time per connection of the forwarding processes (from /proc, their reaped
children included: socat's forks). The cases: one socat or systemd-socket-proxyd hop TCP -> TCP
and Unix -> TCP, two hops TCP -> Unix -> TCP (a run's bridges without tinyproxy), tinyproxy alone,
and the whole chain outside a sandbox with either bridge. A diagnostic beside bench_env (which
measures the chain from inside a real sandbox); not part of bench/run.py.
"""

from __future__ import annotations

import http.client
import http.server
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

from harness import https_ok_server, percentile

BLOCKS = 4
TINYPROXY_CONF = """Port {port}
Listen 127.0.0.1
Allow 127.0.0.1
Timeout 600
MaxClients 100
LogLevel Notice
Filter "{filter}"
FilterType ere
FilterDefaultDeny Yes
FilterURLs No
DisableViaHeader Yes
"""


def main(requests: int) -> None:
    from bgcore.confinement import Bridge, find_bridge

    systemd, socat = find_bridge("systemd-socket-proxyd"), find_bridge("socat")
    if not (isinstance(systemd, Bridge) and isinstance(socat, Bridge)):
        raise SystemExit("needs both systemd-socket-proxyd (with systemd-socket-activate) and socat")
    base = tempfile.mkdtemp(prefix="bgbench-hops-", dir="/tmp")
    server, cafile = https_ok_server(base)
    target = server.server_address[1]
    context = ssl.create_default_context(cafile=cafile)

    class UnixHTTPS(http.client.HTTPSConnection):
        def __init__(self, path: str, **kw):
            super().__init__("localhost", target, **kw)
            self.unix_path = path

        def connect(self):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(self.unix_path)
            self.sock = self._context.wrap_socket(sock, server_hostname="localhost")

    def one(port: int | None = None, tunnel: bool = False, unix: str | None = None) -> float:
        start = time.perf_counter()
        if unix:
            conn = UnixHTTPS(unix, context=context, timeout=10)
        elif tunnel:
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
            conn.set_tunnel("localhost", target)
        else:
            conn = http.client.HTTPSConnection("localhost", port or target, context=context, timeout=10)
        conn.request("GET", "/")
        response = conn.getresponse()
        response.read()
        conn.close()
        assert response.status == 200, response.status
        return time.perf_counter() - start

    procs: list[subprocess.Popen] = []

    def spawn(argv: list[str], env: dict | None = None) -> int:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, **(env or {})})
        procs.append(proc)
        return proc.pid

    def free_port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    def ready(port: int | None = None, path: str | None = None) -> None:
        for _ in range(500):
            try:
                if path:
                    with socket.socket(socket.AF_UNIX) as sock:
                        sock.connect(path)
                else:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.01)
        raise SystemExit(f"nothing listens on {path or port}")

    def cpu_s(pids: list[int]) -> float:
        total = 0
        for pid in pids:
            with open(f"/proc/{pid}/stat") as stat:
                total += sum(int(x) for x in stat.read().rsplit(")", 1)[1].split()[11:15])
        return total / os.sysconf("SC_CLK_TCK")

    def tcp_hop(bridge, to: str) -> tuple[int, int]:
        port = free_port()
        argv = bridge.tcp_to_unix(port, to) if to.startswith("/") else (
            [bridge.program, f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr,nodelay", f"TCP:{to},nodelay"]
            if bridge.kind == "socat" else [bridge.activate, "-l", f"127.0.0.1:{port}", bridge.program, to])
        pid = spawn(argv, bridge.env)
        ready(port=port)
        return port, pid

    def unix_hop(bridge, name: str, port: int) -> tuple[str, int]:
        path = f"{base}/{name}.sock"
        pid = spawn(bridge.unix_to_tcp(path, port), bridge.env)
        ready(path=path)
        return path, pid

    tinyproxy = free_port()
    with open(f"{base}/filter", "w") as f:
        f.write("^localhost\\.?$\n")
    with open(f"{base}/tinyproxy.conf", "w") as f:
        f.write(TINYPROXY_CONF.format(port=tinyproxy, filter=f"{base}/filter"))
    tinyproxy_pid = spawn(["tinyproxy", "-d", "-c", f"{base}/tinyproxy.conf"])
    ready(port=tinyproxy)
    cases: dict[str, tuple[dict, list[int]]] = {"direct": ({}, [])}
    for bridge in (socat, systemd):
        name = "socat" if bridge.kind == "socat" else "proxyd"
        port, pid = tcp_hop(bridge, f"127.0.0.1:{target}")
        cases[f"{name} tcp->tcp"] = ({"port": port}, [pid])
        path, upid = unix_hop(bridge, f"{name}-server", target)
        cases[f"{name} unix->tcp"] = ({"unix": path}, [upid])
        port, pid = tcp_hop(bridge, path)
        cases[f"{name} x2 tcp->unix->tcp"] = ({"port": port}, [pid, upid])
    cases["tinyproxy CONNECT"] = ({"port": tinyproxy, "tunnel": True}, [tinyproxy_pid])
    for bridge in (socat, systemd):
        name = "socat" if bridge.kind == "socat" else "proxyd"
        path, upid = unix_hop(bridge, f"{name}-tinyproxy", tinyproxy)
        port, pid = tcp_hop(bridge, path)
        cases[f"chain {name} + tinyproxy"] = ({"port": port, "tunnel": True}, [pid, upid, tinyproxy_pid])

    times: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, float] = {name: 0.0 for name in cases}
    load = os.getloadavg()
    try:
        for kwargs, _ in cases.values():
            for _ in range(20):   # warm: systemd-socket-activate execs the proxy at the first connection
                one(**kwargs)
        for _ in range(BLOCKS):
            for name, (kwargs, pids) in cases.items():
                before = cpu_s(pids)
                times[name] += [one(**kwargs) for _ in range(requests // BLOCKS)]
                cpu[name] += cpu_s(pids) - before
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        server.shutdown()
        shutil.rmtree(base, ignore_errors=True)

    def ms(values: list[float], q: float) -> float:
        return percentile(values, q) * 1000

    d50, d99 = ms(times["direct"], 50), ms(times["direct"], 99)
    print(f"{requests // BLOCKS * BLOCKS} requests per case in {BLOCKS} alternating blocks; load average "
          f"{load[0]:.2f} before, {os.getloadavg()[0]:.2f} after")
    for name, values in times.items():
        print(f"  {name:26s} p50 {ms(values, 50):6.2f} p90 {ms(values, 90):6.2f} p99 {ms(values, 99):6.2f} "
              f"max {max(values) * 1000:6.1f} ms   added p50 {ms(values, 50) - d50:+5.2f} p99 {ms(values, 99) - d99:+6.2f}"
              f"   forwarders' CPU {cpu[name] / len(values) * 1e6:5.0f} us per connection")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
