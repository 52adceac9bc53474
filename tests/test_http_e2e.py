"""The HTTP listener end to end: a real bgd, a real HTTP client, and the socket RPC served throughout."""

from __future__ import annotations

import json
import signal
import socket

import httpx
import pytest

from conftest import wait_until


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_section(port: int, extra: str = "", host: str = "127.0.0.1") -> str:
    return f'[http]\nenabled = true\nlisten = "{host}:{port}"\n{extra}'


def status(bgd) -> dict:
    return bgd.rpc("daemon.status")["http"]


def raw(port: int, data: bytes, shut: bool = False) -> bytes:
    """Bytes on a fresh connection; everything the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(data)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def test_off_by_default_and_health_when_enabled(bgd):
    port = free_port()
    bgd.write_config(f'[http]\nlisten = "127.0.0.1:{port}"\n')
    bgd.start()
    assert status(bgd) == {"listening": False, "url": None, "error": None, "wanted_by": []}
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/v1/health")
    bgd.write_config(http_section(port))
    assert bgd.rpc("daemon.reload")["reloaded"]
    wait_until(lambda: status(bgd)["listening"], what="the listener")
    assert status(bgd) == {"listening": True, "url": f"http://127.0.0.1:{port}", "error": None,
                           "wanted_by": ["http.enabled"]}
    assert f"http: http://127.0.0.1:{port}\n" in bgd.ctl("daemon", "status").stdout
    health = httpx.get(f"http://127.0.0.1:{port}/v1/health")
    assert health.status_code == 200 and health.headers["content-type"] == "application/json"
    assert health.json() == {"ok": True, "version": bgd.rpc("daemon.status")["version"]}
    missing = httpx.get(f"http://127.0.0.1:{port}/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"


def test_oversized_slow_truncated_and_malformed_requests_leave_the_daemon_serving(bgd):
    port = free_port()
    bgd.write_config(http_section(port, "max_body_bytes = 1000\nkeep_alive_timeout_s = 0.5\n"))
    bgd.start()
    url = f"http://127.0.0.1:{port}/v1/health"
    assert status(bgd)["listening"]  # listening before the daemon says it is ready
    with httpx.Client() as client:
        big = client.request("GET", url, content=b"x" * 5000)
        assert big.status_code == 413 and big.headers["connection"] == "close"
        assert big.json()["error"]["type"] == "payload_too_large" and "1000 bytes" in big.json()["error"]["message"]
        assert client.get(url).status_code == 200
    assert bgd.rpc("daemon.status")["http"]["listening"]
    # Half a request head, then nothing: cut off after keep_alive_timeout_s.
    assert raw(port, b"GET /v1/health HTTP/1.1\r\nHost: x\r\nAccept: ") == b""
    assert bgd.rpc("daemon.status")["http"]["listening"]
    # A body cut short by the client leaving.
    raw(port, b"POST /v1/health HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\nabc", shut=True)
    # Not HTTP at all.
    assert raw(port, b"\x16\x03\x01 definitely not http\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert raw(port, b"GET /v1/health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: bogus\r\n\r\n").startswith(b"HTTP/1.1 501")
    assert httpx.get(url).json()["ok"] is True
    assert bgd.rpc("daemon.status")["http"]["error"] is None
    assert "Traceback" not in bgd.log(), bgd.log()


def test_a_non_loopback_address_is_refused_and_the_daemon_serves_on(bgd):
    port = free_port()
    bgd.write_config(http_section(port, host="0.0.0.0"))
    bgd.start()
    http = status(bgd)
    assert not http["listening"] and http["url"] is None
    assert "0.0.0.0" in http["error"] and "not a loopback address" in http["error"] and "allow_remote" in http["error"]
    assert http["error"] in bgd.log()
    shown = bgd.ctl("daemon", "status")
    assert shown.returncode == 0 and f"http: not listening: {http['error']}" in shown.stdout
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/v1/health")
    bgd.write_config(http_section(port, "allow_remote = true\n", host="0.0.0.0"))
    bgd.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "TLS" in (status(bgd)["error"] or ""), what="the TLS error")
    assert "tls_cert" in status(bgd)["error"] and not status(bgd)["listening"]
    session = bgd.dispatch("say hello")
    assert bgd.wait_state(session["id"], "completed")["state"] == "completed"


def test_a_port_in_use_is_reported_until_a_reload_finds_it_free(bgd):
    port = free_port()
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", port))
    holder.listen()
    try:
        bgd.write_config(http_section(port))
        bgd.start()
        http = status(bgd)
        assert not http["listening"] and f"port {port} is already in use" in http["error"]
        assert bgd.rpc("session.list") == []
        holder.close()
        bgd.rpc("daemon.reload")
        wait_until(lambda: status(bgd)["listening"], what="the listener once the port is free")
        assert status(bgd)["error"] is None
        assert httpx.get(f"http://127.0.0.1:{port}/v1/health").status_code == 200
    finally:
        holder.close()


def test_sighup_with_a_new_port_moves_the_listener(bgd):
    old, new = free_port(), free_port()
    bgd.write_config(http_section(old))
    bgd.start()
    assert status(bgd)["listening"]  # the first answer on the socket comes after the listener started
    assert httpx.get(f"http://127.0.0.1:{old}/v1/health").status_code == 200
    bgd.write_config(http_section(new))
    bgd.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: status(bgd)["url"] == f"http://127.0.0.1:{new}", what="the new port")
    assert httpx.get(f"http://127.0.0.1:{new}/v1/health").json()["ok"] is True
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{old}/v1/health")
    # A broken edit keeps the last good config, and the listener where it is.
    (bgd.config_dir / "config.toml").write_text('[http]\nlisten = "nowhere"\n')
    result = bgd.rpc("daemon.reload")
    assert not result["reloaded"] and "http.listen" in result["error"]
    assert httpx.get(f"http://127.0.0.1:{new}/v1/health").status_code == 200
    bgd.write_config(f'[http]\nlisten = "127.0.0.1:{new}"\n')  # nothing wants it any more
    bgd.rpc("daemon.reload")
    wait_until(lambda: not status(bgd)["listening"], what="the listener to stop")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{new}/v1/health")
    assert json.loads(bgd.ctl("--json", "daemon", "status").stdout)["http"]["listening"] is False
