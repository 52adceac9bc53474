"""The web page over HTTP against a real bgd (SPEC §13): login, 401, Host, Origin, CSRF, revoke.

No browser here: httpx sends exactly the requests an attacker's page or a
stray client could, headers included.
"""

from __future__ import annotations

import json
import re
import signal

import httpx
import pytest

from conftest import wait_until
from web_helpers import login_url, start_web_daemon, web_config

pytestmark = pytest.mark.slow


def _login(bgd, base: str) -> httpx.Client:
    client = httpx.Client(base_url=base, follow_redirects=False, timeout=10)
    response = client.get(login_url(bgd).removeprefix(base))
    assert response.status_code == 303 and response.headers["location"] == "/"
    return client


def _csrf(client: httpx.Client, path: str = "/") -> str:
    page = client.get(path)
    assert page.status_code == 200, page.text
    return re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text).group(1)


def test_without_the_cookie_everything_is_401(bgd):
    base = start_web_daemon(bgd)
    with httpx.Client(base_url=base, timeout=10) as client:
        for path in ("/", "/s/abcdefgh", "/tasks", "/routines", "/events", "/s/abcdefgh/events"):
            response = client.get(path)
            assert response.status_code == 401, path
            assert "bgctl web" in response.text
        page = client.get("/")
        assert page.headers["content-type"].startswith("text/html") and "Not logged in" in page.text
        for path in ("/dispatch", "/s/abcdefgh/reply", "/s/abcdefgh/respond", "/logout"):
            response = client.post(path, data={"prompt": "x"}, headers={"origin": base})
            assert response.status_code == 401, path
        assert client.get("/static/style.css").status_code == 200   # assets are not private
        assert client.get("/v1/health").json()["ok"] is True


def test_login_code_works_once_and_sets_a_strict_httponly_cookie(bgd):
    base = start_web_daemon(bgd)
    url = login_url(bgd)
    with httpx.Client(timeout=10) as client:
        response = client.get(url)
        assert response.status_code == 303 and response.headers["location"] == "/"
        cookie = response.headers["set-cookie"]
        assert cookie.startswith(f"bgagents_web_{base.rsplit(':', 1)[1]}=")
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        assert "Secure" not in cookie   # plain http on loopback
        again = httpx.get(url, timeout=10)
        assert again.status_code == 401 and "does not work" in again.text
        assert httpx.get(base + "/login?code=made-up", timeout=10).status_code == 401
        assert httpx.get(base + "/login", timeout=10).status_code == 401
        assert client.get(base + "/").status_code == 200


def test_bgctl_web_json_and_when_the_page_is_off(bgd):
    base = start_web_daemon(bgd)
    answer = bgd.ctl_json("web")
    assert answer["url"].startswith(base + "/login?code=") and answer["valid_s"] == 300
    assert answer["code"] in answer["url"] and answer["expires_at"]
    client = httpx.Client(base_url=base, timeout=10)
    assert client.get(answer["url"].removeprefix(base)).status_code == 303
    port = int(base.rsplit(":", 1)[1])
    # Off, while the listener stays up for something else: the page's routes answer 404.
    bgd.write_config(web_config(port, "enabled = true\n"), web=False)
    assert bgd.rpc("daemon.reload")["reloaded"]
    wait_until(lambda: bgd.rpc("daemon.status")["http"]["wanted_by"] == ["http.enabled"], what="web to let go")
    assert client.get("/").status_code == 404 and "the web page is off" in client.get("/").text
    assert client.get("/v1/health").status_code == 200
    result = bgd.ctl("web")
    assert result.returncode == 1
    assert "the web page is off" in result.stderr and "[web] enabled = true" in result.stderr
    # Off with nothing else wanting it: no listener at all; on again: the old login still works.
    bgd.write_config("", web=False)
    bgd.rpc("daemon.reload")
    wait_until(lambda: not bgd.rpc("daemon.status")["http"]["listening"], what="the listener to stop")
    bgd.write_config(web_config(port), web=True)
    bgd.rpc("daemon.reload")
    wait_until(lambda: bgd.rpc("daemon.status")["http"]["listening"], what="the listener back")
    assert client.get("/").status_code == 200


