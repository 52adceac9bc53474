"""bgls end to end: a pytest-lsp client drives the real bgls against a real bgd and the fake agent.

Each test is a plain function running one asyncio scenario (see lsp_helpers: pytest's trio mode
owns `async def` tests).  Waits are on notifications, never on fixed sleeps.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lsprotocol import types as lsp
from pygls.exceptions import JsonRpcException
from pytest_lsp import client_capabilities

from bgcore.jsonrpc import RpcError
from lsp_helpers import editor_session, plain, run

COMMANDS = ["bgagents.dispatch", "bgagents.list", "bgagents.reply", "bgagents.approve", "bgagents.deny",
            "bgagents.stop", "bgagents.openTranscript", "bgagents.loop"]
TOOL = 'tool Bash {"command":"ls"}'


def transcript_text(bgd, session_id: str) -> str:
    return json.dumps(bgd.rpc("session.transcript", {"id": session_id})["entries"])


# -- status -------------------------------------------------------------------------

def test_status_notification_and_progress_follow_session_states(running_bgd):
    bgd = running_bgd

    async def scenario():
        async with editor_session(bgd) as ed:
            first = await ed.wait_status(lambda s: s["connected"], "the first status")
            assert first["text"] == "idle" and first["busy"] == 0 and first["sessions"] == []
            assert set(first["counts"]) == {"needs_input", "working", "sleeping", "completed", "failed", "stopped"}

            slow = bgd.dispatch("sleep 30")
            asking = bgd.dispatch(TOOL)
            status = await ed.wait_status(lambda s: s["text"] == "1 needs input · 1 working", "two busy sessions")
            assert status["counts"]["working"] == 1 and status["counts"]["needs_input"] == 1
            assert [s["id"] for s in status["sessions"]] == [asking["id"], slow["id"]]  # needs input first
            view = status["sessions"][0]
            assert view["waiting_for"] == "permission" and view["pending"]["text"] == "Bash: ls"

            # $/progress on a token the server created, with the same summary
            token = await ed.wait_for(lambda: next(iter(ed.client.progress_reports), None), what="a progress token")
            assert token.startswith("bgagents-")
            reports = await ed.wait_for(lambda: any(getattr(r, "message", None) == "1 needs input · 1 working"
                                                    for r in ed.client.progress_reports[token]),
                                        what="a progress report with the summary")
            assert reports
            assert ed.client.progress_reports[token][0].kind == "begin"

            bgd.rpc("session.stop", {"id": slow["id"]})
            bgd.rpc("session.respond", {"id": asking["id"], "decision": "allow"})
            done = await ed.wait_status(lambda s: s["busy"] == 0 and s["counts"]["completed"] == 1, "all idle")
            assert done["counts"]["stopped"] == 1 and done["text"] == "idle"
            await ed.wait_for(lambda: ed.client.progress_reports[token][-1].kind == "end", what="progress end")
    run(scenario())


def test_state_changes_are_pushed_to_the_editor(running_bgd):
    # Pushed as they happen (the editor asks nothing); how soon is measured by bench/bench_editor.py
    # (target: within 100 ms), since tests do not assert on wall-clock time.
    bgd = running_bgd

    async def scenario():
        async with editor_session(bgd) as ed:
            await ed.wait_status(lambda s: s["connected"])
            session = bgd.dispatch(TOOL)
            for state, act in (("needs_input", None),
                               ("completed", lambda: bgd.rpc("session.respond", {"id": session["id"],
                                                                                 "decision": "allow"}))):
                if act:
                    act()
                view = await ed.wait_session(session["id"], lambda s: s["state"] == state, state)
                assert view["state"] == state
    run(scenario())


def test_status_request_returns_the_last_status(running_bgd):
    bgd = running_bgd

    async def scenario():
        async with editor_session(bgd) as ed:
            await ed.wait_status(lambda s: s["connected"])
            answer = plain(await ed.client.protocol.send_request_async("bgagents/status", None))
            assert answer["connected"] is True and answer["text"] == "idle"
    run(scenario())


# -- needs input ----------------------------------------------------------------------

def test_permission_prompt_approve_round_trip(running_bgd):
    bgd = running_bgd

    async def scenario():
        async with editor_session(bgd) as ed:
            session = bgd.dispatch(TOOL, name="list files")
            prompt = await ed.wait_prompt(session["id"])
            params = prompt["params"]
            assert [a.title for a in params.actions] == ["Approve", "Deny", "Open"]
            assert "list files" in params.message and "Bash: ls" in params.message
            prompt["answer"].set_result("Approve")
            await ed.wait_session(session["id"], lambda s: s["state"] == "completed")
            assert "allowed Bash" in transcript_text(bgd, session["id"])
            assert len([p for p in ed.prompts if session["id"] in p["params"].message]) == 1
    run(scenario())


def test_permission_prompt_deny(running_bgd):
    bgd = running_bgd

    async def scenario():
        async with editor_session(bgd) as ed:
            session = bgd.dispatch(TOOL)
            prompt = await ed.wait_prompt(session["id"])
            prompt["answer"].set_result("Deny")
            await ed.wait_session(session["id"], lambda s: s["state"] == "completed")
            assert "denied Bash" in transcript_text(bgd, session["id"])
    run(scenario())


def test_question_prompt_offers_its_options_reply_and_open(running_bgd):
    bgd = running_bgd

    async def scenario():
        async with editor_session(bgd) as ed:
            session = bgd.dispatch("ask Deploy now?")
            prompt = await ed.wait_prompt(session["id"])
            assert [a.title for a in prompt["params"].actions] == ["yes", "no", "Reply", "Open"]
            assert "asks: Deploy now?" in prompt["params"].message
            prompt["answer"].set_result("yes")
            await ed.wait_session(session["id"], lambda s: s["state"] == "completed")
            assert "answer: yes" in transcript_text(bgd, session["id"])
    run(scenario())


def test_reply_action_asks_the_plugin_for_text_then_answers_that_request(running_bgd):
    bgd = running_bgd

    async def scenario():
        async with editor_session(bgd) as ed:
            session = bgd.dispatch("ask Which branch?")
            prompt = await ed.wait_prompt(session["id"])
            prompt["answer"].set_result("Reply")
            request = await ed.wait_for(lambda: ed.reply_requests and ed.reply_requests[-1], what="replyRequested")
            assert request["id"] == session["id"] and request["question"] == "Which branch?"
            assert request["command"] == "bgagents.reply"
            await ed.command("bgagents.reply", session["id"], "release-2", request["request_id"])
            await ed.wait_session(session["id"], lambda s: s["state"] == "completed")
            assert "answer: release-2" in transcript_text(bgd, session["id"])
    run(scenario())


def test_decision_taken_elsewhere_withdraws_the_prompt_and_a_stale_choice_gets_a_clear_message(running_bgd):
    bgd = running_bgd

    async def scenario():
        async with editor_session(bgd) as ed:
            session = bgd.dispatch(TOOL)
            prompt = await ed.wait_prompt(session["id"])
            approved = bgd.ctl("approve", session["id"])  # decided in a terminal
            assert approved.returncode == 0, approved.stderr
            await ed.wait_for(lambda: prompt["msg_id"] in ed.cancelled, what="the prompt withdrawn")
            await ed.wait_session(session["id"], lambda s: s["state"] == "completed")
            # This client could not take the prompt back; the user clicks it anyway.
            prompt["answer"].set_result("Deny")
            message = await ed.wait_message("was not applied")
            assert message.type == lsp.MessageType.Info
            assert session["id"] in message.message and "Traceback" not in message.message
            assert "allowed Bash" in transcript_text(bgd, session["id"])  # the terminal's decision stands
    run(scenario())


def test_open_action_shows_the_transcript_then_asks_again(running_bgd):
    bgd = running_bgd

    async def scenario():
        async with editor_session(bgd) as ed:
            session = bgd.dispatch("say looking around; " + TOOL)
            prompt = await ed.wait_prompt(session["id"])
            prompt["answer"].set_result("Open")
            shown = await ed.wait_for(lambda: ed.client.shown_documents and ed.client.shown_documents[-1],
                                      what="window/showDocument")
            path = Path(shown.uri.removeprefix("file://"))
            text = path.read_text()
            assert session["id"] in text and "looking around" in text
            again = await ed.wait_prompt(session["id"], n=2)
            again["answer"].set_result("Approve")
            await ed.wait_session(session["id"], lambda s: s["state"] == "completed")
    run(scenario())


# -- commands ---------------------------------------------------------------------------

def test_every_command_is_advertised(running_bgd):
    async def scenario():
        async with editor_session(running_bgd) as ed:
            provider = ed.initialize_result.capabilities.execute_command_provider
            assert sorted(provider.commands) == sorted(COMMANDS)
    run(scenario())


def test_commands_dispatch_list_approve_deny_reply_stop_open(running_bgd):
    bgd = running_bgd

    async def scenario():
        async with editor_session(bgd) as ed:
            # dispatch: positional, in the editor's workspace folder by default
            s1 = await ed.command("bgagents.dispatch", TOOL)
            assert s1["cwd"] == str(bgd.work) and s1["state"] in ("working", "needs_input")
            # dispatch: named arguments
            other = bgd.base / "other"
            other.mkdir()
            s2 = await ed.command("bgagents.dispatch", {"prompt": TOOL, "cwd": str(other), "name": "second"})
            assert s2["cwd"] == str(other) and s2["name"] == "second"

            listed = await ed.command("bgagents.list")
            assert {s["id"] for s in listed} == {s1["id"], s2["id"]}
            assert [s["id"] for s in await ed.command("bgagents.list", {"cwd": str(other)})] == [s2["id"]]

            await ed.wait_session(s1["id"], lambda s: s["state"] == "needs_input")
            await ed.wait_session(s2["id"], lambda s: s["state"] == "needs_input")
            approved = await ed.command("bgagents.approve", s1["id"])
            assert approved["id"] == s1["id"]
            await ed.command("bgagents.deny", {"id": s2["id"], "message": "not now"})
            await ed.wait_session(s1["id"], lambda s: s["state"] == "completed")
            await ed.wait_session(s2["id"], lambda s: s["state"] == "completed")
            assert "allowed Bash" in transcript_text(bgd, s1["id"])
            assert "not now" in transcript_text(bgd, s2["id"])

            # reply: a follow-up turn
            await ed.command("bgagents.reply", s1["id"], "say again")
            await ed.wait_session(s1["id"], lambda s: s["state"] == "completed" and s["last_message"] == "again")

            # stop
            s3 = await ed.command("bgagents.dispatch", "sleep 30")
            await ed.wait_session(s3["id"], lambda s: s["state"] == "working")
            stopped = await ed.command("bgagents.stop", s3["id"])
            assert stopped["state"] == "stopped"

            # open transcript: a file the editor is asked to show
            opened = await ed.command("bgagents.openTranscript", s1["id"])
            assert opened["shown"] is True
            shown = await ed.wait_for(lambda: ed.client.shown_documents and ed.client.shown_documents[-1])
            assert shown.uri == opened["uri"]
            text = Path(opened["path"]).read_text()
            assert "› say again" in text and "allowed Bash" in text
    run(scenario())


def test_command_errors_are_clear(running_bgd):
    bgd = running_bgd

    async def scenario():
        async with editor_session(bgd) as ed:
            session = await ed.command("bgagents.dispatch", "say hi")
            await ed.wait_session(session["id"], lambda s: s["state"] == "completed")
            with pytest.raises(JsonRpcException) as nothing_pending:
                await ed.command("bgagents.approve", session["id"])
            assert nothing_pending.value.code == -32803  # LSP RequestFailed; the daemon's code rides along
            assert nothing_pending.value.message.startswith("bgd: ")
            assert "not waiting for a decision" in nothing_pending.value.message
            assert nothing_pending.value.data["daemon_code"] == -32002

            with pytest.raises(JsonRpcException) as unknown:
                await ed.command("bgagents.stop", "zzzzzzzz")
            assert unknown.value.data["daemon_code"] == -32001

            with pytest.raises(JsonRpcException) as bad_args:
                await ed.command("bgagents.reply", session["id"])
            assert bad_args.value.code == -32602 and "usage" in bad_args.value.message
    run(scenario())


def test_loop_command_calls_loop_create(running_bgd):
    bgd = running_bgd
    offered = {m["name"] for m in bgd.rpc("daemon.methods")}

    async def scenario():
        async with editor_session(bgd) as ed:
            if "loop.create" not in offered:
                with pytest.raises(JsonRpcException) as missing:
                    await ed.command("bgagents.loop", "5m say tick")
                assert missing.value.message.startswith("bgd does not offer loop.create")
                assert missing.value.data["daemon_code"] == -32601
                return
            # read like `bgctl loop`: a new session in the editor's folder, first iteration at once
            loop = await ed.command("bgagents.loop", "5m say tick")
            assert loop["cron"] == "*/5 * * * *" and loop["prompt"] == "say tick"
            assert bgd.rpc("session.get", {"id": loop["session"]})["cwd"] == str(bgd.work)
            await ed.wait_session(loop["session"], lambda s: s["last_message"] == "tick", "the first iteration")
            # named: in an existing session
            session = await ed.command("bgagents.dispatch", "say hi")
            await ed.wait_session(session["id"], lambda s: s["state"] == "completed")
            second = await ed.command("bgagents.loop", {"interval": "every 2 hours", "prompt": "say tock",
                                                        "session": session["id"]})
            assert second["session"] == session["id"] and second["cron"] == "0 */2 * * *"
            with pytest.raises(JsonRpcException) as bad:
                await ed.command("bgagents.loop", "5x say tick")
            assert bad.value.data["daemon_code"] == -32004 and bad.value.message.startswith("bgd: ")
    run(scenario())


# -- the daemon link ----------------------------------------------------------------------

def test_reconnects_after_a_daemon_restart_without_losing_or_repeating(running_bgd):
    bgd = running_bgd

    async def scenario():
        async with editor_session(bgd) as ed:
            await ed.wait_status(lambda s: s["connected"])
            done = bgd.dispatch("say before")
            asking = bgd.dispatch(TOOL)
            await ed.wait_session(done["id"], lambda s: s["state"] == "completed")
            first_prompt = await ed.wait_prompt(asking["id"])

            assert bgd.stop() == 0
            down = await ed.wait_status(lambda s: not s["connected"], "the daemon gone")
            assert down["text"] == "bgd not running"
            bgd.start()
            # Dispatched before bgls is back: it must arrive through `since`, not be lost.
            after = bgd.dispatch(TOOL)
            await ed.wait_status(lambda s: s["connected"], "reconnected")
            await ed.wait_prompt(after["id"])
            status = await ed.wait_session(asking["id"], lambda s: s["state"] == "failed",
                                           "the interrupted session shown as failed")
            assert status
            last = ed.statuses[-1]
            ids = [s["id"] for s in last["sessions"]]
            assert sorted(ids) == sorted({done["id"], asking["id"], after["id"]}) and len(ids) == 3
            # The interrupted request was withdrawn, never asked again.
            await ed.wait_for(lambda: first_prompt["msg_id"] in ed.cancelled, what="stale prompt withdrawn")
            assert len([p for p in ed.prompts if asking["id"] in p["params"].message]) == 1
            first_prompt["answer"].set_result("Approve")
            message = await ed.wait_message("was not applied")
            assert message.type == lsp.MessageType.Info
    run(scenario(), timeout=90)


def test_starts_the_daemon_when_none_runs(bgd):
    async def scenario():
        async with editor_session(bgd) as ed:
            status = await ed.wait_status(lambda s: s["connected"], "connected to a daemon bgls started")
            assert status["text"] == "idle"
            assert bgd.rpc("daemon.status")["socket"] == str(bgd.socket)
    try:
        run(scenario())
    finally:
        try:
            bgd.rpc("daemon.shutdown")
        except (RpcError, Exception):
            pass


def test_no_spawn_reports_the_daemon_missing_and_commands_fail_clearly(bgd):
    async def scenario():
        async with editor_session(bgd, "--no-spawn") as ed:
            status = await ed.wait_status(lambda s: not s["connected"], "not connected")
            assert status["text"] == "bgd not running" and "no daemon answers" in status["detail"]
            with pytest.raises(JsonRpcException) as err:
                await ed.command("bgagents.list")
            assert err.value.code == -32803 and "no daemon answers" in err.value.message
    run(scenario())
    assert not bgd.socket.exists()


def test_without_work_done_progress_support_only_the_status_is_sent(running_bgd):
    bgd = running_bgd
    caps = client_capabilities("visual-studio-code")
    caps.window.work_done_progress = False

    async def scenario():
        async with editor_session(bgd, capabilities=caps) as ed:
            session = bgd.dispatch(TOOL)
            await ed.wait_session(session["id"], lambda s: s["state"] == "needs_input")
            bgd.rpc("session.respond", {"id": session["id"], "decision": "allow"})
            await ed.wait_session(session["id"], lambda s: s["state"] == "completed")
            assert ed.client.progress_reports == {}
    run(scenario())


# -- tasks.toml ------------------------------------------------------------------------------

TASKS = """\
# nightly things
[tasks.nightly-report]
description = "Summarise CI"
prompt = "Read the CI failures"
cwd = "{work}"
schedule = "weekdays at 9:30"

