"""What the live pages are sent (bgd.web.stream), on a daemon object in this process: no sockets, no browser."""

from __future__ import annotations

import re

import pytest

from bgd.daemon import Daemon
from bgd.sessions.manager import Session
from bgd.web import listing
from bgd.web.app import Web
from bgd.web.stream import IndexFollower, SessionFollower, sse_message


@pytest.fixture
def daemon(tmp_path):
    (tmp_path / "config").mkdir()
    d = Daemon(tmp_path / "bgd.sock", tmp_path / "config", tmp_path / "state")
    yield d
    d.store.close()


def add(daemon, sid: str, state: str = "working", **fields) -> Session:
    session = Session(id=sid, cwd="/src/app", agent="claude", backend="claude", prompt=f"prompt of {sid}",
                      state=state, **fields)
    daemon.sessions.sessions[sid] = session
    daemon.sessions.transcript_len[sid] = 0
    daemon.sessions.update(session)
    return session


def events_of(daemon) -> list[dict]:
    seen: list[dict] = []
    daemon.bus.listeners.append(seen.append)
    return seen


def oob_ids(html: str) -> list[str]:
    return re.findall(r'id="([^"]+)"[^>]*hx-swap-oob="true"', html)


async def test_index_replaces_a_row_in_place_and_redraws_only_the_groups_a_row_leaves_and_joins(daemon):
    web = Web(daemon, base_url=lambda: "http://127.0.0.1:7421")
    a, b = add(daemon, "aaaaaaaa"), add(daemon, "bbbbbbbb", "completed")
    follower = IndexFollower(web, "t0ken", listing.Filters())
    seen = events_of(daemon)

    daemon.sessions.update(a, last_message="still going")
    html = await follower.events(seen[-1:])
    assert oob_ids(html) == ["row-aaaaaaaa"] and "still going" in html and 'value="t0ken"' not in html

    daemon.sessions.update(a, state="needs_input", waiting_for="permission",
                           pending={"request_id": "r1", "tool_name": "Bash", "input": {"command": "ls"},
                                    "kind": "permission", "suggestions": []})
    html = await follower.events(seen[-1:])
    assert sorted(oob_ids(html)) == ["group-needs_input", "group-working"]
    assert 'value="t0ken"' in html and "Approve" in html      # the row's forms carry the page's CSRF token

    daemon.sessions.update(b, pinned=True)
    daemon.sessions.update(a, name="<img src=x onerror=alert(1)>")
    html = await follower.events(seen[-2:])                  # one message for a burst
    assert sorted(oob_ids(html)) == ["group-completed", "group-pinned", "row-aaaaaaaa"]
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "<img" not in html

    await daemon.sessions.remove(b)
    html = await follower.events(seen[-1:])
    assert oob_ids(html) == ["group-pinned"] and "bbbbbbbb" not in html
    assert await follower.events(seen[-1:]) == ""             # the same event again changes nothing


async def test_index_filters_apply_to_live_changes(daemon):
    web = Web(daemon, base_url=lambda: "http://127.0.0.1:7421")
    a = add(daemon, "aaaaaaaa")
    follower = IndexFollower(web, "t", listing.Filters(state="working"))
    seen = events_of(daemon)
    daemon.sessions.update(a, state="completed")
    html = await follower.events(seen[-1:])
    # Leaving the filter empties the list: the whole list is redrawn, with its "no session matches" line.
    assert 'id="groups" hx-swap-oob="true"' in html and "No session matches" in html
    add(daemon, "cccccccc", "completed")
    assert await follower.events(seen[-1:]) == ""


async def test_index_redraws_everything_after_missed_events_or_any_backlog(daemon):
    web = Web(daemon, base_url=lambda: "http://127.0.0.1:7421")
    add(daemon, "aaaaaaaa")
    follower = IndexFollower(web, "t", listing.Filters())
    assert await follower.start([], missed=False) == ""
    assert 'id="groups" hx-swap-oob="true"' in await follower.start([], missed=True)
    assert 'id="groups" hx-swap-oob="true"' in await follower.start([{"type": "session.updated"}], missed=False)


async def test_session_page_appends_lines_in_place_of_their_tail_marker(daemon):
    web = Web(daemon, base_url=lambda: "http://127.0.0.1:7421")
    a = add(daemon, "aaaaaaaa")
    follower = SessionFollower(web, "t", "aaaaaaaa")
    seen = events_of(daemon)
    daemon.sessions.note(a, {"event": "hello <b>there</b>"})
    daemon.sessions._record(a, "agent", {"type": "assistant", "message": {"content": [
        {"type": "tool_use", "id": "toolu_9", "name": "Bash", "input": {"command": "ls"}}]}})
    daemon.sessions._record(a, "agent", {"type": "user", "message": {"content": [
        {"type": "tool_result", "tool_use_id": "toolu_9", "content": "a.txt"}]}})
    html = await follower.events([e for e in seen if e["type"] == "session.transcript"])
    assert 'hx-swap-oob="beforebegin:#tail-0"' in html and 'id="tail-1" class="tail" hx-swap-oob="outerHTML:#tail-0"' in html
    assert "hello &lt;b&gt;there&lt;/b&gt;" in html
    assert 'id="tool-toolu_9"' in html and 'id="result-toolu_9"' in html
    assert 'id="tail-3" class="tail" hx-swap-oob="outerHTML:#tail-2"' in html
    # The result goes into the call's slot, not as a line of its own.
    assert re.search(r'id="result-toolu_9" hx-swap-oob="true">\s*<div class="label">result</div><pre>a.txt</pre>', html)


