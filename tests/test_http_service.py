"""HttpService in a trio run with real sockets, hypercorn and an HTTP client: mounting, wanting,
body caps, slow and truncated requests, ports taken, restarts on a config change, TLS."""

from __future__ import annotations

import json
import logging
import socket
import ssl
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from bgcore.config import parse_config
from bgd.http import HttpService


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Settings:
    """The [http] section a test's service reads, changed by the test as config.toml would be."""

    def __init__(self, text: str):
        self.set(text)

    def set(self, text: str) -> None:
        self.http = parse_config("[http]\n" + text).http


async def until(predicate, what: str) -> None:
    with trio.fail_after(20):
        while not predicate():
            await trio.sleep(0.01)


@asynccontextmanager
async def serving(settings: Settings, config_dir: Path = Path("/nonexistent")):
    service = HttpService(lambda: settings.http, config_dir, "9.9")
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        yield service
        nursery.cancel_scope.cancel()


async def echo(request: Request) -> JSONResponse:
    return JSONResponse({"n": len(await request.body())})


async def said(request: Request) -> JSONResponse:
    return JSONResponse({**request.path_params, **({"root_path": request.scope["root_path"]}
                                                  if request.scope.get("root_path") else {})})


async def boom(request: Request) -> JSONResponse:
    raise RuntimeError("the endpoint broke")


class Tag:
    """Middleware that marks its responses, to see whose requests it ran for."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        async def tagged(message):
            if message["type"] == "http.response.start":
                message = dict(message, headers=[*message["headers"], (b"x-tag", b"a")])
            await send(message)
        await self.app(scope, receive, tagged)


def listen(port: int, extra: str = "") -> str:
    return f'listen = "127.0.0.1:{port}"\n' + extra


async def raw(port: int, data: bytes, *, shut: bool = False) -> bytes:
    """Send bytes on a fresh connection and read until the server closes it."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        if shut:
            await stream.send_eof()
        received = b""
        with trio.fail_after(20):
            while chunk := await stream.receive_some(65536):
                received += chunk
        return received


def body_of(response: bytes) -> dict:
    return json.loads(response.partition(b"\r\n\r\n")[2])


async def test_listens_only_while_a_feature_wants_it():
    settings = Settings(listen(free_port()))
    wanted = False
    async with serving(settings) as service:
        service.mount("echo", [Route("/echo", echo, methods=["POST"])], wanted=lambda: wanted)
        await trio.sleep(0.05)
        assert not service.listening and service.base_url is None
        assert service.status() == {"listening": False, "url": None, "error": None, "wanted_by": []}
        wanted = True
        service.refresh()
        await until(lambda: service.listening, "listening")
        assert service.base_url == f"http://127.0.0.1:{settings.http.port}"
        assert service.status()["wanted_by"] == ["echo"]
        async with httpx.AsyncClient(base_url=service.base_url) as client:
            assert (await client.post("/echo", content=b"abc")).json() == {"n": 3}
            health = await client.get("/v1/health")
            assert health.status_code == 200 and health.json() == {"ok": True, "version": "9.9"}
        wanted = False
        service.refresh()
        await until(lambda: not service.listening, "stopped")
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", settings.http.port)


async def test_enabled_listens_with_nothing_mounted_and_a_mount_joins_a_running_listener():
    settings = Settings(listen(free_port(), "enabled = true"))
    async with serving(settings) as service:
        assert service.listening and service.status()["wanted_by"] == ["http.enabled"]
        service.mount("echo", [Route("/echo", echo, methods=["POST"])], wanted=lambda: True)
        async with httpx.AsyncClient(base_url=service.base_url) as client:
            assert (await client.post("/echo", content=b"xy")).json() == {"n": 2}
        await until(lambda: service.status()["wanted_by"] == ["http.enabled", "echo"], "wanted_by")
        with pytest.raises(ValueError, match="already mounted"):
            service.mount("echo", [], wanted=lambda: True)


