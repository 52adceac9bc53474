"""The API trigger's every answer over HTTP: tokens (missing, wrong, rotated), unknown and paused
routines, bad and oversized bodies, Idempotency-Key, the rate limit; malformed and truncated
requests leave the daemon serving. And the pure parts of fires.py without a listener."""

from __future__ import annotations

import json
import socket
from types import SimpleNamespace
from urllib.parse import urlsplit

import httpx
import pytest

from bgd.routines.fires import Refusal, api_fire, bearer, fire_answer, read_text
from routine_helpers import ROUTINE_CONFIG, listener_url, make_remote, start_routine_daemon

TOML = '''[routines.fixer]
prompt = "say fixed"
repos = ["{remote}"]
[[routines.fixer.triggers]]
api = true
rate_limit = 3

[routines.resting]
prompt = "say hi"
repos = ["{remote}"]
enabled = false
[[routines.resting.triggers]]
api = true

[routines.scheduled]
prompt = "say hi"
repos = ["{remote}"]
[[routines.scheduled.triggers]]
schedule = "daily at 03:00"
'''


@pytest.fixture
def api(bgd, tmp_path):
    url = start_routine_daemon(bgd, TOML.format(remote=make_remote(tmp_path)))
    tokens = {name: bgd.ctl_json("routine", "token", name)["token"] for name in ("fixer", "resting")}
    with httpx.Client(base_url=url, timeout=30) as client:
        yield bgd, client, tokens


