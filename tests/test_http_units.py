"""The HTTP listener's pure parts: [http] parsing, the listen address and the loopback rule,
the error shape, and the body timeout on trio's virtual clock."""

from __future__ import annotations

import json

import pytest
import trio

from bgcore.config import ConfigError, HttpConfig, parse_config, parse_listen
from bgd.http.address import is_loopback, refusal, url_host
from bgd.http.app import Entry, build_app, health_routes
from bgd.http.errors import error_type, json_error


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:7421", ("127.0.0.1", 7421)),
    ("localhost:80", ("localhost", 80)),
    ("[::1]:7421", ("::1", 7421)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
    ("example.org:65535", ("example.org", 65535)),
])
def test_parse_listen(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text, message", [
    ("127.0.0.1", "host:port"),
    (":7421", "0.0.0.0 for every IPv4 interface"),
    ("::1:7421", "brackets"),
    ("[::1]7421", "host:port"),
    ("[127.0.0.1]:80", "host:port"),
    ("localhost:65536", "0 to 65535"),
    ("localhost:http", "0 to 65535"),
    ("localhost:-1", "0 to 65535"),
    ("local host:80", "host:port"),
])
def test_parse_listen_refuses(text, message):
    with pytest.raises(ValueError) as err:
        parse_listen(text)
    assert message in str(err.value)


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("localhost", True), ("LocalHost.", True),
    ("api.localhost", True), ("0.0.0.0", False), ("::", False), ("192.168.1.5", False),
    ("10.0.0.1", False), ("example.org", False), ("localhost.example.org", False), ("::ffff:10.0.0.1", False),
])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def http(text: str) -> HttpConfig:
    return parse_config("[http]\n" + text, "/c/config.toml").http


def test_the_loopback_rule():
    assert refusal(http('listen = "127.0.0.1:7421"')) is None
    assert refusal(http('listen = "[::1]:7421"\ntls_cert = "c.pem"\ntls_key = "k.pem"')) is None
    plain = refusal(http('listen = "0.0.0.0:7421"'))
    assert plain and "not a loopback address" in plain and "allow_remote = true" in plain
    no_tls = refusal(http('listen = "0.0.0.0:7421"\nallow_remote = true'))
    assert no_tls and "TLS" in no_tls and "tls_cert" in no_tls
    assert refusal(http('listen = "192.168.1.5:7421"\nallow_remote = true\ntls_cert = "c"\ntls_key = "k"')) is None
    assert refusal(http('listen = "example.org:443"')) is not None


def test_url_host():
    assert url_host("127.0.0.1") == "127.0.0.1" and url_host("::1") == "[::1]"


def test_http_config_defaults():
    config = parse_config("").http
    assert (config.listen, config.host, config.port) == ("127.0.0.1:7421", "127.0.0.1", 7421)
    assert not config.enabled and not config.allow_remote and not config.tls
    assert config.max_body_bytes == 1 << 20 and config.body_timeout_s == 30 and config.keep_alive_timeout_s == 5


def test_http_config_values_and_warnings():
    config = parse_config('[http]\nlisten = "[::1]:8080"\nenabled = true\nmax_body_bytes = 10\n'
                          'body_timeout_s = 1.5\nkeep_alive_timeout_s = 2\nlisten_on = "x"\n', "/c/config.toml")
    assert (config.http.host, config.http.port, config.http.enabled) == ("::1", 8080, True)
    assert (config.http.max_body_bytes, config.http.body_timeout_s, config.http.keep_alive_timeout_s) == (10, 1.5, 2.0)
    assert any("listen_on" in w and "[http]" in w and "/c/config.toml:7" in w for w in config.warnings)


@pytest.mark.parametrize("text, message", [
    ('listen = "127.0.0.1"', ':2: http.listen \'127.0.0.1\' must be "host:port"'),
    ("listen = 7421", ":2: http.listen must be a string"),
    ('enabled = "yes"', ":2: http.enabled must be true or false"),
    ("max_body_bytes = 0", ":2: http.max_body_bytes must be positive"),
    ("max_body_bytes = true", ":2: http.max_body_bytes must be a number"),
    ("body_timeout_s = -1", ":2: http.body_timeout_s must be positive"),
    ('tls_cert = "c.pem"', ":2: http.tls_cert and http.tls_key go together"),
    ('tls_key = "k.pem"', ":2: http.tls_cert and http.tls_key go together"),
])
def test_http_config_errors_name_file_and_line(text, message):
    with pytest.raises(ConfigError) as err:
        parse_config("[http]\n" + text, "/c/config.toml")
    assert str(err.value).startswith("/c/config.toml" + message.split(" ", 1)[0])
    assert message.split(" ", 1)[1] in str(err.value)


