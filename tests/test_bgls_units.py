"""bgls's pure parts, without an editor: status, commands, tasks_lint, and the daemon link's resync."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bgcore.schedule import parse_schedule
from bgcore import tasks_file
from bgls import commands, status, tasks_lint
from bgls.daemon_link import DaemonLink, DaemonUnreachable

NOW = datetime(2026, 3, 2, 8, 0, tzinfo=timezone.utc)  # a Monday
UTC = ZoneInfo("UTC")


def session(sid: str, state: str, **extra) -> dict:
    base = {"id": sid, "name": None, "prompt": f"prompt of {sid}", "state": state, "waiting_for": None,
            "cwd": "/w", "updated_at": NOW.isoformat(), "pinned": False, "pending": None}
    return {**base, **extra}


def needing(sid: str, request_id: str = "r1", **extra) -> dict:
    return session(sid, "needs_input", waiting_for="permission", pending={
        "request_id": request_id, "kind": "permission", "tool_name": "Bash", "input": {"command": "npm test"}},
        **extra)


# -- status ---------------------------------------------------------------------------

@pytest.mark.parametrize("state_counts, text", [
    ({}, "idle"),
    ({"needs_input": 2, "working": 3}, "2 need input · 3 working"),
    ({"needs_input": 1}, "1 needs input"),
    ({"working": 1, "sleeping": 2, "completed": 5}, "1 working · 2 sleeping"),
    ({"completed": 4, "failed": 1}, "idle"),
])
def test_summary(state_counts, text):
    assert status.summary(state_counts) == text


def test_status_orders_needs_input_first_and_hides_old_ended_sessions():
    book = status.SessionBook()
    old = (NOW - timedelta(days=2)).isoformat()
    book.reset([session("aaaa0001", "completed"), session("aaaa0002", "working"),
                needing("aaaa0003"), session("aaaa0004", "failed", updated_at=old),
                session("aaaa0005", "stopped", updated_at=old, pinned=True), session("aaaa0006", "sleeping")])
    params = book.status(NOW)
    assert [s["id"] for s in params["sessions"]] == ["aaaa0003", "aaaa0002", "aaaa0006", "aaaa0001", "aaaa0005"]
    assert params["text"] == "1 needs input · 1 working · 1 sleeping"
    assert params["busy"] == 2 and params["counts"]["failed"] == 0
    assert params["sessions"][0]["pending"] == {"request_id": "r1", "kind": "permission", "tool_name": "Bash",
                                                "text": "Bash: npm test"}
    assert "input" not in json.dumps(params["sessions"][0]["pending"])  # tool input stays out of the status


def test_a_routine_sessions_outcome_is_in_the_status():
    book = status.SessionBook()
    book.reset([session("aaaa0001", "completed", origin="routine:pr-review", outcome="failed"),
                session("aaaa0002", "completed")])
    views = {s["id"]: s for s in book.status(NOW)["sessions"]}
    assert views["aaaa0001"]["outcome"] == "failed" and views["aaaa0002"]["outcome"] is None


def test_disconnected_status_shows_nothing_stale():
    book = status.SessionBook()
    book.reset([session("aaaa0001", "working")])
    params = book.status(NOW, connected=False, detail="no daemon")
    assert params["text"] == "bgd not running" and params["sessions"] == [] and params["busy"] == 0


def test_book_applies_events_and_reports_real_changes_only():
    book = status.SessionBook()
    s = session("aaaa0001", "working")
    assert book.apply({"type": "session.created", "session": s})
    assert not book.apply({"type": "session.updated", "session": dict(s)})
    assert book.apply({"type": "session.updated", "session": {**s, "state": "completed"}})
    assert not book.apply({"type": "session.transcript", "id": "aaaa0001", "entry": {}})
    assert book.apply({"type": "session.removed", "id": "aaaa0001"})
    assert not book.apply({"type": "session.removed", "id": "aaaa0001"})


def test_permission_and_question_prompts():
    prompt = status.prompt_for(needing("aaaa0001", name="fix login"))
    assert prompt.actions == ("Approve", "Deny", "Open")
    assert prompt.message == "bgagents: session aaaa0001 (fix login) wants to use Bash: npm test"

    question = session("aaaa0002", "needs_input", waiting_for="question", pending={
        "request_id": "q1", "kind": "question", "tool_name": "AskUserQuestion",
        "input": {"questions": [{"question": "Deploy?", "options": [
            {"label": "yes"}, {"label": "Open"}, {"label": "no"}, {"label": "later"}, {"label": "never"}]}]}})
    prompt = status.prompt_for(question)
    # options become buttons (at most three; one named like an action is left out), then Reply and Open
    assert prompt.actions == ("yes", "no", "later", "Reply", "Open")
    assert prompt.answers == {"yes": "yes", "no": "no", "later": "later"}
    assert "asks: Deploy?" in prompt.message
    assert status.prompt_for(session("aaaa0003", "working")) is None


def test_prompt_changes_ask_each_request_once_and_withdraw_decided_ones():
    wanted = {"a": status.prompt_for(needing("a", "r1")), "b": status.prompt_for(needing("b", "r7"))}
    raise_now, withdraw = status.prompt_changes({}, wanted)
    assert [p.session_id for p in raise_now] == ["a", "b"] and withdraw == []
    asked = {"a": "r1", "b": "r7"}
    assert status.prompt_changes(asked, wanted) == ([], [])  # a resync showing the same requests: nothing
    wanted2 = {"a": status.prompt_for(needing("a", "r2"))}  # a: a new request; b: decided elsewhere
    raise_now, withdraw = status.prompt_changes(asked, wanted2)
    assert [p.request_id for p in raise_now] == ["r2"] and sorted(withdraw) == ["a", "b"]


# -- commands -------------------------------------------------------------------------

def test_command_arguments_positional_or_named():
    assert commands.dispatch(["say hi"], "/w") == ("session.dispatch", {"prompt": "say hi", "cwd": "/w"})
    assert commands.dispatch([{"prompt": "p", "cwd": "/x", "model": "sonnet"}], "/w") == (
        "session.dispatch", {"prompt": "p", "cwd": "/x", "model": "sonnet"})
    assert commands.approve(["abc", True]) == ("session.respond", {"id": "abc", "decision": "allow", "always": True})
    assert commands.deny([{"id": "abc", "message": "no", "request_id": "r"}]) == (
        "session.respond", {"id": "abc", "decision": "deny", "message": "no", "request_id": "r"})
    assert commands.stop(["abc"]) == ("session.stop", {"id": "abc"})
    assert commands.list_sessions([{"all": True, "state": "working"}]) == (
        "session.list", {"all": True, "state": "working"})
    with pytest.raises(commands.CommandArgsError, match="prompt is required"):
        commands.dispatch([], "/w")
    with pytest.raises(commands.CommandArgsError, match="too many"):
        commands.stop(["a", "b"])
    with pytest.raises(commands.CommandArgsError, match="always must be true or false"):
        commands.approve([{"id": "a", "always": "yes"}])


def test_reply_with_a_request_id_answers_exactly_that_request():
    assert commands.reply(["abc", "hi"], None) == ("session.reply", {"id": "abc", "text": "hi"})
    question = {"waiting_for": "question"}
    assert commands.reply(["abc", "main", "r1"], question) == (
        "session.respond", {"id": "abc", "decision": "allow", "answer": "main", "request_id": "r1"})
    assert commands.reply(["abc", "not that", "r1"], {"waiting_for": "permission"}) == (
        "session.respond", {"id": "abc", "decision": "deny", "message": "not that", "request_id": "r1"})


def test_loop_arguments_read_like_bgctl_loop():
    assert commands.loop(["5m check the build"], "/w") == (
        "loop.create", {"interval": "5m", "prompt": "check the build", "cwd": "/w"})
    assert commands.loop(["check the build every 2 hours"], "/w") == (
        "loop.create", {"interval": "every 2 hours", "prompt": "check the build", "cwd": "/w"})
    assert commands.loop([], "/w") == ("loop.create", {"cwd": "/w"})
    assert commands.loop([{"session": "abc", "prompt": "p"}], "/w") == (
        "loop.create", {"prompt": "p", "session": "abc"})
    with pytest.raises(commands.CommandArgsError, match="not both"):
        commands.loop([{"session": "abc", "cwd": "/x"}], "/w")


# -- tasks_lint -----------------------------------------------------------------------

def test_fields_and_presets_agree_with_the_daemon_and_the_schedule_core():
    assert set(tasks_lint.FIELDS) == set(tasks_file.FIELDS)
    assert all(tasks_lint.FIELDS[k].kind is tasks_file.FIELDS[k] for k in tasks_file.FIELDS)
    for preset in tasks_lint.SCHEDULE_PRESETS:
        parse_schedule(preset, now=NOW, tz=UTC)
        text = f'[tasks.a]\nprompt = "p"\ncwd = "/ok"\nschedule = "{preset}"\n'
        assert [p for p in _lint(text) if p.severity == "error"] == [], preset


def _lint(text: str, **kw):
    return tasks_lint.lint(text, now=NOW, tz=UTC, is_dir=lambda p: p.startswith("/ok"), **kw)


def _covered(text: str, problem) -> str:
    line = text.split("\n")[problem.span.line]
    return line[problem.span.start:problem.span.end]


def test_lint_valid_file_has_no_problems():
    text = '[tasks.a]\nprompt = "p"\ncwd = "/ok"\nschedule = "daily at 9am"\nworktree = true\n'
    assert _lint(text) == []


def test_lint_ranges_follow_quoted_and_spaced_keys():
    text = '[ tasks . "nightly" ]\n  "prompt" = "p"\n  cwd    =   "/nope"   # where\n  schedule = \'at 25:00\'\n'
    problems = {p.code: p for p in _lint(text)}
    assert _covered(text, problems["bad-cwd"]) == '"/nope"'
    assert _covered(text, problems["bad-schedule"]) == "25:00"


def test_lint_a_multiline_schedule_points_at_the_whole_value():
    text = '[tasks.a]\nprompt = """\nlong\nprompt\n"""\ncwd = "/ok"\nschedule = """every 5 blargs"""\n'
    (problem,) = _lint(text)
    assert problem.code == "bad-schedule" and _covered(text, problem) == '"""every 5 blargs"""'


def test_lint_syntax_error_points_at_the_line():
    text = '[tasks.a]\nprompt = "p"\ncwd = /ok\n'
    (problem,) = _lint(text)
    assert problem.code == "toml-syntax" and problem.span.line == 2 and "not valid TOML" in problem.message


def test_lint_notes_a_rounded_interval_and_a_missing_prompt_file():
    text = '[tasks.a]\nprompt_file = "prompts/a.md"\ncwd = "/ok"\nschedule = "every 7 minutes"\n'
    problems = {p.code: p for p in _lint(text, is_file=lambda p: False)}
    assert problems["schedule-rounded"].severity == "information"
    assert "every 6 minutes" in problems["schedule-rounded"].message
    assert problems["prompt-file-not-found"].severity == "warning"
    assert _covered(text, problems["prompt-file-not-found"]) == '"prompts/a.md"'


def test_hover_uses_the_task_timezone_and_shows_three_fires():
    text = '[tasks.a]\nschedule = "daily at 9am"\ntimezone = "Asia/Tokyo"\n'
    markdown, span = tasks_lint.hover(text, 1, 14, now=NOW, tz=UTC)
    assert "`0 9 * * *`" in markdown and "Asia/Tokyo" in markdown
    assert markdown.count("+09:00)") == 3
    assert (span.line, span.start, span.end) == (1, 11, 25)
    assert tasks_lint.hover(text, 0, 3, now=NOW, tz=UTC) is None


def test_hover_on_a_sub_minute_interval_shows_the_task_error_not_the_loop_rounding():
    # `bgctl schedule explain 45s` rounds it as a loop would; in tasks.toml it is an error.
    markdown, _ = tasks_lint.hover('[tasks.a]\nschedule = "45s"\n', 1, 13, now=NOW, tz=UTC)
    assert "⚠" in markdown and "more often than once a minute" in markdown and "rounded" not in markdown


def test_completion_inside_an_open_string_replaces_up_to_the_quote():
    text = '[tasks.a]\nschedule = "ev"\n'
    items = tasks_lint.complete(text, 1, 14, now=NOW, tz=UTC)
    item = next(i for i in items if i.label == "every 15 minutes")
    assert item.insert_text == '"every 15 minutes"'
    assert (item.replace.start, item.replace.end) == (11, 15)
    assert tasks_lint.complete('[other]\n\n', 1, 0, now=NOW, tz=UTC) == []  # fields only in a task table


def test_is_tasks_file(monkeypatch, tmp_path):
    monkeypatch.setenv("BGD_CONFIG_DIR", str(tmp_path))
    assert tasks_lint.is_tasks_file(tmp_path / "tasks.toml")
    assert tasks_lint.is_tasks_file("/any/where/tasks.toml")
    assert not tasks_lint.is_tasks_file("/any/where/config.toml")
    assert not tasks_lint.is_tasks_file(None)


# -- the daemon link against a scripted daemon ---------------------------------------

class FakeDaemon:
    """Answers events.subscribe and session.list as scripted; records what it was asked."""

    def __init__(self, path: Path, seq: int, backlog: list[dict], sessions: list[dict], missed: bool = False):
        self.path, self.seq, self.backlog, self.sessions, self.missed = path, seq, backlog, sessions, missed
        self.subscribes: list[dict] = []
        self.server = None
        self.conns: list[asyncio.StreamWriter] = []

    async def start(self):
        self.server = await asyncio.start_unix_server(self.handle, str(self.path))

    async def stop(self):
        self.server.close()
        for w in self.conns:
            w.close()
        await self.server.wait_closed()

    async def handle(self, reader, writer):
        self.conns.append(writer)
        while line := await reader.readline():
            msg = json.loads(line)
            if msg["method"] == "events.subscribe":
                self.subscribes.append(msg.get("params") or {})
                writer.write(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {
                    "seq": self.seq, "missed": self.missed, "backlog": len(self.backlog)}}).encode() + b"\n")
                for event in self.backlog:
                    writer.write(json.dumps({"jsonrpc": "2.0", "method": "event", "params": event}).encode() + b"\n")
            elif msg["method"] == "session.list":
                writer.write(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": self.sessions}).encode() + b"\n")
            await writer.drain()


class Sink:
    def __init__(self):
        self.resets, self.events, self.connections = [], [], []
        self.changed = asyncio.Event()

    def on_reset(self, sessions):
        self.resets.append(sessions)

    def on_events(self, events):
        self.events.extend(events)
        self.changed.set()

    def on_connection(self, connected, detail):
        self.connections.append(connected)
        self.changed.set()

    async def until(self, predicate):
        while not predicate():
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 10)


def _event(seq: int) -> dict:
    return {"seq": seq, "type": "session.updated", "session": session(f"s{seq:07d}", "working")}


def test_link_resumes_with_since_and_drops_what_it_already_saw(tmp_path):
    sock = tmp_path / "d.sock"

    async def scenario():
        daemon = FakeDaemon(sock, seq=10, backlog=[], sessions=[session("aaaa0001", "working")])
        await daemon.start()
        link, sink = DaemonLink(sock, spawn=False), Sink()
        follower = asyncio.ensure_future(link.follow(sink))
        await sink.until(lambda: sink.connections == [True])
        assert daemon.subscribes[0].get("since") is None and sink.resets == [[daemon.sessions[0]]]
        await daemon.stop()
        await sink.until(lambda: sink.connections == [True, False])

        # back, with events 9..12 retained: 9 and 10 were covered by the list, 11 and 12 are new
        daemon2 = FakeDaemon(sock, seq=12, backlog=[_event(9), _event(10), _event(11), _event(12)], sessions=[])
        sock.unlink()
        await daemon2.start()
        await sink.until(lambda: len(sink.events) == 2)
        assert daemon2.subscribes[0]["since"] == 10
        assert [e["seq"] for e in sink.events] == [11, 12] and len(sink.resets) == 1
        follower.cancel()
        await daemon2.stop()
    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_link_reloads_the_sessions_when_events_were_missed(tmp_path):
    sock = tmp_path / "d.sock"

    async def scenario():
        link, sink = DaemonLink(sock, spawn=False), Sink()
        link.last_seq = 5
        daemon = FakeDaemon(sock, seq=900, backlog=[_event(880)], sessions=[session("bbbb0001", "completed")],
                            missed=True)
        await daemon.start()
        follower = asyncio.ensure_future(link.follow(sink))
        await sink.until(lambda: sink.connections == [True])
        assert sink.resets == [daemon.sessions] and link.last_seq == 900
        assert sink.events == []  # the backlog is older than the list
        follower.cancel()
        await daemon.stop()
    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_link_call_without_a_daemon_and_without_spawning(tmp_path):
    async def scenario():
        with pytest.raises(DaemonUnreachable, match="no daemon answers"):
            await DaemonLink(tmp_path / "none.sock", spawn=False).call("daemon.status")
    asyncio.run(scenario())