async def test_every_error_is_json_and_middleware_runs_for_its_own_feature_only(caplog):
    settings = Settings(listen(free_port(), "enabled = true"))
    async with serving(settings) as service:
        service.mount("a", [Route("/a", echo, methods=["POST"]), Route("/a/boom", boom)], wanted=lambda: True,
                      middleware=[Middleware(Tag)])
        service.mount("b", [Route("/b", echo, methods=["POST"])], wanted=lambda: True)
        service.mount("c", [Route("/c/{word}", said), Mount("/c-files", routes=[Route("/{name}", said)])],
                      wanted=lambda: True, middleware=[Middleware(Tag)])
        async with httpx.AsyncClient(base_url=service.base_url) as client:
            a, b, health = await client.post("/a", content=b"1"), await client.post("/b"), await client.get("/v1/health")
            assert a.headers.get("x-tag") == "a" and "x-tag" not in b.headers and "x-tag" not in health.headers
            word, file = await client.get("/c/hello"), await client.get("/c-files/notes.txt")
            assert word.json() == {"word": "hello"} and word.headers["x-tag"] == "a"
            assert file.json() == {"name": "notes.txt", "root_path": "/c-files"} and file.headers["x-tag"] == "a"
            assert (await client.get("/c-files/")).status_code == 404
            missing = await client.get("/nope")
            assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
            assert "GET /nope" in missing.json()["error"]["message"]
            wrong = await client.post("/v1/health")
            assert wrong.status_code == 405 and "GET" in wrong.headers["allow"]
            assert wrong.json()["error"]["type"] == "method_not_allowed"
            with caplog.at_level(logging.ERROR, logger="bgd.http"):
                broken = await client.get("/a/boom")
                assert broken.status_code == 500 and broken.json()["error"]["type"] == "internal_error"
                await until(lambda: "the endpoint broke" in caplog.text, "the traceback logged")
            assert (await client.post("/a", content=b"ok")).json() == {"n": 2}


async def test_body_caps_declared_streamed_and_per_route():
    settings = Settings(listen(free_port(), "enabled = true\nmax_body_bytes = 1000"))
    async with serving(settings) as service:
        service.mount("echo", [Route("/echo", echo, methods=["POST"]),
                               Route("/big", echo, methods=["POST"], max_body_size=100_000)], wanted=lambda: True)
        async with httpx.AsyncClient(base_url=service.base_url) as client:
            assert (await client.post("/echo", content=b"x" * 1000)).json() == {"n": 1000}
            declared = await client.post("/echo", content=b"x" * 1001)
            assert declared.status_code == 413
            assert declared.json()["error"] == {"type": "payload_too_large",
                                                "message": "the request body is too large: at most 1000 bytes here"}

            async def chunks():
                for _ in range(20):
                    yield b"y" * 100
            streamed = await client.post("/echo", content=chunks())  # chunked: no Content-Length
            assert streamed.status_code == 413 and streamed.json()["error"]["type"] == "payload_too_large"
            assert (await client.post("/big", content=b"z" * 50_000)).json() == {"n": 50_000}
            assert (await client.post("/big", content=b"z" * 100_001)).status_code == 413
            unread = await client.request("GET", "/v1/health", content=b"q" * 2000)
            assert unread.status_code == 413 and unread.json()["error"]["type"] == "payload_too_large"
        # A body far past the cap, declared: answered before it is read, and the connection is closed.
        answer = await raw(settings.http.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n"
                                               + b"x" * 4096)
        assert answer.startswith(b"HTTP/1.1 413") and body_of(answer)["error"]["type"] == "payload_too_large"