def test_wrong_host_is_refused(bgd):
    base = start_web_daemon(bgd)
    client = _login(bgd, base)
    port = base.rsplit(":", 1)[1]
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1:{int(port) + 1}", f"localhost.evil:{port}"):
        for path in ("/", "/login?code=x", "/static/style.css", "/events"):
            response = client.get(path, headers={"host": host})
            assert response.status_code == 421, (host, path)
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"LOCALHOST:{port}"):
        assert client.get("/", headers={"host": host}).status_code == 200, host


def test_state_changing_requests_need_origin_and_csrf(bgd):
    base = start_web_daemon(bgd)
    client = _login(bgd, base)
    csrf = _csrf(client)
    form = {"prompt": "say forged", "cwd": str(bgd.work), "csrf": csrf}
    no_token = {k: v for k, v in form.items() if k != "csrf"}
    refused = [
        (no_token, {"origin": base}),                                # no CSRF token
        (dict(form, csrf="0" * 64), {"origin": base}),               # a wrong one
        (form, {"origin": "http://evil.example"}),                   # another site's page
        (form, {"origin": "null"}),                                  # a sandboxed frame
        (form, {}),                                                  # neither Origin nor Referer
        (form, {"referer": "http://evil.example/page"}),
    ]
    for data, headers in refused:
        response = client.post("/dispatch", data=data, headers=headers)
        assert response.status_code == 403, (data.get("csrf"), headers)
        assert "refused" in response.text
    assert bgd.rpc("session.list") == []
    # A token as header works as well as the form field; JSON bodies are not forms.
    response = client.post("/dispatch", json={"prompt": "x"}, headers={"origin": base, "x-csrf-token": csrf})
    assert response.status_code == 403
    ok = client.post("/dispatch", data=form, headers={"origin": base})
    assert ok.status_code == 303 and ok.headers["location"] == "/"
    ok = client.post("/dispatch", data=no_token, headers={"referer": base + "/", "x-csrf-token": csrf})
    assert ok.status_code == 303
    assert len(bgd.rpc("session.list")) == 2
    # The outcome shows on the next page (not in the URL: nothing of it is reflected from a link).
    page = client.get("/")
    assert "dispatched · " in page.text


def test_plain_form_actions_redirect_back_with_the_outcome(bgd):
    base = start_web_daemon(bgd)
    client = _login(bgd, base)
    session = bgd.dispatch('tool Bash {"command": "ls"}')
    bgd.wait_state(session["id"], "needs_input")
    csrf = _csrf(client, f"/s/{session['id']}")
    headers = {"origin": base}
    back = client.post(f"/s/{session['id']}/reply", data={"csrf": csrf, "text": "no, use make", "next": "//evil"},
                       headers=headers)
    assert back.status_code == 303 and back.headers["location"] == f"/s/{session['id']}"  # never off-site
    assert "sent" in client.get(back.headers["location"]).text
    bgd.wait_state(session["id"], "completed")
    refused = client.post(f"/s/{session['id']}/respond", data={"csrf": csrf, "decision": "allow"}, headers=headers)
    assert refused.status_code == 303
    assert "not waiting for a decision" in client.get(f"/s/{session['id']}").text
    htmx = client.post(f"/s/{session['id']}/rename", data={"csrf": csrf, "name": "<b>x</b>"},
                       headers=dict(headers, **{"hx-request": "true"}))
    assert htmx.status_code == 200 and htmx.text.strip() == '<p class="flash ok">renamed</p>'
    assert bgd.rpc("session.get", {"id": session["id"]})["name"] == "<b>x</b>"
    assert "&lt;b&gt;x&lt;/b&gt;" in client.get(f"/s/{session['id']}").text
    pinned = client.post(f"/s/{session['id']}/pin", data={"csrf": csrf, "pinned": "1"}, headers=headers)
    assert pinned.status_code == 303 and bgd.rpc("session.get", {"id": session["id"]})["pinned"] is True
    gone = client.post("/s/nosuchid/stop", data={"csrf": csrf}, headers=dict(headers, **{"hx-request": "1"}))
    assert "no session" in gone.text and 'class="flash error"' in gone.text
    assert client.get("/s/nosuchid").status_code == 404
    short = client.get(f"/s/{session['id'][:4]}")
    assert short.status_code == 303 and short.headers["location"] == f"/s/{session['id']}"