async def test_session_page_redraws_the_pending_panel_only_when_the_request_changes(daemon):
    web = Web(daemon, base_url=lambda: "http://127.0.0.1:7421")
    a = add(daemon, "aaaaaaaa")
    follower = SessionFollower(web, "t", "aaaaaaaa")
    seen = events_of(daemon)
    pending = {"request_id": "r1", "tool_name": "Bash", "input": {"command": "ls"}, "kind": "permission",
               "suggestions": []}
    daemon.sessions.update(a, state="needs_input", waiting_for="permission", pending=pending)
    assert "pending" in oob_ids(await follower.events(seen[-1:]))
    daemon.sessions.update(a, last_message="x")
    assert oob_ids(await follower.events(seen[-1:])) == ["session-head"]   # a typed Deny message survives
    daemon.sessions.update(a, state="working", waiting_for=None, pending=None)
    assert "pending" in oob_ids(await follower.events(seen[-1:]))


def test_an_sse_message_keeps_every_line_and_the_seq():
    message = sse_message("<p>a</p>\n<p>b\r\nc\rd</p>", 42).decode()
    assert message == "id: 42\nevent: update\ndata: <p>a</p>\ndata: <p>b\ndata: c\ndata: d</p>\n\n"


def test_routines_page_shows_what_routine_methods_return(daemon):
    """The shapes of docs/protocol.md's routine objects, run records and deliveries."""
    web = Web(daemon, base_url=lambda: "http://127.0.0.1:7421")
    html = web.render("_routines_main.html", enabled=True, errors=[], now=datetime_now(), routines=[
        {"name": "pr-review", "description": "review <b>PRs</b>", "status": "enabled",
         "repos": [{"url": "https://github.com/acme/api", "ref": None}],
         "triggers": [{"kind": "schedule", "human": "weekdays at 09:00", "next_at": "2026-11-25T09:00:00+01:00"},
                      {"kind": "api", "rate_limit": 60},
                      {"kind": "github", "github": ["pull_request.opened"]}]}],
        runs=[{"id": "r1", "routine": "pr-review", "trigger": "github", "status": "finished",
               "outcome": "nothing_to_do", "summary": "no open PRs", "session_id": "s1",
               "created_at": "2026-11-24T09:00:00+00:00",
               "pushed": [{"ref": "refs/heads/main", "allowed": False}]},
              {"id": "r2", "routine": "pr-review", "trigger": "schedule", "status": "skipped",
               "reason": "previous_run_active", "outcome": None, "created_at": "2026-11-24T08:00:00+00:00"}],
        deliveries=[{"id": "d1", "event": "pull_request", "action": "opened", "repository": "acme/api",
                     "received_at_iso": "2026-11-24T09:00:00+00:00",
                     "results": [{"routine": "pr-review", "matched": False, "reason": "base is not main"}]}])
    assert "review &lt;b&gt;PRs&lt;/b&gt;" in html
    assert "schedule weekdays at 09:00" in html and "API (60/h)" in html and "GitHub pull_request.opened" in html
    assert "2026-11-25 09:00" in html                                  # its next fire
    assert "finished" in html and "nothing_to_do" in html and "no open PRs" in html
    assert "previous_run_active" in html and "outside the push policy" in html
    assert "pr-review: no — base is not main" in html
    assert "not configured" in web.render("_routines_main.html", enabled=False)


def datetime_now():
    from bgd import clock
    return clock.now()


async def test_a_row_that_only_streams_gets_a_touch_not_a_redraw(daemon):
    import json
    web = Web(daemon, base_url=lambda: "http://127.0.0.1:7421")
    a = add(daemon, "aaaaaaaa", last_message="first")
    follower = IndexFollower(web, "t", listing.Filters())
    seen = events_of(daemon)
    daemon.sessions.update(a, last_message="<b>second</b>", cost_usd=0.5)
    assert await follower.events(seen[-1:]) == ""
    touched = json.loads(follower.touches())
    assert touched["aaaaaaaa"]["last"] == "<b>second</b>" and touched["aaaaaaaa"]["cost"] == "$0.5000"
    assert follower.touches() == ""                       # sent once
    daemon.sessions.update(a, name="now named")
    assert oob_ids(await follower.events(seen[-1:])) == ["row-aaaaaaaa"]
    assert follower.touches() == ""


def test_logins_unused_for_thirty_days_are_forgotten(daemon):
    daemon.store.add_web_login("a" * 64, "2020-01-01T00:00:00.000+00:00")
    daemon.store.add_web_login("b" * 64, __import__("bgd").clock.now_iso())
    web = Web(daemon, base_url=lambda: "http://127.0.0.1:7421")
    assert set(web.logins) == {"b" * 64} and set(daemon.store.web_logins()) == {"b" * 64}