def test_http_must_be_a_table():
    with pytest.raises(ConfigError, match="http must be a table"):
        parse_config('http = "on"')


def test_error_shape():
    response = json_error(429, "slow down", headers={"Retry-After": "60"})
    assert response.status_code == 429 and response.headers["retry-after"] == "60"
    assert json.loads(response.body) == {"error": {"type": "rate_limited", "message": "slow down"}}
    assert error_type(404) == "not_found" and error_type(418) == "i'm_a_teapot" and error_type(799) == "error"


async def _call(entry: Entry, method: str, path: str, receive, headers=()) -> list[dict]:
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(k.encode(), v.encode()) for k, v in headers], "http_version": "1.1",
             "scheme": "http", "server": ("127.0.0.1", 7421), "client": ("127.0.0.1", 5000), "root_path": ""}
    await entry(scope, receive, send)
    return sent


async def _echo(request):
    from starlette.responses import JSONResponse
    return JSONResponse({"n": len(await request.body())})


def _entry(timeout: float = 30.0) -> Entry:
    from starlette.routing import Route
    return Entry(build_app([("health", health_routes("t"), []), ("echo", [Route("/echo", _echo, methods=["POST"])], [])],
                           100), timeout)


async def test_a_body_that_stops_arriving_gets_408(autojump_clock):
    parts = [{"type": "http.request", "body": b"x" * 10, "more_body": True}]

    async def receive():
        if parts:
            return parts.pop()
        await trio.sleep_forever()

    start = trio.current_time()
    sent = await _call(_entry(30.0), "POST", "/echo", receive, [("content-length", "50")])
    assert trio.current_time() - start == pytest.approx(30.0)
    assert sent[0]["status"] == 408
    error = json.loads(sent[1]["body"])["error"]
    assert error["type"] == "request_timeout" and "30 s" in error["message"]


async def test_a_body_in_time_is_read_and_waiting_for_disconnect_is_not_timed(autojump_clock):
    parts = [{"type": "http.request", "body": b"y" * 20, "more_body": False},
             {"type": "http.request", "body": b"x" * 30, "more_body": True}]

    async def receive():
        await trio.sleep(10)
        return parts.pop()

    sent = await _call(_entry(30.0), "POST", "/echo", receive)
    assert sent[0]["status"] == 200 and json.loads(sent[1]["body"]) == {"n": 50}


async def test_413_when_declared_too_large_even_unread(autojump_clock):
    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    sent = await _call(_entry(), "GET", "/v1/health", receive, [("content-length", "1000")])
    assert sent[0]["status"] == 413 and (b"content-type", b"application/json") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["error"] == {"type": "payload_too_large",
                                                      "message": "the request body is too large: at most 100 bytes here"}


def test_a_daemon_that_does_not_listen_does_not_import_the_http_stack(tmp_path):
    from conftest import modules_a_daemon_loads
    (tmp_path / "config.toml").write_text("[web]\nenabled = false\n")   # the web page is on by default
    assert modules_a_daemon_loads(tmp_path, {"starlette", "hypercorn", "h11", "h2"}) == []


def test_url_path_for_reaches_routes_behind_a_feature_middleware():
    from starlette.middleware import Middleware
    from starlette.middleware.gzip import GZipMiddleware
    from starlette.routing import Mount, NoMatchFound, Route
    app = build_app([("health", health_routes("t"), []),
                     ("web", [Route("/s/{id}", _echo, name="session"),
                              Mount("/static", routes=[Route("/{path:path}", _echo, name="asset")], name="static")],
                      [Middleware(GZipMiddleware)])], 100)
    assert app.url_path_for("session", id="k3v9") == "/s/k3v9"
    assert app.url_path_for("static:asset", path="app.css") == "/static/app.css"
    assert app.url_path_for("health") == "/v1/health"
    with pytest.raises(NoMatchFound):
        app.url_path_for("nothing")