async def test_truncated_slow_and_malformed_requests(caplog):
    settings = Settings(listen(free_port(), "enabled = true\nbody_timeout_s = 0.3\nkeep_alive_timeout_s = 0.3"))
    async with serving(settings) as service:
        service.mount("echo", [Route("/echo", echo, methods=["POST"])], wanted=lambda: True)
        port = settings.http.port
        with caplog.at_level(logging.WARNING):
            # A body that stops arriving: 408 after body_timeout_s, then the connection closes.
            stalled = await raw(port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
            assert stalled.startswith(b"HTTP/1.1 408") and body_of(stalled)["error"]["type"] == "request_timeout"
            # A client that sends half a head and waits is cut off after keep_alive_timeout_s.
            assert await raw(port, b"GET /v1/health HTTP/1.1\r\nHost: x\r\n") == b""
            # An idle keep-alive connection too.
            assert (await raw(port, b"")) == b""
            # A body cut short by the client leaving: nothing to answer, nothing logged.
            cut = await raw(port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n01234", shut=True)
            assert not cut.startswith(b"HTTP/1.1 200")
            # Garbage gets hypercorn's 400.
            assert (await raw(port, b"NOT HTTP AT ALL\r\n\r\n")).startswith(b"HTTP/1.1 400")
            assert (await raw(port, b"GET / HTTP/1.1\r\nContent-Length: nope\r\n\r\n")).startswith(b"HTTP/1.1 400")
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
        async with httpx.AsyncClient(base_url=service.base_url) as client:
            assert (await client.post("/echo", content=b"fine")).json() == {"n": 4}


async def test_a_port_in_use_is_reported_and_tried_again_on_refresh(caplog):
    port = free_port()
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", port))
    holder.listen()
    settings = Settings(listen(port, "enabled = true"))
    try:
        async with serving(settings) as service:
            status = service.status()
            assert not status["listening"] and status["url"] is None
            assert f"port {port} is already in use" in status["error"] and "\n" not in status["error"]
            assert status["error"] in caplog.text
            holder.close()
            service.refresh()
            await until(lambda: service.listening, "listening after the port was freed")
            assert service.status()["error"] is None
    finally:
        holder.close()


async def test_a_config_change_restarts_on_the_new_port_and_an_unchanged_one_does_not():
    old, new = free_port(), free_port()
    settings = Settings(listen(old, "enabled = true"))
    async with serving(settings) as service:
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://127.0.0.1:{old}/v1/health")).status_code == 200
            kept = await trio.open_tcp_stream("127.0.0.1", old)  # an idle connection that a restart would end
            settings.set(listen(old, "enabled = true"))  # same [http]: nothing to do
            service.refresh()
            await trio.sleep(0.1)
            await kept.send_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await kept.receive_some(65536)).startswith(b"HTTP/1.1 200")
            await kept.aclose()
            settings.set(listen(new, "enabled = true"))
            service.refresh()
            await until(lambda: service.base_url == f"http://127.0.0.1:{new}", "the new port")
            assert (await client.get(f"http://127.0.0.1:{new}/v1/health")).status_code == 200
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://127.0.0.1:{old}/v1/health")


async def test_non_loopback_is_refused_and_nothing_is_bound():
    port = free_port()
    settings = Settings(f'listen = "0.0.0.0:{port}"\nenabled = true')
    async with serving(settings) as service:
        assert not service.listening and "not a loopback address" in service.status()["error"]
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", port)
        settings.set(f'listen = "0.0.0.0:{port}"\nenabled = true\nallow_remote = true')
        service.refresh()
        await until(lambda: "TLS" in (service.status()["error"] or ""), "the TLS error")
        settings.set(listen(port, "enabled = true"))
        service.refresh()
        await until(lambda: service.listening, "listening on loopback")


async def test_tls(tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    port = free_port()
    settings = Settings(listen(port, 'enabled = true\ntls_cert = "server.pem"\ntls_key = "server.key"'))
    async with serving(settings, config_dir=tmp_path) as service:
        assert service.base_url == f"https://127.0.0.1:{port}", service.status()
        context = ssl.create_default_context()
        ca.configure_trust(context)
        async with httpx.AsyncClient(verify=context) as client:
            health = await client.get(f"{service.base_url}/v1/health")
            assert health.status_code == 200 and health.json()["ok"] is True
        # A renewed certificate (same paths) and a refresh: served from then on.
        renewed = ca.issue_cert("127.0.0.1")
        renewed.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
        renewed.private_key_pem.write_to_path(str(tmp_path / "server.key"))
        service.refresh()
        want = renewed.cert_chain_pems[0].bytes().decode()

        def served() -> str:
            try:
                return ssl.get_server_certificate(("127.0.0.1", port))
            except OSError:  # between the old listener and the new one
                return ""
        with trio.fail_after(20):
            while (await trio.to_thread.run_sync(served)).split() != want.split():
                await trio.sleep(0.05)
        settings.set(listen(port, 'enabled = true\ntls_cert = "missing.pem"\ntls_key = "server.key"'))
        service.refresh()
        await until(lambda: not service.listening, "stopped")
        assert "cannot load the TLS certificate" in service.status()["error"]
        assert str(tmp_path / "missing.pem") in service.status()["error"]


async def test_a_failing_wanted_counts_as_not_wanted(caplog):
    settings = Settings(listen(free_port()))
    async with serving(settings) as service:
        service.mount("broken", [], wanted=lambda: 1 / 0)
        service.mount("fine", [], wanted=lambda: True)
        await until(lambda: service.listening, "listening")
        assert service.status()["wanted_by"] == ["fine"]
        assert "HTTP feature broken: wanted() failed" in caplog.text