def post(client, name, token=None, **kw):
    headers = kw.pop("headers", {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return client.post(f"/v1/routines/{name}/fire", headers=headers, **kw)


def error(answer) -> tuple[int, str]:
    body = answer.json()
    assert set(body["error"]) == {"type", "message"} and body["error"]["message"], body
    return answer.status_code, body["error"]["type"]


def test_tokens(api):
    bgd, client, tokens = api
    assert error(post(client, "fixer")) == (401, "unauthorized")
    assert error(post(client, "fixer", "bgr_wrong")) == (401, "unauthorized")
    assert error(post(client, "fixer", tokens["resting"])) == (401, "unauthorized")  # another routine's
    old = tokens["fixer"]
    new = bgd.ctl_json("routine", "token", "fixer")["token"]
    revoked = post(client, "fixer", old)
    assert error(revoked) == (401, "unauthorized") and "revokes the old" in revoked.json()["error"]["message"]
    assert post(client, "fixer", new).status_code == 200
    state = bgd.rpc("routine.get", {"name": "fixer"})["token"]
    assert state["set"] and new not in json.dumps(bgd.rpc("routine.get", {"name": "fixer"}))
    # Removed and added again under the same name: the old token does not fire the new routine.
    spec = bgd.rpc("routine.get", {"name": "fixer"})
    bgd.rpc("routine.remove", {"name": "fixer"})
    bgd.rpc("routine.add", {"name": "fixer", "prompt": spec["prompt"], "repos": [spec["repos"][0]["url"]],
                            "triggers": [{"api": True}]})
    assert error(post(client, "fixer", new)) == (401, "unauthorized")


def test_unknown_paused_and_bad_bodies(api):
    bgd, client, tokens = api
    token = tokens["fixer"]
    assert error(post(client, "nobody", token)) == (404, "not_found")
    assert error(post(client, "scheduled", token)) == (404, "not_found")
    assert error(post(client, "resting", tokens["resting"])) == (400, "routine_paused")
    assert error(post(client, "fixer", token, content=b"{nope")) == (400, "bad_request")
    assert error(post(client, "fixer", token, json=["text"])) == (400, "bad_request")
    assert error(post(client, "fixer", token, json={"text": 5})) == (400, "bad_request")
    assert error(post(client, "fixer", token, json={"txt": "x"})) == (400, "bad_request")
    assert error(post(client, "fixer", token, json={"text": "x" * 65_537})) == (400, "text_too_long")
    assert error(post(client, "fixer", token, content=b"x" * (1 << 20 + 1))) == (413, "payload_too_large")
    assert bgd.rpc("routine.runs", {"name": "fixer"}) == []  # none of these started anything


def test_idempotency_key(api):
    bgd, client, tokens = api
    headers = {"Idempotency-Key": "deploy-42"}
    first = post(client, "fixer", tokens["fixer"], json={"text": "a"}, headers=dict(headers))
    again = post(client, "fixer", tokens["fixer"], json={"text": "a"}, headers=dict(headers))
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    other = post(client, "fixer", tokens["fixer"], json={"text": "b"}, headers=dict(headers))
    assert error(other) == (409, "conflict")
    assert [r["id"] for r in bgd.rpc("routine.runs", {"name": "fixer"})] == [first.json()["run_id"]]


def test_the_rate_limit(api):
    bgd, client, tokens = api
    answers = [post(client, "fixer", tokens["fixer"]) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert error(answers[3]) == (429, "rate_limited") and int(answers[3].headers["retry-after"]) > 3500
    skipped = [r for r in bgd.rpc("routine.runs", {"name": "fixer"}) if r["status"] == "skipped"]
    assert [(r["reason"], r["trigger"]) for r in skipped] == [("rate_limited", "api")]


def test_malformed_and_truncated_requests_leave_the_daemon_serving(api):
    bgd, client, tokens = api
    host, port = urlsplit(str(client.base_url)).hostname, urlsplit(str(client.base_url)).port
    for raw in (b"GARBAGE\r\n\r\n", b"POST /v1/routines/fixer/fire HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: 100\r\nAuthorization: Bearer " + tokens["fixer"].encode() + b"\r\n\r\n{\"te",
                b"\x16\x03\x01\x00\xa5\x01\x00\x00"):
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
            try:
                sock.recv(4096)
            except OSError:
                pass
    assert client.get("/v1/health").json()["ok"] is True
    assert post(client, "fixer", tokens["fixer"]).status_code == 200
    assert bgd.rpc("routine.runs", {"name": "fixer"})[0]["status"] != "skipped"


# ---------------------------------------------------------------- without a listener

def test_the_pure_parts():
    assert bearer("Bearer abc") == "abc" and bearer("bearer  abc ") == "abc"
    assert bearer("Basic abc") is None and bearer(None) is None and bearer("Bearer") is None
    assert read_text(b"") is None and read_text(b'{"text": "hi"}') == "hi" and read_text(b"{}") is None
    with pytest.raises(Refusal) as info:
        read_text(b'{"text": "' + b"x" * 65_537 + b'"}')
    assert (info.value.status, info.value.type) == (400, "text_too_long")
    base = {"id": "r1", "routine": "x", "status": "running", "session_id": "s1", "session_url": "u"}
    assert fire_answer(base) == (200, {"type": "routine_fire", "run_id": "r1", "routine": "x", "status": "running",
                                       "session_id": "s1", "session_url": "u"})
    assert fire_answer({**base, "session_id": None, "status": "queued", "reason": "concurrency_limit"})[0] == 202
    assert fire_answer({**base, "session_id": None, "status": "clone_failed", "error": "fatal: nope"}) == (
        502, {"error": {"type": "clone_failed", "message": "fatal: nope"}, "run_id": "r1"})
    assert fire_answer({**base, "session_id": None, "status": "skipped", "reason": "previous_run_active"})[0] == 409


async def test_a_fire_while_the_daemon_shuts_down_is_503():
    service = SimpleNamespace(shutting_down=lambda: True)
    with pytest.raises(Refusal) as info:
        await api_fire(service, "x", "Bearer t", b"", None)
    assert (info.value.status, info.value.type) == (503, "unavailable")


@pytest.mark.slow
def test_a_slow_body_is_cut_off_with_408(bgd, tmp_path):
    start_routine_daemon(bgd, TOML.format(remote=make_remote(tmp_path)))
    bgd.stop()
    bgd.write_config(ROUTINE_CONFIG.replace('listen = "127.0.0.1:0"\n', 'listen = "127.0.0.1:0"\nbody_timeout_s = 0.5\n'))
    bgd.start()
    url = listener_url(bgd)
    token = bgd.ctl_json("routine", "token", "fixer")["token"]
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/routines/fixer/fire HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                     b"Authorization: Bearer " + token.encode() + b"\r\n\r\n{\"text\"")
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408") and b'"request_timeout"' in answer
    assert bgd.rpc("routine.runs", {"name": "fixer"}) == []