[tasks.broken]
prompt = "x"
cwd = "{work}/does-not-exist"
schedule = "every 5 blargs"

[tasks.typo]
prompt = "x"
cwd = "{work}"
schedule = "daily"
overlapp = "skip"

[tasks.missing]
prompt = "x"
"""


def _range(d: lsp.Diagnostic) -> tuple:
    return (d.range.start.line, d.range.start.character, d.range.end.line, d.range.end.character)


def test_tasks_toml_diagnostics_have_exact_ranges(running_bgd):
    bgd = running_bgd
    path = bgd.config_dir / "tasks.toml"
    path.write_text(TASKS.format(work=bgd.work))

    async def scenario():
        async with editor_session(bgd) as ed:
            uri = await ed.open(path)
            diags = await ed.diagnostics(uri, lambda d: len(d) >= 4)
            lines = path.read_text().split("\n")

            def covered(d):
                return lines[d.range.start.line][d.range.start.character:d.range.end.character]
            by_code = {d.code: d for d in diags}
            assert covered(by_code["bad-schedule"]) == "blargs"
            assert _range(by_code["bad-schedule"])[0] == 10
            assert by_code["bad-schedule"].severity == lsp.DiagnosticSeverity.Error
            assert covered(by_code["unknown-field"]) == "overlapp"
            assert "did you mean 'overlap'" in by_code["unknown-field"].message
            assert covered(by_code["missing-field"]) == "missing"  # the task's name in its header
            assert all(d.source == "bgagents" for d in diags)

            cwd = by_code["bad-cwd"]
            assert covered(cwd) == f'"{bgd.work}/does-not-exist"' and "does not exist" in cwd.message

            # edits are checked as they are typed: fix the schedule and its error goes
            text = path.read_text().replace("every 5 blargs", "every 5 minutes")
            ed.change(uri, text, 2)
            diags = await ed.diagnostics(uri, lambda d: not any(x.code == "bad-schedule" for x in d))
            assert {d.code for d in diags} == {"bad-cwd", "unknown-field", "missing-field"}

            ed.client.text_document_did_close(lsp.DidCloseTextDocumentParams(
                text_document=lsp.TextDocumentIdentifier(uri=uri)))
            await ed.diagnostics(uri, lambda d: d == [])
    run(scenario())


def test_only_files_named_tasks_toml_are_checked(running_bgd):
    bgd = running_bgd
    other = bgd.work / "pyproject.toml"
    other.write_text('[tasks.x]\nschedule = "every 5 blargs"\n')

    async def scenario():
        async with editor_session(bgd) as ed:
            tasks_path = bgd.work / "tasks.toml"
            tasks_path.write_text('[tasks.x]\nprompt = "p"\ncwd = "/"\nschedule = "every 5 blargs"\n')
            other_uri = await ed.open(other)
            tasks_uri = await ed.open(tasks_path)
            await ed.diagnostics(tasks_uri, lambda d: len(d) == 1)  # any tasks.toml, not only the config one
            assert other_uri not in ed.client.diagnostics
            hover = await ed.client.text_document_hover_async(lsp.HoverParams(
                text_document=lsp.TextDocumentIdentifier(uri=other_uri), position=lsp.Position(1, 14)))
            assert hover is None
    run(scenario())


def test_hover_on_a_schedule_shows_cron_human_form_and_next_three_fires(running_bgd):
    bgd = running_bgd
    path = bgd.config_dir / "tasks.toml"
    path.write_text(f'[tasks.standup]\nprompt = "x"\ncwd = "{bgd.work}"\nschedule = "weekdays at 9:30"\n'
                    f'timezone = "Europe/Paris"\n')

    async def scenario():
        async with editor_session(bgd) as ed:
            uri = await ed.open(path)
            hover = await ed.client.text_document_hover_async(lsp.HoverParams(
                text_document=lsp.TextDocumentIdentifier(uri=uri), position=lsp.Position(3, 16)))
            text = hover.contents.value
            assert "`30 9 * * 1-5`" in text
            assert "Monday to Friday" in text or "weekday" in text.lower()
            assert "Europe/Paris" in text
            fires = [line for line in text.splitlines() if line.startswith("- ") and "+0" in line]
            assert len(fires) == 3 and all("09:30" in f for f in fires)
            assert (hover.range.start.line, hover.range.start.character) == (3, 11)

            field_hover = await ed.client.text_document_hover_async(lsp.HoverParams(
                text_document=lsp.TextDocumentIdentifier(uri=uri), position=lsp.Position(2, 1)))
            assert "must exist" in field_hover.contents.value
    run(scenario())


def test_completion_of_schedule_presets_field_names_and_values(running_bgd):
    bgd = running_bgd
    path = bgd.config_dir / "tasks.toml"
    text = f'[tasks.standup]\nprompt = "x"\ncwd = "{bgd.work}"\nschedule = "\n\noverlap = \n'
    path.write_text(text)

    async def scenario():
        async with editor_session(bgd) as ed:
            uri = await ed.open(path)

            async def complete(line, col):
                result = await ed.client.text_document_completion_async(lsp.CompletionParams(
                    text_document=lsp.TextDocumentIdentifier(uri=uri), position=lsp.Position(line, col)))
                return {item.label: item for item in result.items}

            presets = await complete(3, 12)
            assert {"manual", "hourly", "daily", "weekdays", "weekly", "every 15 minutes", "0 9 * * 1-5"} <= set(presets)
            assert presets["daily"].detail == "at 09:00 every day"
            assert presets["daily"].text_edit.new_text == '"daily"'
            fields = await complete(4, 0)
            assert {"description", "agent", "permission_mode", "worktree", "enabled", "timezone", "model",
                    "prompt_file", "where"} == set(fields)  # prompt, cwd, schedule and overlap are there already
            assert fields["worktree"].text_edit.new_text == "worktree = false"
            overlap = await complete(5, 10)
            assert set(overlap) == {"skip", "buffer_one", "replace", "allow"}
    run(scenario())


# -- routines.toml ---------------------------------------------------------------------------

ROUTINES = """\
# what runs by itself
[routines.pr-review]
prompt = "Review the pull request"
repos = ["{work}"]
timezone = "Europe/Paris"

