"""The web page's pure parts (bgd.web.auth, listing, transcript) and its followers, without HTTP."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest

from bgd.web import auth, listing, transcript

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)


def iso(delta_s: float) -> str:
    return (NOW + timedelta(seconds=delta_s)).isoformat(timespec="milliseconds")


# -- auth ---------------------------------------------------------------------------------------------

def test_login_codes_work_once_and_expire_after_five_minutes():
    codes = auth.LoginCodes()
    first, second = codes.issue(now=1000.0), codes.issue(now=1000.0)
    assert first != second and len(first) >= 32
    assert codes.redeem(first, now=1299.0)
    assert not codes.redeem(first, now=1299.0)          # once
    assert not codes.redeem(second, now=1300.0)         # 300 s later: expired
    assert not codes.redeem(None, now=0) and not codes.redeem("", now=0)
    third = codes.issue(now=2000.0)
    codes.clear()
    assert not codes.redeem(third, now=2000.0)
    assert len(codes) == 0


def test_csrf_token_belongs_to_its_login():
    a, b = auth.new_login_token(), auth.new_login_token()
    assert auth.csrf_ok(a, auth.csrf_token(a))
    assert not auth.csrf_ok(a, auth.csrf_token(b))
    assert not auth.csrf_ok(a, None) and not auth.csrf_ok(a, "")
    assert auth.token_hash(a) != a and len(auth.token_hash(a)) == 64


def test_allowed_hosts_of_a_loopback_listener_are_every_loopback_name_on_its_port():
    hosts = auth.allowed_hosts("http://127.0.0.1:7421")
    assert {"127.0.0.1:7421", "localhost:7421", "[::1]:7421"} <= hosts
    for bad in ("evil.example:7421", "127.0.0.1:7422", "127.0.0.1", "localhost", "", None, "localhost.evil:7421"):
        assert not auth.host_ok(bad, hosts)
    assert auth.host_ok("LocalHost:7421", hosts)
    assert auth.allowed_hosts("http://[::1]:8080") >= {"[::1]:8080", "localhost:8080"}
    remote = auth.allowed_hosts("https://box.example:443")
    assert remote == {"box.example:443", "box.example"}


def test_origin_must_be_the_page_itself():
    ok = auth.origin_ok
    assert ok("http://127.0.0.1:7421", None, "http", "127.0.0.1:7421")
    assert ok(None, "http://127.0.0.1:7421/s/abc", "http", "127.0.0.1:7421")
    assert not ok("http://evil.example", "http://127.0.0.1:7421/", "http", "127.0.0.1:7421")
    assert not ok("null", None, "http", "127.0.0.1:7421")
    assert not ok("https://127.0.0.1:7421", None, "http", "127.0.0.1:7421")
    assert not ok(None, None, "http", "127.0.0.1:7421")
    assert not ok("http://localhost:7421", None, "http", "127.0.0.1:7421")   # another name is another origin


@pytest.mark.parametrize("given, expected", [
    ("/s/abc", "/s/abc"), ("/", "/"), (None, "/x"), ("", "/x"), ("//evil.example/", "/x"),
    ("https://evil.example/", "/x"), ("/\\evil.example", "/x"), ("s/abc", "/x")])
def test_safe_next_stays_on_the_listener(given, expected):
    assert auth.safe_next(given, "/x") == expected


# -- listing ------------------------------------------------------------------------------------------

def session(sid: str, state: str = "working", **extra) -> dict:
    return {"id": sid, "state": state, "cwd": "/src/app", "created_at": iso(-100), "updated_at": iso(-10),
            "pinned": False, "prompt": "fix it", "name": None, "origin": "dispatch", **extra}


def test_groups_follow_the_agent_view():
    sessions = [session("a"), session("b", "needs_input"), session("c", "sleeping"), session("d", "failed"),
                session("e", "completed", pinned=True), session("f", "stopped")]
    groups = listing.grouped(sessions, listing.Filters(), listing.cutoff_for(NOW))
    assert {k: [s["id"] for s in v] for k, v in groups.items()} == {
        "pinned": ["e"], "needs_input": ["b"], "working": ["a", "c"], "completed": ["d", "f"]}
    assert list(groups) == [key for key, _ in listing.GROUPS]


def test_old_ended_sessions_hide_unless_asked_and_filters_apply():
    old = session("o", "completed", updated_at=iso(-2 * 86400))
    pinned_old = session("p", "completed", updated_at=iso(-2 * 86400), pinned=True)
    busy_old = session("w", "working", updated_at=iso(-2 * 86400))
    other = session("x", "failed", cwd="/src/api")
    sessions = [old, pinned_old, busy_old, other]
    cutoff = listing.cutoff_for(NOW)
    assert set(listing.membership(sessions, listing.Filters(), cutoff)) == {"p", "w", "x"}
    assert listing.hidden_count(sessions, listing.Filters(), cutoff) == 1
    assert set(listing.membership(sessions, listing.Filters(show_all=True), cutoff)) == {"o", "p", "w", "x"}
    assert set(listing.membership(sessions, listing.Filters(state="completed"), cutoff)) == {"o", "p"}
    assert set(listing.membership(sessions, listing.Filters(cwd="/src/api"), cutoff)) == {"x"}


def test_filters_from_a_query_and_back():
    f = listing.Filters.parse({"state": "failed", "cwd": "/src/app/", "all": "1"})
    assert f == listing.Filters("failed", "/src/app", True) and f.active
    assert listing.Filters.parse({"state": "bogus", "cwd": "  "}) == listing.Filters()
    assert f.query() == "state=failed&cwd=%2Fsrc%2Fapp&all=1"
    assert listing.Filters().query() == ""


def test_row_words():
    assert listing.title({"id": "x", "name": None, "prompt": "fix\n the   flaky test"}) == "fix the flaky test"
    assert listing.title({"id": "x", "name": "nightly", "prompt": "p"}) == "nightly"
    assert listing.short_dir("/home/me/src", home="/home/me") == "~/src"
    assert listing.short_dir("/home/meta", home="/home/me") == "/home/meta"
    assert listing.age(iso(-10), NOW) == "just now"
    assert listing.age(iso(-300), NOW) == "5 min ago"
    assert listing.age(iso(-3 * 3600), NOW) == "3 h ago"
    assert listing.age(iso(-5 * 86400), NOW) == "5 d ago"
    assert listing.countdown(iso(250), NOW) == "in 4m 10s"
    assert listing.countdown(iso(2 * 3600 + 300), NOW) == "in 2h 5m"
    assert listing.countdown(iso(-5), NOW) == "now"
    assert listing.cost(0) == "—" and listing.cost(0.01234) == "$0.0123" and listing.cost(2.5) == "$2.50"


def test_routine_runs_status_and_outcome_side_by_side():
    runs = [{"id": "r2", "session_id": "s1", "status": "finished",
             "outcome": {"status": "nothing_to_do", "summary": "no open PRs"}},
            {"id": "r1", "session_id": "s1", "status": "agent_failed"},
            {"id": "r0", "session": "s2", "status": "running", "outcome": "unreported"}]
    by_session = listing.runs_by_session({"runs": runs})
    assert by_session["s1"]["id"] == "r2" and by_session["s2"]["id"] == "r0"
    assert listing.outcome_of(by_session["s1"]) == ("nothing_to_do", "no open PRs")
    assert listing.outcome_of(runs[1]) == ("unreported", "")
    assert listing.routine_name({"origin": "routine:pr-review"}) == "pr-review"
    assert listing.task_name({"origin": "task:nightly"}) == "nightly" and listing.task_name({"origin": "loop"}) is None


# -- transcript ---------------------------------------------------------------------------------------

def agent(content: list, kind: str = "assistant") -> dict:
    return {"type": kind, "message": {"role": kind, "content": content}}


def test_markdown_is_rendered_with_raw_html_off():
    html = transcript.markdown("**bold** <script>alert(1)</script> [x](javascript:alert(2)) <img src=x onerror=y>")
    assert "<strong>bold</strong>" in html
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<img" not in html and "javascript:" not in html.replace("[x](javascript:alert(2))", "")


def test_tool_calls_pair_with_their_results():
    entries = [
        {"n": 0, "kind": "user", "data": {"text": "go"}},
        {"n": 1, "kind": "agent", "data": agent([{"type": "text", "text": "looking"},
                                                  {"type": "tool_use", "id": "toolu_1", "name": "Bash",
                                                   "input": {"command": "ls -la"}}])},
        {"n": 2, "kind": "agent", "data": agent([{"type": "tool_result", "tool_use_id": "toolu_1",
                                                  "content": [{"type": "text", "text": "a b"}], "is_error": True}],
                                                 "user")},
        {"n": 3, "kind": "agent", "data": agent([{"type": "tool_result", "tool_use_id": "elsewhere",
                                                  "content": "orphan"}], "user")},
        {"n": 4, "kind": "agent", "data": {"type": "result", "is_error": False, "total_cost_usd": 0.02}},
        {"n": 5, "kind": "daemon", "data": {"event": "failed", "error": "the agent exited mid-turn"}},
        {"n": 6, "kind": "control", "data": {"decision": "deny", "tool_name": "Bash", "message": "no"}},
        {"n": 7, "kind": "agent", "data": {"truncated": True, "bytes": 99999, "preview": "…"}},
        {"n": 8, "kind": "agent", "data": {"type": "weird_future_type"}},
    ]
    rows = transcript.pair(entries)
    kinds = [[item.kind for item in its] for _, its in rows]
    assert kinds == [["user"], ["text", "tool"], [], ["result"], ["note"], ["note"], ["note"], ["truncated"], []]
    tool = rows[1][1][1]
    assert tool.name == "Bash" and tool.summary == "ls -la" and '"command": "ls -la"' in tool.input
    assert tool.result is not None and tool.result.text == "a b" and tool.result.is_error
    assert rows[4][1][0].text == "turn done · $0.0200" and rows[4][1][0].level == "ok"
    assert rows[5][1][0].level == "error" and rows[6][1][0].text == "denied Bash: no"


def test_dom_ids_from_the_agent_cannot_escape_a_selector():
    assert transcript.dom_id("toolu_01ABC-x") == "toolu_01ABC-x"
    odd = transcript.dom_id('x" onclick="y')
    assert re.fullmatch(r"h[0-9a-f]{20}", odd) and odd == transcript.dom_id('x" onclick="y')
    assert transcript.dom_id("a,#b") != "a,#b"


def test_questions_of_a_pending_request():
    pending = {"kind": "question", "input": {"questions": [
        {"question": "deploy?", "header": "Q", "options": [{"label": "yes", "description": "now"}, {"label": ""}]},
        "junk"]}}
    assert transcript.questions(pending) == [{"question": "deploy?", "header": "Q",
                                              "options": [{"label": "yes", "description": "now"}]}]
    assert transcript.questions({"input": None}) == [] and transcript.questions({"input": {"questions": 3}}) == []


# -- [web] in config.toml -----------------------------------------------------------------------------

def test_web_section_of_the_config():
    from bgcore.config import ConfigError, parse_config

    assert parse_config("").web_enabled is True
    assert parse_config("[web]\nenabled = false\n").web_enabled is False
    with pytest.raises(ConfigError, match="web.enabled must be true or false"):
        parse_config('[web]\nenabled = "no"\n')
    config = parse_config("[web]\nenabled = true\nport = 80\n", "/c/config.toml")
    assert any("unknown key 'port' in [web]" in w for w in config.warnings)


def test_acp_entries():
    entries = [
        {"n": 0, "kind": "assistant", "data": {"text": "I will **check**", "message_id": "m1"}},
        {"n": 1, "kind": "thought", "data": {"text": "maybe the cache"}},
        {"n": 2, "kind": "tool", "data": {"id": "call_1", "title": "Run tests", "status": "pending",
                                          "tool_kind": "execute", "input": {"command": "pytest"}}},
        {"n": 3, "kind": "tool", "data": {"id": "call_1", "title": "Run tests", "status": "failed",
                                          "output": "2 failed"}},
        {"n": 4, "kind": "plan", "data": {"entries": [{"content": "fix", "priority": "high", "status": "completed"},
                                                      {"content": "test", "status": "in_progress"}]}},
        {"n": 5, "kind": "acp", "data": {"sessionUpdate": "available_commands_update"}},
    ]
    rows = transcript.pair(entries)
    assert [[i.kind for i in its] for _, its in rows] == [["text"], ["thought"], ["tool"], [], ["plan"], []]
    assert "<strong>check</strong>" in rows[0][1][0].text
    call = rows[2][1][0]
    assert call.name == "Run tests" and call.summary == "pytest" and call.result.is_error
    assert call.result.text == "2 failed"
    assert [s["status"] for s in rows[4][1][0].extra["steps"]] == ["completed", "in_progress"]
    assert listing.cost(None) == "cost unknown" and listing.cost(0) == "—"


def test_the_cookie_is_named_for_the_port():
    assert auth.cookie_name("http://127.0.0.1:7421") == "bgagents_web_7421"
    assert auth.cookie_name("http://127.0.0.1:8080") != auth.cookie_name("http://127.0.0.1:7421")
