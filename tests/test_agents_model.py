"""The agent view's pure logic: grouping, folding, row text, countdowns, the dispatch line."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from bgctl import agents_model as m

NOW = datetime(2026, 11, 24, 20, 0, 0, tzinfo=timezone.utc)


def iso(seconds_ago: float = 0) -> str:
    return (NOW - timedelta(seconds=seconds_ago)).isoformat(timespec="milliseconds")


def sess(id: str, state: str = "completed", *, age: float = 60, **kw) -> dict:
    base = {"id": id, "name": None, "cwd": "/src/web", "agent": "claude", "state": state, "waiting_for": None,
            "error": None, "created_at": iso(age), "updated_at": iso(age), "cost_usd": 0.0123, "turns": 1,
            "last_message": f"message of {id}", "pinned": False, "origin": "dispatch", "next_wake_at": None,
            "prompt": f"prompt of {id}", "loop_runs": 0}
    base.update(kw)
    return base


def keys(rows):
    return [r.key for r in rows]


def test_groups_in_order_with_pinned_first_and_sleeping_under_working():
    rows = m.build_rows([
        sess("done0001", "completed", age=10), sess("fail0001", "failed", age=20),
        sess("stop0001", "stopped", age=30), sess("need0001", "needs_input", age=40),
        sess("work0001", "working", age=50), sess("loop0001", "sleeping", age=60),
        sess("pin00001", "completed", age=70, pinned=True),
    ])
    assert keys(rows) == ["h:pinned", "s:pin00001", "h:needs_input", "s:need0001",
                          "h:working", "s:work0001", "s:loop0001",
                          "h:completed", "s:done0001", "s:fail0001", "s:stop0001"]
    assert [r.title for r in rows if r.kind == "header"] == ["Pinned (1)", "Needs input (1)", "Working (2)",
                                                             "Completed (3)"]


def test_empty_groups_are_left_out():
    assert keys(m.build_rows([sess("a0000001", "working")])) == ["h:working", "s:a0000001"]
    assert m.build_rows([]) == []


def test_rows_are_newest_first_inside_a_group():
    rows = m.build_rows([sess("old00001", "working", age=500), sess("new00001", "working", age=5)])
    assert keys(rows) == ["h:working", "s:new00001", "s:old00001"]


def test_old_completed_rows_fold_but_failed_never_do():
    sessions = [sess(f"done{i:04d}", "completed", age=i * 10) for i in range(8)]
    sessions += [sess("fail0001", "failed", age=1000), sess("stop0001", "stopped", age=5)]
    rows = m.build_rows(sessions)
    shown = [r.session_id for r in rows if r.kind == "session"]
    assert "fail0001" in shown                       # older than every completed one, still shown
    assert shown == ["done0000", "stop0001", "done0001", "done0002", "done0003", "fail0001"]
    assert rows[-1].kind == "fold" and rows[-1].title == "… 4 more" and rows[-1].key == "f:completed"
    assert rows[0].title == "Completed (10)"

    opened = m.build_rows(sessions, expanded={"completed"})
    assert len([r for r in opened if r.kind == "session"]) == 10
    assert opened[-1].kind == "fold" and opened[-1].title == "… show fewer"


def test_nothing_to_fold_means_no_fold_row():
    rows = m.build_rows([sess(f"done{i:04d}") for i in range(m.FOLD_KEEP)])
    assert [r.kind for r in rows].count("fold") == 0
    assert [r.kind for r in m.build_rows([sess("a0000001")], expanded={"completed"})].count("fold") == 0


def test_state_filter():
    sessions = [sess("fail0001", "failed"), sess("done0001"), sess("need0001", "needs_input")]
    assert keys(m.build_rows(sessions, states=frozenset({"failed"}))) == ["h:completed", "s:fail0001"]
    assert m.build_rows(sessions, states=frozenset({"sleeping"})) == []


def test_group_by_directory():
    sessions = [sess("web00001", "completed", cwd="/src/web", age=5),
                sess("web00002", "needs_input", cwd="/src/web", age=50),
                sess("api00001", "working", cwd="/src/api"),
                sess("pin00001", cwd="/src/zzz", pinned=True)]
    rows = m.build_rows(sessions, group_by="dir")
    assert keys(rows) == ["h:pinned", "s:pin00001", "h:d:/src/api", "s:api00001",
                          "h:d:/src/web", "s:web00002", "s:web00001"]   # needs input first inside a dir
    assert rows[2].title == "/src/api (1)"


def test_move_skips_headers_and_stops_at_the_ends():
    rows = m.build_rows([sess("need0001", "needs_input"), sess("work0001", "working")])
    first = m.first_selectable(rows)
    assert rows[first].key == "s:need0001"
    down = m.move(rows, first, 1)
    assert rows[down].key == "s:work0001"
    assert m.move(rows, down, 1) == down
    assert m.move(rows, first, -1) == first


def test_reselect_follows_the_key_or_stays_near():
    rows = m.build_rows([sess("need0001", "needs_input"), sess("work0001", "working")])
    assert rows[m.reselect(rows, "s:work0001", 0)].key == "s:work0001"
    fewer = m.build_rows([sess("work0001", "working")])
    assert fewer[m.reselect(fewer, "s:gone0001", 3)].key == "s:work0001"
    assert m.reselect([], "s:x", 2) is None


@pytest.mark.parametrize("width", [76, 79, 100, 160])
def test_a_row_fits_its_width(width):
    long = sess("long0001", "failed", name="a" * 80, cwd="/very/long/path/" + "d" * 60,
                error="the agent crashed " * 20, cost_usd=123.456)
    loop = sess("loop0001", "sleeping", loop_runs=12, next_wake_at=(NOW + timedelta(hours=3)).isoformat())
    for s in (long, loop, sess("plain001")):
        text = m.row_text(s, NOW, width)
        assert len(text) <= width
        assert "\n" not in text


def test_row_text_says_what_matters():
    text = m.row_text(sess("abcd1234", "completed", cwd="/src/web", last_message="All tests pass"), NOW, 100)
    assert text.startswith("✓ prompt of abcd1234")
    assert "/src/web" in text and "All tests pass" in text and "1m" in text and "$0.01" in text
    named = m.row_text(sess("abcd1234", name="login-fix"), NOW, 100)
    assert "login-fix" in named and "prompt of" not in named
    failed = m.row_text(sess("x0000001", "failed", error="claude: not logged in"), NOW, 100)
    assert failed.startswith("✗") and "not logged in" in failed


def test_needs_input_rows_say_what_is_asked():
    perm = sess("p0000001", "needs_input", waiting_for="permission",
                pending={"request_id": "r1", "kind": "permission", "tool_name": "Bash", "input": {"command": "ls"}})
    assert "wants Bash" in m.row_text(perm, NOW, 100)
    question = sess("q0000001", "needs_input", waiting_for="question",
                    pending={"request_id": "r2", "kind": "question", "tool_name": "AskUserQuestion",
                             "input": {"questions": [{"question": "Deploy?", "options": [{"label": "yes"}]}]}})
    assert "asks: Deploy?" in m.row_text(question, NOW, 100)


def test_loop_badge_and_countdown():
    s = sess("loop0001", "sleeping", loop_runs=3, next_wake_at=(NOW + timedelta(seconds=125)).isoformat())
    assert m.loop_badge(s, NOW) == "↻3 in 2m05s"
    assert "↻3 in 2m05s" in m.row_text(s, NOW, 100)
    assert m.loop_badge(s, NOW + timedelta(seconds=200)) == "↻3 due"
    assert m.loop_badge(sess("plain001"), NOW) == ""
    assert m.countdown((NOW + timedelta(seconds=9)).isoformat(), NOW) == "in 9s"
    assert m.countdown((NOW + timedelta(seconds=0.2)).isoformat(), NOW) == "in 1s"
    assert m.countdown((NOW + timedelta(hours=2, minutes=5)).isoformat(), NOW) == "in 2h05m"
    assert m.countdown((NOW + timedelta(days=2, hours=1)).isoformat(), NOW) == "in 2d01h"
    assert m.countdown(None, NOW) == "" and m.countdown("not a time", NOW) == ""


def test_choices_for_a_permission_and_a_question():
    perm = sess("p0000001", "needs_input", waiting_for="permission",
                pending={"request_id": "r1", "kind": "permission", "tool_name": "Bash", "input": {}})
    assert [(c.key, c.label, c.params) for c in m.choices(perm)] == [
        ("1", "approve", {"decision": "allow", "request_id": "r1"}),
        ("2", "approve always", {"decision": "allow", "always": True, "request_id": "r1"}),
        ("3", "deny", {"decision": "deny", "request_id": "r1"}),
    ]
    question = sess("q0000001", "needs_input", waiting_for="question",
                    pending={"request_id": "r2", "kind": "question", "tool_name": "AskUserQuestion",
                             "input": {"questions": [{"question": "Deploy?",
                                                      "options": [{"label": "yes"}, {"label": "no"}]}]}})
    assert [(c.key, c.label) for c in m.choices(question)] == [("1", "yes"), ("2", "no")]
    assert m.choice_for(question, "2").params == {"decision": "allow", "answer": "no", "request_id": "r2"}
    assert m.choice_for(question, "3") is None
    assert m.pending_lines(question) == ["? Deploy?"]
    assert m.choices(sess("done0001")) == []


@pytest.mark.parametrize("line,states", [
    ("s:failed", {"failed"}), ("s:fail", {"failed"}), ("s:needs", {"needs_input"}),
    ("s:needs-input", {"needs_input"}), ("S:Working", {"working"}), ("s:failed,stopped", {"failed", "stopped"}),
    ("s:done", {"completed", "failed", "stopped"}), ("s:", None), ("s:  ", None),
])
def test_filters(line, states):
    parsed = m.parse_line(line, "/src/web")
    assert isinstance(parsed, m.Filter)
    assert parsed.states == (frozenset(states) if states is not None else None)


@pytest.mark.parametrize("line", ["s:s", "s:bogus"])   # "s" is sleeping or stopped
def test_bad_filters(line):
    with pytest.raises(m.LineError, match="unknown state"):
        m.parse_line(line, "/src/web")


def test_dispatch_line():
    dirs = {"/src/web", "/src/api", "/abs/dir"}
    isdir = dirs.__contains__
    assert m.parse_line("  fix the login test ", "/src/web", isdir) == m.Dispatch("fix the login test", "/src/web")
    assert m.parse_line("@api fix it", "/src/web", isdir) == m.Dispatch("fix it", "/src/api")
    assert m.parse_line("@/abs/dir fix it", "/src/web", isdir) == m.Dispatch("fix it", "/abs/dir")
    for short in ("hi", "", "abc", "@api  ab"):
        with pytest.raises(m.LineError, match="^Too short$"):
            m.parse_line(short, "/src/web", isdir)
    with pytest.raises(m.LineError, match="no directory /src/nope"):
        m.parse_line("@nope fix it", "/src/web", isdir)
    with pytest.raises(m.LineError, match="@ needs a directory"):
        m.parse_line("@ fix it", "/src/web", isdir)
    assert m.parse_line("abcd", "/src/web", isdir).prompt == "abcd"


def test_double_tap_removes_only_within_the_window():
    tap = m.DoubleTap()
    assert tap.press("a", 100.0) == "stop"
    assert tap.press("a", 101.9) == "remove"
    assert tap.press("a", 102.0) == "stop"
    assert tap.press("a", 104.5) == "stop"          # too late: stop again, newly armed
    assert tap.press("b", 104.6) == "stop"          # another session re-arms
    assert tap.press("a", 104.7) == "stop"


def test_session_table_applies_events():
    table = m.SessionTable()
    table.replace([sess("a0000001")])
    assert table.apply({"type": "session.created", "session": sess("b0000001", "working")}) == "b0000001"
    assert table.apply({"type": "session.updated", "session": sess("b0000001", "completed")}) == "b0000001"
    assert table.sessions["b0000001"]["state"] == "completed"
    assert table.apply({"type": "session.removed", "id": "a0000001"}) == "a0000001"
    assert table.apply({"type": "session.transcript", "id": "b0000001", "entry": {}}) is None
    assert table.apply({"type": "loop.fired"}) is None
    assert list(table.sessions) == ["b0000001"]


def test_a_resync_list_never_overwrites_a_newer_event():
    table = m.SessionTable()
    events = [{"type": "session.updated", "session": sess("loop0001", "sleeping", age=1)},   # written before ...
              {"type": "session.created", "session": sess("new00001", "working", age=1)},
              {"type": "session.updated", "session": sess("old00001", "working", age=30)},   # older than the list
              {"type": "session.removed", "id": "gone0001"}]
    for event in events:
        table.apply(event)
    table.replace([sess("loop0001", "working", age=5),             # ... the older snapshot's answer
                   sess("old00001", "completed", age=20), sess("gone0001", "completed")], events)
    assert {k: v["state"] for k, v in table.sessions.items()} == {
        "loop0001": "sleeping", "new00001": "working", "old00001": "completed"}
    table.replace([sess("loop0001", "working", age=5)])             # a plain resync takes the list as is
    assert list(table.sessions) == ["loop0001"] and table.sessions["loop0001"]["state"] == "working"


def test_an_answer_never_overwrites_a_newer_event():
    table = m.SessionTable()
    assert table.offer(sess("a0000001", "working", age=10))
    table.apply({"type": "session.updated", "session": sess("a0000001", "completed", age=5)})
    assert not table.offer(sess("a0000001", "working", age=10))       # the stale answer of a call
    assert not table.offer(sess("a0000001", "working", age=5))        # same instant: the event wins
    assert table.sessions["a0000001"]["state"] == "completed"
    assert table.offer(sess("a0000001", "stopped", age=1))


def test_settings_round_trip_and_bad_files(tmp_path):
    path = tmp_path / "state" / m.SETTINGS_FILE
    assert m.load_settings(path) == {"group_by": "state"}
    m.save_settings(path, {"group_by": "dir"})
    assert json.loads(path.read_text()) == {"group_by": "dir"}
    assert m.load_settings(path) == {"group_by": "dir"}
    path.write_text("{not json")
    assert m.load_settings(path) == {"group_by": "state"}
    path.write_text('{"group_by": "colour"}')
    assert m.load_settings(path) == {"group_by": "state"}


def test_short_dir(monkeypatch):
    monkeypatch.setenv("HOME", "/home/me")
    assert m.short_dir("/home/me/src/web", 30) == "~/src/web"
    assert m.short_dir("/tmp/pytest-of-root/pytest-1/test_x0/work/web", 12) == "…/work/web"
    assert m.short_dir("/" + "x" * 40, 10) == "…" + "x" * 9


def test_transcript_lines_match_bgctl_logs():
    entries = [{"n": 0, "kind": "user", "data": {"text": "say hi"}},
               {"n": 1, "kind": "agent", "data": {"type": "assistant", "message": {"content": [
                   {"type": "text", "text": "hi\nthere"}]}}},
               {"n": 2, "kind": "agent", "data": {"type": "stream_event"}}]
    assert m.transcript_lines(entries) == ["› say hi", "hi", "there"]


def test_transcript_lines_survive_entries_of_unknown_shape():
    entries = [{"n": 0, "kind": "user", "data": '{"text": "not an object"}'},
               {"n": 1, "kind": "agent", "data": None},
               {"n": 2, "kind": "future_kind", "data": {"x": 1}}]
    lines = m.transcript_lines(entries)
    assert lines[0].startswith("· user: ") and "not an object" in lines[0]
    assert len(lines) == 3