[routines.pr-review.environment]
env_file = "env/pr-review.env"

[[routines.pr-review.triggers]]
schedule = "every 5 blargs"

[[routines.pr-review.triggers]]
github = ["pull_request.opened", "pull_request.opend"]

[[routines.pr-review.triggers]]
github = ["pull_request.opened"]
titel = "hotfix"
title = {{ matches = "(hotfix" }}
labels = {{ include = ["a"], exlude = ["wip"] }}
"""


def test_routines_toml_diagnostics_have_exact_ranges(bgd):
    path = bgd.config_dir / "routines.toml"
    path.write_text(ROUTINES.format(work=bgd.work))

    async def scenario():
        async with editor_session(bgd, "--no-spawn") as ed:
            uri = await ed.open(path)
            diags = await ed.diagnostics(uri, lambda d: len(d) >= 6)
            lines = path.read_text().split("\n")

            def covered(d):
                assert d.range.start.line == d.range.end.line
                return lines[d.range.start.line][d.range.start.character:d.range.end.character]
            found = sorted((d.range.start.line, d.code, covered(d)) for d in diags)
            assert found == [
                (7, "missing-file", '"env/pr-review.env"'),  # relative to the config dir, as the daemon reads it
                (10, "bad-schedule", "blargs"),
                (13, "bad-event", '"pull_request.opend"'),
                (17, "unknown-filter", "titel"),
                (18, "bad-regex", "("),
                (19, "unknown-operator", "exlude"),
            ]
            by_code = {d.code: d for d in diags}
            assert "did you mean 'opened'" in by_code["bad-event"].message
            assert "did you mean 'exclude'" in by_code["unknown-operator"].message
            assert all(d.source == "bgagents" and d.severity == lsp.DiagnosticSeverity.Error for d in diags)

            # fixed as they are typed; a created env_file counts on the next save
            text = path.read_text().replace("every 5 blargs", "every 2 hours").replace('"(hotfix"', '".*hotfix.*"')
            ed.change(uri, text, 2)
            diags = await ed.diagnostics(uri, lambda d: not any(x.code in ("bad-schedule", "bad-regex") for x in d))
            assert {d.code for d in diags} == {"missing-file", "bad-event", "unknown-filter", "unknown-operator"}
            (bgd.config_dir / "env").mkdir()
            (bgd.config_dir / "env" / "pr-review.env").write_text("TOKEN=x\n")
            ed.client.text_document_did_save(lsp.DidSaveTextDocumentParams(
                text_document=lsp.TextDocumentIdentifier(uri=uri)))
            await ed.diagnostics(uri, lambda d: not any(x.code == "missing-file" for x in d))

            ed.client.text_document_did_close(lsp.DidCloseTextDocumentParams(
                text_document=lsp.TextDocumentIdentifier(uri=uri)))
            await ed.diagnostics(uri, lambda d: d == [])
    run(scenario())


def test_hover_on_a_routine_schedule_shows_its_next_fires(bgd):
    from bgcore.routines_file import stagger_seconds

    path = bgd.config_dir / "routines.toml"
    path.write_text(f'[routines.standup]\nprompt = "x"\nrepos = ["{bgd.work}"]\ntimezone = "Europe/Paris"\n\n'
                    '[[routines.standup.triggers]]\nschedule = "weekdays at 9:30"\n\n'
                    '[[routines.standup.triggers]]\ngithub = ["release.published"]\n')

    async def scenario():
        async with editor_session(bgd, "--no-spawn") as ed:
            uri = await ed.open(path)

            async def hover(line, col):
                return await ed.client.text_document_hover_async(lsp.HoverParams(
                    text_document=lsp.TextDocumentIdentifier(uri=uri), position=lsp.Position(line, col)))

            shown = await hover(6, 16)
            text = shown.contents.value
            assert "`30 9 * * 1-5`" in text and "Europe/Paris" in text
            offset = stagger_seconds("standup")
            fires = [line for line in text.splitlines() if line.startswith("- ") and "+0" in line]
            minute, second = divmod(30 * 60 + offset, 60)
            assert len(fires) == 3 and all(f"09:{minute:02d}:{second:02d}+0" in f for f in fires), fires
            assert (shown.range.start.line, shown.range.start.character) == (6, 11)

            # the offset follows config.toml
            bgd.write_config("[routines]\nstagger = false\n")
            text = (await hover(6, 16)).contents.value
            fires = [line for line in text.splitlines() if line.startswith("- ") and "+0" in line]
            assert len(fires) == 3 and all("09:30:00+0" in f for f in fires) and "offset" not in text

            event = (await hover(9, 15)).contents.value
            assert "release.published" in event and "`tag`" in event
            field = (await hover(2, 1)).contents.value
            assert "cloned fresh for every run" in field
    run(scenario())


def test_completion_in_routines_toml(bgd):
    path = bgd.config_dir / "routines.toml"
    text = (f'[routines.r]\nprompt = "x"\nrepos = ["{bgd.work}"]\n\n'
            '[routines.r.environment]\nnetwork = \n\n'
            '[[routines.r.triggers]]\ngithub = ["pull_request.closed", "pull_request.op"]\n\ntitle = { \n')
    path.write_text(text)

    async def scenario():
        async with editor_session(bgd, "--no-spawn") as ed:
            uri = await ed.open(path)

            async def complete(line, col):
                result = await ed.client.text_document_completion_async(lsp.CompletionParams(
                    text_document=lsp.TextDocumentIdentifier(uri=uri), position=lsp.Position(line, col)))
                return {item.label: item for item in result.items}

            typed = 'github = ["pull_request.closed", "pull_request.op'
            events = await complete(8, len(typed))
            assert {"pull_request.opened", "pull_request.synchronize", "release.published"} <= set(events)
            edit = events["pull_request.opened"].text_edit
            assert edit.new_text == '"pull_request.opened"'
            assert (edit.range.start.character, edit.range.end.character) == (len(typed) - 16, len(typed) + 1)
            fields = await complete(9, 0)
            assert {"base", "head", "labels", "draft", "merged", "hourly_cap", "enabled"} <= set(fields)
            assert not {"tag", "prerelease", "schedule"} & set(fields)
            assert set(await complete(10, 10)) == {"equals", "contains", "starts_with", "one_of", "not_one_of",
                                                   "matches"}
            network = await complete(5, 10)
            assert set(network) == {"full", "none", "trusted"}
            assert all(item.detail == "network" for item in network.values())  # each one this bgd runs
            assert set(await complete(1, 0)) >= {"description", "agent", "timeout", "overlap"}
    run(scenario())
