"""`bgctl agents` driven by textual's Pilot against a real daemon and the fake agent.

pytest runs async tests on trio here (trio_mode), and textual needs asyncio,
so each test is a plain function that runs its body with `asyncio.run`.
Waiting is on conditions (the app's own state, polled between Pilot pauses,
with a deadline), never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest

from bgctl import agents_model as model
from bgctl.agents_view import UNREACHABLE, AgentsApp, AttachScreen, HelpScreen, ListScreen, PeekScreen, RenameScreen

PERMISSION = 'tool Bash {"command":"ls"}'


# -- helpers ---------------------------------------------------------------------

def make_app(bgd, cwd=None, **kw) -> AgentsApp:
    return AgentsApp(bgd.socket, str(cwd or bgd.work), bgd.state_dir / model.SETTINGS_FILE, **kw)


def drive(bgd, body, *, cwd=None, size=(80, 24), app=None, **kw) -> AgentsApp:
    """Run `body(app, pilot)` inside a running app, after the first sync."""
    app = app or make_app(bgd, cwd, **kw)

    async def main():
        async with app.run_test(size=size) as pilot:
            await until(pilot, lambda: app.synced >= 1 and app.list_screen.is_mounted, what="first sync")
            await pilot.pause()
            await body(app, pilot)

    asyncio.run(main())
    return app


async def until(pilot, predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except (KeyError, IndexError, AttributeError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)


async def write(pilot, text: str, *then: str) -> None:
    """Put `text` in the focused line as typing would (one key at a time is slow), then press keys."""
    pilot.app.focused.insert_text_at_cursor(text)
    await pilot.press(*then)


def state_of(app, sid):
    return app.table.sessions[sid]["state"]


def shown(app):
    return [r.session_id for r in app.rows if r.kind == "session"]


def headers(app):
    return [r.title for r in app.rows if r.kind == "header"]


def row_text(app, sid):
    for row in app.rows:
        if row.session_id == sid:
            return model.row_text(row.session, app.now(), 100)
    raise KeyError(sid)


async def select(app, pilot, sid):
    await until(pilot, lambda: ("s:" + sid) in [r.key for r in app.rows], what=f"row of {sid}")
    app.select_session(sid)
    await pilot.pause()
    assert app.selected_key == "s:" + sid


def ready(bgd, prompt, *states, **params):
    session = bgd.dispatch(prompt, **params)
    if states:
        session = bgd.wait_state(session["id"], *states)
    return session


def status(app):
    return app.list_screen.status_text


# -- the list ---------------------------------------------------------------------

def test_groups_rows_and_live_updates(running_bgd):
    bgd = running_bgd
    done = ready(bgd, "say hi", "completed")
    failed = ready(bgd, "fail boom", "failed")
    waiting = ready(bgd, PERMISSION, "needs_input")
    working = ready(bgd, "sleep 30", "working")

    async def body(app, pilot):
        await until(pilot, lambda: len(shown(app)) == 4, what="four rows")
        assert headers(app) == ["Needs input (1)", "Working (1)", "Completed (2)"]
        assert shown(app) == [waiting["id"], working["id"], failed["id"], done["id"]]
        assert app.selected_key == "s:" + waiting["id"]          # the first row is selected
        text = row_text(app, done["id"])
        assert text.startswith("✓ say hi") and "/work" in text and " hi " in text and "$0.01" in text
        assert "wants Bash" in row_text(app, waiting["id"])
        assert row_text(app, failed["id"]).startswith("✗")

        # Live, from the event stream: a session started elsewhere appears and finishes.
        later = bgd.dispatch("say later")
        await until(pilot, lambda: state_of(app, later["id"]) == "completed", what="live completion")
        assert later["id"] in shown(app)
        assert "later" in row_text(app, later["id"])
        bgd.rpc("session.rename", {"id": later["id"], "name": "renamed-elsewhere"})
        await until(pilot, lambda: "renamed-elsewhere" in row_text(app, later["id"]), what="live rename")
        bgd.rpc("session.remove", {"id": later["id"]})
        await until(pilot, lambda: later["id"] not in shown(app), what="live removal")

    drive(bgd, body)


def test_up_and_down_move_and_skip_headers(running_bgd):
    bgd = running_bgd
    a = ready(bgd, PERMISSION, "needs_input")
    b = ready(bgd, "sleep 30", "working")
    c = ready(bgd, "say hi", "completed")

    async def body(app, pilot):
        await until(pilot, lambda: len(shown(app)) == 3)
        assert app.selected_key == "s:" + a["id"]
        await pilot.press("down")
        assert app.selected_key == "s:" + b["id"]
        await pilot.press("down")
        assert app.selected_key == "s:" + c["id"]
        await pilot.press("down")                                 # the end: stays
        assert app.selected_key == "s:" + c["id"]
        await pilot.press("up", "up", "up")
        assert app.selected_key == "s:" + a["id"]
        assert app.selected_row().kind == "session"

    drive(bgd, body)


def test_old_completed_rows_fold_and_unfold(running_bgd):
    bgd = running_bgd
    ids = [bgd.dispatch(f"say number {i}")["id"] for i in range(7)]
    failed = bgd.dispatch("fail broken")["id"]
    for sid in ids + [failed]:
        bgd.wait_state(sid, "completed", "failed")

    async def body(app, pilot):
        await until(pilot, lambda: any(r.kind == "fold" for r in app.rows), what="fold row")
        assert failed in shown(app)
        fold = [r for r in app.rows if r.kind == "fold"][0]
        assert fold.title == "… 2 more"
        assert len(shown(app)) == 6
        # Walk down to the fold row with the keys and open it.
        for _ in range(10):
            if app.selected_row().kind == "fold":
                break
            await pilot.press("down")
        await pilot.press("enter")
        await until(pilot, lambda: len(shown(app)) == 8, what="unfolded")
        assert [r for r in app.rows if r.kind == "fold"][0].title == "… show fewer"
        await pilot.press("space")                                   # space folds it again
        await until(pilot, lambda: len(shown(app)) == 6, what="folded again")

    drive(bgd, body)


# -- peek ------------------------------------------------------------------------------

@pytest.mark.parametrize("key,label,expect", [
    ("1", "approve", "allowed Bash"),
    ("2", "approve always", "allowed Bash"),
    ("3", "deny", "denied Bash"),
])
def test_peek_decides_a_permission_with_number_keys(running_bgd, key, label, expect):
    bgd = running_bgd
    s = ready(bgd, PERMISSION, "needs_input")

    async def body(app, pilot):
        await select(app, pilot, s["id"])
        await pilot.press("space")
        await until(pilot, lambda: isinstance(app.screen, PeekScreen), what="peek")
        peek = app.screen
        await until(pilot, lambda: any("Bash" in line for line in peek.lines), what="peek output")
        assert peek.choice_text == "1 approve   2 approve always   3 deny"
        await pilot.press(key)
        await until(pilot, lambda: state_of(app, s["id"]) == "completed", what="decided and done")
        await until(pilot, lambda: state_of(app, s["id"]) == "completed", what="decided and done")
        await until(pilot, lambda: isinstance(app.screen, ListScreen), what="peek closed")
        assert status(app).startswith(label)
        assert expect in app.table.sessions[s["id"]]["last_message"]

    drive(bgd, body)
    controls = [e["data"] for e in bgd.rpc("session.transcript", {"id": s["id"]})["entries"] if e["kind"] == "control"]
    assert controls[0]["decision"] == ("deny" if key == "3" else "allow")
    assert controls[0]["always"] is (key == "2")


def test_peek_answers_a_question_with_its_options(running_bgd):
    bgd = running_bgd
    s = ready(bgd, "ask Deploy?", "needs_input")

    async def body(app, pilot):
        await select(app, pilot, s["id"])
        await pilot.press("space")
        await until(pilot, lambda: isinstance(app.screen, PeekScreen))
        assert app.screen.choice_text == "1 yes   2 no"
        await pilot.press("2")
        await until(pilot, lambda: app.table.sessions[s["id"]]["last_message"] == "answer: no", what="answered")

    drive(bgd, body)


def test_peek_typed_answer_latest_output_and_closing(running_bgd):
    bgd = running_bgd
    q = ready(bgd, "ask Deploy?", "needs_input")
    done = ready(bgd, "say the latest words", "completed")

    async def body(app, pilot):
        await select(app, pilot, done["id"])
        await pilot.press("space")
        await until(pilot, lambda: isinstance(app.screen, PeekScreen))
        await until(pilot, lambda: "the latest words" in app.screen.lines, what="latest output")
        await pilot.press("space")                                     # space closes
        await until(pilot, lambda: isinstance(app.screen, ListScreen))

        await select(app, pilot, q["id"])
        await pilot.press("space")
        await until(pilot, lambda: isinstance(app.screen, PeekScreen))
        await pilot.press("tab", *"1 maybe later", "enter")             # Tab: a typed answer may start with a digit
        await until(pilot, lambda: app.table.sessions[q["id"]]["last_message"] == "answer: 1 maybe later")
        await until(pilot, lambda: isinstance(app.screen, ListScreen))

        await pilot.press("space")
        await until(pilot, lambda: isinstance(app.screen, PeekScreen))
        await pilot.press("escape")                                     # Esc closes too
        await until(pilot, lambda: isinstance(app.screen, ListScreen))

    drive(bgd, body)


def test_peek_follows_the_selection_and_enter_attaches(running_bgd):
    bgd = running_bgd
    a = ready(bgd, "say first", "completed")
    b = ready(bgd, "say second", "completed")

    async def body(app, pilot):
        await select(app, pilot, b["id"])                               # newest first: b above a
        await pilot.press("space")
        await until(pilot, lambda: isinstance(app.screen, PeekScreen))
        await pilot.press("down")
        await until(pilot, lambda: app.screen.session_id == a["id"] and "first" in app.screen.lines)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, AttachScreen), what="attached from peek")
        assert app.screen.session_id == a["id"]

    drive(bgd, body)


# -- attach ------------------------------------------------------------------------------

def test_attach_shows_the_live_transcript_and_replies(running_bgd):
    bgd = running_bgd
    s = ready(bgd, "say hi", "completed")

    async def body(app, pilot):
        await select(app, pilot, s["id"])
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, AttachScreen), what="attach")
        attach = app.screen
        await until(pilot, lambda: "hi" in attach.lines, what="transcript")
        await write(pilot, "say again please", "enter")
        await until(pilot, lambda: "again please" in attach.lines, what="the reply's answer, live")
        assert "› say again please" in attach.lines
        assert attach.lines.count("hi") == 1                           # nothing shown twice

        await pilot.press(*"ab", "left")                               # ← with text moves the cursor
        assert isinstance(app.screen, AttachScreen)
        await pilot.press("end", "ctrl+u", "left")                     # ← on an empty box goes back
        await until(pilot, lambda: isinstance(app.screen, ListScreen), what="back with ←")

        await pilot.press("right")                                     # → attaches
        await until(pilot, lambda: isinstance(app.screen, AttachScreen))
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, ListScreen), what="back with Esc")

    drive(bgd, body)


def test_attach_decides_with_digits_and_stops(running_bgd):
    bgd = running_bgd
    s = ready(bgd, PERMISSION + "; sleep 30", "needs_input")

    async def body(app, pilot):
        await select(app, pilot, s["id"])
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, AttachScreen))
        await pilot.press("1")
        await until(pilot, lambda: any("allowed Bash" in line for line in app.screen.lines), what="approved")
        await until(pilot, lambda: state_of(app, s["id"]) == "working")
        await pilot.press("ctrl+x")
        await until(pilot, lambda: state_of(app, s["id"]) == "stopped", what="stopped from attach")

    drive(bgd, body)


# -- pin, rename, stop/remove, grouping, help, filters ------------------------------------

def test_ctrl_t_pins_and_unpins(running_bgd):
    bgd = running_bgd
    s = ready(bgd, "say hi", "completed")
    ready(bgd, "sleep 30", "working")

    async def body(app, pilot):
        await select(app, pilot, s["id"])
        await pilot.press("ctrl+t")
        await until(pilot, lambda: headers(app)[0] == "Pinned (1)", what="pinned group")
        assert shown(app)[0] == s["id"] and app.selected_key == "s:" + s["id"]
        assert bgd.rpc("session.get", {"id": s["id"]})["pinned"] is True
        await pilot.press("ctrl+t")
        await until(pilot, lambda: "Pinned (1)" not in headers(app), what="unpinned")
        assert bgd.rpc("session.get", {"id": s["id"]})["pinned"] is False

    drive(bgd, body)


def test_ctrl_r_renames_and_esc_cancels(running_bgd):
    bgd = running_bgd
    s = ready(bgd, "say hi", "completed")

    async def body(app, pilot):
        await select(app, pilot, s["id"])
        await pilot.press("ctrl+r")
        await until(pilot, lambda: isinstance(app.screen, RenameScreen))
        await write(pilot, "login-fix", "enter")
        await until(pilot, lambda: app.table.sessions[s["id"]]["name"] == "login-fix", what="renamed")
        assert row_text(app, s["id"]).startswith("✓ login-fix")
        await pilot.press("ctrl+r")
        await until(pilot, lambda: isinstance(app.screen, RenameScreen))
        assert app.screen.query_one("#rename-input").value == "login-fix"
        await pilot.press(*"zzz", "escape")
        await until(pilot, lambda: isinstance(app.screen, ListScreen))
        await pilot.pause(0.1)
        assert app.table.sessions[s["id"]]["name"] == "login-fix"

    drive(bgd, body)
    assert bgd.rpc("session.get", {"id": s["id"]})["name"] == "login-fix"


def test_ctrl_x_stops_and_again_within_two_seconds_removes(running_bgd):
    bgd = running_bgd
    s = ready(bgd, "sleep 30", "working")

    async def body(app, pilot):
        await select(app, pilot, s["id"])
        await pilot.press("ctrl+x")
        await until(pilot, lambda: state_of(app, s["id"]) == "stopped", what="stopped")
        assert "again within 2 s removes" in status(app)
        await pilot.press("ctrl+x")
        await until(pilot, lambda: s["id"] not in app.table.sessions, what="removed")

    drive(bgd, body)
    assert [x["id"] for x in bgd.rpc("session.list", {"all": True})] == []


def test_ctrl_x_twice_too_slowly_does_not_remove(running_bgd):
    bgd = running_bgd
    s = ready(bgd, "sleep 30", "working")
    clock = [1000.0]

    async def body(app, pilot):
        await select(app, pilot, s["id"])
        await pilot.press("ctrl+x")
        await until(pilot, lambda: state_of(app, s["id"]) == "stopped")
        clock[0] += 2.5
        await pilot.press("ctrl+x")
        await until(pilot, lambda: "Ctrl+X again within 2 s removes it" in status(app))
        await pilot.pause(0.2)
        assert s["id"] in app.table.sessions

    drive(bgd, body, clock=lambda: clock[0])
    assert bgd.rpc("session.get", {"id": s["id"]})["state"] == "stopped"


def test_ctrl_s_groups_by_directory_and_is_remembered(running_bgd):
    bgd = running_bgd
    (bgd.work / "web").mkdir()
    (bgd.work / "api").mkdir()
    ready(bgd, "say web", "completed", cwd=str(bgd.work / "web"))
    ready(bgd, "say api", "completed", cwd=str(bgd.work / "api"))
    settings = bgd.state_dir / model.SETTINGS_FILE

    async def body(app, pilot):
        await until(pilot, lambda: len(shown(app)) == 2)
        assert headers(app) == ["Completed (2)"]
        await pilot.press("ctrl+s")
        await until(pilot, lambda: len(headers(app)) == 2)
        assert [h.split("/")[-1] for h in headers(app)] == ["api (1)", "web (1)"]
        assert json.loads(settings.read_text())["group_by"] == "dir"

    drive(bgd, body)

    async def again(app, pilot):
        await until(pilot, lambda: len(shown(app)) == 2)
        assert app.group_by == "dir" and len(headers(app)) == 2            # remembered
        await pilot.press("ctrl+s")
        await until(pilot, lambda: headers(app) == ["Completed (2)"])

    drive(bgd, again)
    assert json.loads(settings.read_text())["group_by"] == "state"


def test_question_mark_opens_help_unless_typing(running_bgd):
    async def body(app, pilot):
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, ListScreen))
        await pilot.press(*"why?")
        assert app.list_screen.line.value == "why?"
        assert isinstance(app.screen, ListScreen)

    drive(running_bgd, body)


def test_state_filters_typed_in_the_dispatch_line(running_bgd):
    bgd = running_bgd
    failed = ready(bgd, "fail boom", "failed")
    ready(bgd, "say hi", "completed")
    waiting = ready(bgd, PERMISSION, "needs_input")

    async def body(app, pilot):
        await until(pilot, lambda: len(shown(app)) == 3)
        await write(pilot, "s:failed", "enter")
        await until(pilot, lambda: shown(app) == [failed["id"]], what="filtered")
        assert app.list_screen.line.value == "" and "filter s:failed" in status(app)
        await write(pilot, "s:needs", "enter")
        await until(pilot, lambda: shown(app) == [waiting["id"]])
        await write(pilot, "s:bogus", "enter")
        await until(pilot, lambda: status(app).startswith("unknown state 'bogus'"))
        assert shown(app) == [waiting["id"]] and app.list_screen.line.value == "s:bogus"
        await pilot.press("end", "ctrl+u", *"s:", "enter")             # an empty filter clears
        await until(pilot, lambda: len(shown(app)) == 3, what="cleared")
        await write(pilot, "s:fail", "enter")
        await until(pilot, lambda: len(shown(app)) == 1)
        await pilot.press("escape")                                    # Esc on an empty line clears it too
        await until(pilot, lambda: len(shown(app)) == 3)

    drive(bgd, body)


# -- dispatching ------------------------------------------------------------------------------

def test_dispatch_line_starts_sessions_here_or_beside(running_bgd):
    bgd = running_bgd
    web, api = bgd.work / "web", bgd.work / "api"
    web.mkdir()
    api.mkdir()

    async def body(app, pilot):
        await pilot.press(*"hi", "enter")
        await until(pilot, lambda: status(app) == "Too short")
        assert app.list_screen.line.value == "hi" and app.table.sessions == {}
        await pilot.press("ctrl+u")
        await write(pilot, "say hello there", "enter")
        await until(pilot, lambda: len(app.table.sessions) == 1, what="dispatched")
        s = next(iter(app.table.sessions.values()))
        assert s["cwd"] == str(web) and s["prompt"] == "say hello there"
        assert status(app).startswith(f"backgrounded · {s['id']}")
        assert app.list_screen.line.value == "" and app.selected_key == "s:" + s["id"]

        await write(pilot, "@api say from the side", "enter")
        await until(pilot, lambda: len(app.table.sessions) == 2)
        beside = [x for x in app.table.sessions.values() if x["id"] != s["id"]][0]
        assert beside["cwd"] == str(api) and beside["prompt"] == "say from the side"

        await write(pilot, "@nope say hi", "enter")
        await until(pilot, lambda: status(app).startswith("no directory"))
        await pilot.pause(0.1)
        assert len(app.table.sessions) == 2

    drive(bgd, body, cwd=web)


@pytest.mark.parametrize("key", ["shift+enter", "ctrl+j", "alt+enter"])
def test_dispatch_and_attach(running_bgd, key):
    async def body(app, pilot):
        await write(pilot, "say attached", key)
        await until(pilot, lambda: isinstance(app.screen, AttachScreen), what="attached")
        await until(pilot, lambda: "attached" in app.screen.lines, what="live output")
        assert app.table.sessions[app.screen.session_id]["prompt"] == "say attached"

    drive(running_bgd, body)


# -- quitting, the terminal, the daemon going away ----------------------------------------------

@pytest.mark.parametrize("keys", [("q",), ("ctrl+c",), ("ctrl+q",)])
def test_quit_keys(running_bgd, keys):
    async def body(app, pilot):
        await pilot.press(*keys)
        await until(pilot, lambda: app._exit, what="exit")

    app = drive(running_bgd, body)
    assert app.return_code == 0


def test_q_is_text_once_typing(running_bgd):
    async def body(app, pilot):
        await pilot.press(*"say q")
        assert app.list_screen.line.value == "say q"
        await pilot.press("ctrl+u", "tab", *"quick check")          # Tab: a prompt may start with q
        assert app.list_screen.line.value == "quick check" and not app._exit
        await pilot.press("escape", "escape")
        assert app.list_screen.line.value == "" and not app.list_screen.line.typing

    drive(running_bgd, body)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_survives_a_daemon_restart(running_bgd, sig):
    bgd = running_bgd
    s = ready(bgd, "sleep 10", "working")     # short: after a kill -9 the agent outlives its daemon a while

    async def body(app, pilot):
        await until(pilot, lambda: s["id"] in shown(app))
        banner = app.list_screen.query_one("#banner")
        assert not banner.display
        bgd.stop(sig)
        await until(pilot, lambda: not app.connected and banner.display, what="banner")
        assert str(banner.content).startswith(UNREACHABLE)
        await write(pilot, "say while down", "enter")
        await until(pilot, lambda: status(app) == UNREACHABLE, what="refused while down")
        synced = app.synced
        bgd.start()
        await until(pilot, lambda: app.connected and app.synced > synced, timeout=15, what="reconnected")
        assert not banner.display
        await until(pilot, lambda: state_of(app, s["id"]) == "failed", what="resynced state")
        later = bgd.dispatch("say after restart")                     # the stream is live again
        await until(pilot, lambda: later["id"] in app.table.sessions and state_of(app, later["id"]) == "completed")

    drive(bgd, body)


def test_a_real_loop_session_sleeps_under_working_with_its_countdown(running_bgd):
    bgd = running_bgd
    made = bgd.ctl("--json", "loop", "5m", "say tick")
    assert made.returncode == 0, made.stderr

    async def body(app, pilot):
        await until(pilot, lambda: any(s["state"] == "sleeping" for s in app.table.values()), what="sleeping loop")
        loop = next(s for s in app.table.values() if s["state"] == "sleeping")
        assert headers(app) == ["Working (1)"]
        assert loop["loop_runs"] >= 1 and loop["next_wake_at"]
        assert f"↻{loop['loop_runs']} in " in row_text(app, loop["id"]) or "↻1 due" in row_text(app, loop["id"])

    drive(bgd, body)


def test_a_loop_session_shows_its_runs_and_a_live_countdown(running_bgd):
    # A sleeping loop session as the daemon sends it, with the view's clock in the test's hands.
    now = [datetime(2026, 11, 24, 20, 0, 0, tzinfo=timezone.utc)]
    wake = (now[0] + timedelta(seconds=125)).isoformat()
    loop = {"id": "loop0001", "name": "ci-watch", "cwd": "/src/web", "agent": "claude", "state": "sleeping",
            "waiting_for": None, "error": None, "created_at": now[0].isoformat(), "updated_at": now[0].isoformat(),
            "cost_usd": 0.5, "turns": 3, "last_message": "CI still running", "pinned": False, "origin": "loop",
            "next_wake_at": wake, "prompt": "check CI", "loop_runs": 3}

    async def body(app, pilot):
        app._on_event({"seq": 10**9, "type": "session.updated", "session": loop})
        await until(pilot, lambda: "loop0001" in shown(app))
        assert headers(app) == ["Working (1)"]
        assert "↻3 in 2m05s" in row_text(app, "loop0001")
        now[0] += timedelta(seconds=65)
        await until(pilot, lambda: "↻3 in 1m00s" in str(app.list_screen.query_one("#sessions").get_option_at_index(1).prompt),
                    what="the countdown ticking on screen", timeout=5)

    drive(running_bgd, body, now=lambda: now[0])


def test_fits_80x24_and_larger_and_honours_no_color(running_bgd, monkeypatch):
    bgd = running_bgd
    ready(bgd, "say " + "a long line of output " * 10, "completed")
    ready(bgd, PERMISSION, "needs_input")
    monkeypatch.delenv("NO_COLOR", raising=False)

    for size in ((80, 24), (132, 43)):
        async def body(app, pilot, size=size):
            await until(pilot, lambda: len(shown(app)) == 2)
            options = app.list_screen.query_one("#sessions")
            width = options.scrollable_content_region.width
            assert width >= size[0] - 2
            for i in range(options.option_count):
                assert options.get_option_at_index(i).prompt.cell_len <= width      # one line per row
            assert app.list_screen.query_one("#status").region.height == 1
            assert app.list_screen.query_one("#dispatch").region.y == size[1] - 1
            assert not options.get_component_rich_style("option-list--option-highlighted").reverse

        drive(bgd, body, size=size)

    monkeypatch.setenv("NO_COLOR", "1")

    async def mono(app, pilot):
        assert app.no_color
        await until(pilot, lambda: len(shown(app)) == 2)
        options = app.list_screen.query_one("#sessions")
        assert options.get_component_rich_style("option-list--option-highlighted").reverse   # seen without colour
        svg = app.export_screenshot()
        assert "✓" in svg or "&#10003;" in svg

    drive(bgd, mono)


def test_textual_is_imported_only_by_the_agents_command():
    code = ("import sys; from bgctl.main import build_parser; build_parser().parse_args(['ls']);"
            "print('textual' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    trace = subprocess.run([sys.executable, "-X", "importtime", "-m", "bgctl", "--help"],
                           capture_output=True, text=True)
    assert "textual" not in trace.stderr


def test_agents_needs_a_terminal(running_bgd):
    result = running_bgd.ctl("agents")
    assert result.returncode == 2
    assert result.stderr.startswith("bgctl: bgctl agents needs a terminal")


def test_agents_without_a_daemon_is_exit_3(bgd):
    result = bgd.ctl("--no-spawn", "agents")
    assert result.returncode in (2, 3)   # no tty under pytest: the usage check may come first