def test_logout_and_revoke_end_every_cookie(bgd):
    base = start_web_daemon(bgd)
    first, second = _login(bgd, base), _login(bgd, base)
    assert first.get("/").status_code == 200 and second.get("/").status_code == 200
    response = first.post("/logout", data={"csrf": _csrf(first)}, headers={"origin": base})
    assert response.status_code == 200 and "Logged out" in response.text
    assert '=""' in response.headers["set-cookie"] or "Max-Age=0" in response.headers["set-cookie"]
    assert first.get("/").status_code == 401 and second.get("/").status_code == 401
    third = _login(bgd, base)
    unused = login_url(bgd)
    result = bgd.ctl("--json", "web", "--revoke")
    assert result.returncode == 0 and json.loads(result.stdout) == {"revoked": 1}
    assert third.get("/").status_code == 401
    assert httpx.get(unused, timeout=10).status_code == 401   # revoking ends unused codes too
    assert "ended 0 logins" in bgd.ctl("web", "--revoke").stdout


def test_a_login_survives_a_daemon_restart(bgd):
    base = start_web_daemon(bgd)
    client = _login(bgd, base)
    port = int(base.rsplit(":", 1)[1])
    bgd.stop(signal.SIGTERM)
    start_web_daemon(bgd, port)
    assert client.get("/").status_code == 200
    rows = bgd.state_dir / "bgd.sqlite3"
    import sqlite3
    with sqlite3.connect(rows) as db:
        stored = [row[0] for row in db.execute("SELECT token_hash FROM web_logins")]
    cookie = client.cookies[f"bgagents_web_{port}"]
    assert len(stored) == 1 and cookie not in stored   # only a hash is kept


def test_event_stream_resumes_after_last_event_id(bgd):
    base = start_web_daemon(bgd)
    client = _login(bgd, base)
    session = bgd.dispatch("say one")
    bgd.wait_state(session["id"], "completed")
    seq = bgd.rpc("daemon.status")["event_seq"]
    bgd.rpc("session.reply", {"id": session["id"], "text": "say two"})
    bgd.wait_state(session["id"], "completed")
    with client.stream("GET", f"/s/{session['id']}/events", headers={"last-event-id": str(seq)}) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        text = ""
        for chunk in stream.iter_text():
            text += chunk
            if "turn done" in text:
                break
    assert "retry: 2000" in text
    assert "two" in text and ">one<" not in text          # what came after seq, and nothing before it
    ids = [int(i) for i in re.findall(r"^id: (\d+)$", text, re.M)]
    assert ids and ids == sorted(ids) and ids[0] > seq


def test_bgctl_web_open_starts_the_browser_with_the_link(bgd, tmp_path):
    import sys
    start_web_daemon(bgd)
    opened = tmp_path / "opened.txt"
    browser = f"{sys.executable} -c \"import sys; open({str(opened)!r}, 'w').write(sys.argv[1])\" %s"
    result = bgd.ctl("web", "--open", env={"BROWSER": browser})
    assert result.returncode == 0, result.stderr
    url = result.stdout.strip()
    wait_until(opened.exists, what="the browser command")
    assert opened.read_text() == url and "/login?code=" in url
    assert httpx.get(url, timeout=10).status_code == 303     # the opened link logs in
