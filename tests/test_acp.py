"""The ACP backend end to end: real bgd, real bgctl, the fake ACP agent on the official SDK (SPEC §5.5).

Each test follows one of the state flows the Claude tests cover (tests/test_sessions.py), with an ACP
agent on the other side of the wire."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import pytest

from conftest import TESTS, pid_alive, wait_until

FAKE_ACP = TESTS / "fake_acp.py"


def acp_agents(env: dict | None = None, **agents: dict) -> str:
    """config.toml tables for ACP agents running the fake: `fake` always, others with their own env."""
    out = []
    for name, extra_env in {"fake": env or {}, **agents}.items():
        out.append(f'[agents.{name}]\nbackend = "acp"\n'
                   f'command = [{json.dumps(sys.executable)}, {json.dumps(str(FAKE_ACP))}]\n'
                   f"start_timeout_s = 5\nenv = {_toml_table(extra_env)}\n")
    return "".join(out)


def _toml_table(values: dict) -> str:
    return "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in values.items()) + "}"


@pytest.fixture
def acp_bgd(bgd, tmp_path):
    log = tmp_path / "acp.log"
    bgd.acp_log = log
    bgd.write_config(acp_agents({"FAKE_ACP_LOG": str(log), "FAKE_ACP_STATE_DIR": str(tmp_path / "acp-state")}))
    bgd.start()
    return bgd


def received(bgd) -> list[dict]:
    """What the fake agents received, in order: {"pid", "method", "params"}."""
    path = bgd.acp_log
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def dispatch(bgd, prompt: str, agent: str = "fake", **params) -> dict:
    return bgd.dispatch(prompt, agent=agent, **params)


def settle(bgd, session_id: str, timeout: float = 20) -> dict:
    """The session once it is no longer working (so a wrong end shows at once, not as a timeout)."""
    return bgd.wait_session(session_id, lambda s: s["state"] != "working", timeout)


def answers(bgd) -> list:
    """The client's answers to the fake's requests (permission outcomes, errors), in order."""
    return [m["params"] for m in received(bgd) if m["method"] == "(response)"]


def test_a_turn_streams_into_coalesced_entries_and_completes(acp_bgd):
    bgd = acp_bgd
    out = bgd.ctl("dispatch", "--agent", "fake", "say hello from the agent; plan write tests | run them")
    assert out.returncode == 0, out.stderr
    session_id = out.stdout.split(" · ")[1]
    s = bgd.wait_state(session_id, "completed")
    assert s["last_message"] == "hello from the agent"
    assert s["agent"] == "fake" and s["turns"] == 1
    assert "cost_usd" not in s or s["cost_usd"] is None   # the fake reports no cost: unknown
    entries = bgd.ctl_json("logs", session_id)
    kinds = [e["kind"] for e in entries]
    assert kinds.count("assistant") == 1            # four chunks, one entry
    assistant = next(e for e in entries if e["kind"] == "assistant")
    assert assistant["data"]["text"] == "hello from the agent"
    plan = next(e for e in entries if e["kind"] == "plan")
    assert [p["content"] for p in plan["data"]["entries"]] == ["write tests", "run them"]
    text = bgd.ctl("logs", session_id).stdout
    assert "› say hello" in text and "hello from the agent" in text and "● write tests" in text
    assert "cost:             unknown" in bgd.ctl("show", session_id).stdout
    methods = [m["method"] for m in received(bgd)]
    assert methods[:3] == ["initialize", "session/new", "session/prompt"]
    init, new = received(bgd)[0]["params"], received(bgd)[1]["params"]
    assert init["clientCapabilities"] == {"fs": {"readTextFile": False, "writeTextFile": False}, "terminal": False}
    assert new["cwd"] == str(bgd.work)
    (server,) = new["mcpServers"]
    assert server["name"] == "bgagents" and "bgd.agents.mcp_server" in server["args"]
    assert s["agent_session_id"].startswith("fake-")


# -- permissions: approve, approve --always, deny, reply ------------------------------------------

def test_permission_request_needs_input_with_the_agents_options_then_approve(acp_bgd):
    bgd = acp_bgd
    s = dispatch(bgd, 'tool Bash {"command": "ls"}')
    s = settle(bgd, s["id"])
    assert s["state"] == "needs_input" and s["waiting_for"] == "permission"
    pending = s["pending"]
    assert pending["tool_name"] == "Bash" and pending["input"] == {"command": "ls"}
    assert [o["kind"] for o in pending["options"]] == ["allow_once", "allow_always", "reject_once", "reject_always"]
    shown = bgd.ctl("show", s["id"]).stdout
    assert "waiting for permission: Bash" in shown and "Allow once (allow_once)" in shown
    assert bgd.ctl("approve", s["id"]).returncode == 0
    s = settle(bgd, s["id"])
    assert s["state"] == "completed" and s["last_message"] == "allowed Bash"
    assert answers(bgd) == [{"outcome": {"outcome": "selected", "optionId": "allow"}}]
    tools = [e["data"] for e in bgd.ctl_json("logs", s["id"]) if e["kind"] == "tool"]
    assert [t["status"] for t in tools] == ["pending", "in_progress", "completed"]
    assert all(t["title"] == "Bash" for t in tools)
    text = bgd.ctl("logs", s["id"]).stdout
    assert "✓ allowed Bash" in text and "✓ Bash [completed]" in text


def test_approve_always_picks_allow_always_and_is_not_asked_again(acp_bgd):
    bgd = acp_bgd
    s = dispatch(bgd, 'tool Bash {"command": "ls"}')
    assert settle(bgd, s["id"])["state"] == "needs_input"
    assert bgd.ctl("approve", s["id"], "--always").returncode == 0
    assert settle(bgd, s["id"])["state"] == "completed"
    assert answers(bgd) == [{"outcome": {"outcome": "selected", "optionId": "always"}}]
    assert bgd.ctl("reply", s["id"], 'tool Bash {"command": "pwd"}').returncode == 0
    s = bgd.wait_session(s["id"], lambda x: x["state"] in ("completed", "needs_input", "failed") and x["turns"] >= 2)
    assert s["state"] == "completed" and s["last_message"] == "allowed Bash"


def test_deny_with_a_message_rejects_and_the_agent_hears_the_message(acp_bgd):
    bgd = acp_bgd
    s = dispatch(bgd, 'tool Write {"file_path": "/etc/passwd"}')
    assert settle(bgd, s["id"])["state"] == "needs_input"
    out = bgd.ctl("deny", s["id"], "--message", "not that file")
    assert out.returncode == 0, out.stderr
    s = settle(bgd, s["id"])
    assert s["state"] == "completed", s
    assert answers(bgd) == [{"outcome": {"outcome": "selected", "optionId": "reject"}}]
    # ACP's answer has no room for a reason: it goes to the agent as the next prompt of the turn.
    prompts = [m["params"]["prompt"][0]["text"] for m in received(bgd) if m["method"] == "session/prompt"]
    assert prompts[-1] == "not that file"
    assert s["last_message"] == "not that file" and s["turns"] == 2
    text = bgd.ctl("logs", s["id"]).stdout
    assert "✗ denied Write: not that file" in text and "denied Write" in text and "› not that file" in text


def test_a_reply_while_asked_denies_with_the_reply_as_the_reason(acp_bgd):
    bgd = acp_bgd
    s = dispatch(bgd, 'tool Bash {"command": "rm -rf /"}')
    assert settle(bgd, s["id"])["state"] == "needs_input"
    assert bgd.ctl("reply", s["id"], "say use git clean instead").returncode == 0
    s = settle(bgd, s["id"])
    assert s["state"] == "completed" and s["last_message"] == "use git clean instead"


def test_reply_starts_a_new_turn_on_the_same_process(acp_bgd):
    bgd = acp_bgd
    s = dispatch(bgd, "say one")
    s1 = settle(bgd, s["id"])
    assert s1["state"] == "completed"
    assert bgd.ctl("reply", s["id"], "say two").returncode == 0
    s2 = bgd.wait_session(s["id"], lambda x: x["state"] == "completed" and x["last_message"] == "two")
    assert s2["turns"] == 2 and s2["pid"] == s1["pid"]
    methods = [m["method"] for m in received(bgd)]
    assert methods.count("initialize") == 1 and methods.count("session/prompt") == 2


def test_a_request_the_client_does_not_offer_is_refused_and_the_session_goes_on(acp_bgd):
    bgd = acp_bgd
    s = dispatch(bgd, "unsupported; say still here")
    s = settle(bgd, s["id"])
    assert s["state"] == "completed" and s["last_message"] == "still here"
    (error,) = answers(bgd)
    assert error["error"]["code"] == -32601 and "fs/read_text_file" in error["error"]["message"]
    said = [e["data"]["text"] for e in bgd.ctl_json("logs", s["id"]) if e["kind"] == "assistant"]
    assert said[0].startswith("client said: -32601")


# -- stop -----------------------------------------------------------------------------------

def test_stop_sends_session_cancel_and_ends_the_process(acp_bgd):
    bgd = acp_bgd
    s = dispatch(bgd, "sleep 30")
    s = bgd.wait_session(s["id"], lambda x: x["pid"] is not None)
    wait_until(lambda: "session/prompt" in [m["method"] for m in received(bgd)], what="the prompt")
    assert bgd.ctl("stop", s["id"]).returncode == 0
    s = bgd.wait_session(s["id"], lambda x: x["state"] == "stopped" and x["pid"] is None, timeout=10)
    assert not pid_alive(s["pid"] or 0) if s["pid"] else True
    cancel = [m for m in received(bgd) if m["method"] == "session/cancel"]
    assert cancel and cancel[0]["params"] == {"sessionId": s["agent_session_id"]}


def test_stop_while_asked_answers_cancelled_first(acp_bgd):
    bgd = acp_bgd
    s = dispatch(bgd, 'tool Bash {"command": "ls"}')
    assert settle(bgd, s["id"])["state"] == "needs_input"
    assert bgd.ctl("stop", s["id"]).returncode == 0
    bgd.wait_session(s["id"], lambda x: x["state"] == "stopped" and x["pid"] is None, timeout=10)
    assert answers(bgd) == [{"outcome": {"outcome": "cancelled"}}]


def test_an_agent_that_ignores_cancel_is_killed_after_the_grace_period(acp_bgd):
    bgd = acp_bgd
    s = dispatch(bgd, "ignore-stop")
    s = bgd.wait_session(s["id"], lambda x: x["pid"] is not None and x["last_message"] == "ignoring stop")
    pid = s["pid"]
    assert bgd.ctl("stop", s["id"]).returncode == 0
    assert bgd.rpc("session.get", {"id": s["id"]})["state"] == "stopped"
    bgd.wait_session(s["id"], lambda x: x["pid"] is None, timeout=15)   # SIGTERM after 1 s, SIGKILL after 2 s
    assert not pid_alive(pid)
    assert "session/cancel" in [m["method"] for m in received(bgd)]


# -- continuing after the process is gone ---------------------------------------------------------

def test_kill_9_of_the_daemon_then_a_reply_continues_with_session_load(acp_bgd):
    bgd = acp_bgd
    s = dispatch(bgd, "say one")
    s = settle(bgd, s["id"])
    assert s["state"] == "completed"
    first_pid = s["pid"]
    os.kill(bgd.proc.pid, signal.SIGKILL)
    bgd.proc.wait()
    wait_until(lambda: not pid_alive(first_pid), what="the agent to see its stdin close")
    bgd.start()
    assert bgd.ctl("reply", s["id"], "say two").returncode == 0
    s = bgd.wait_session(s["id"], lambda x: x["state"] != "working" and x["turns"] >= 2)
    assert s["state"] == "completed" and s["last_message"] == "two"
    load = [m for m in received(bgd) if m["method"] == "session/load"]
    assert len(load) == 1 and load[0]["params"]["sessionId"] == s["agent_session_id"]
    assert load[0]["params"]["mcpServers"][0]["name"] == "bgagents"
    entries = bgd.ctl_json("logs", s["id"])
    # The agent replays the conversation on load; the transcript has it already, once.
    assert [e["data"]["text"] for e in entries if e["kind"] == "assistant"] == ["one", "two"]
    note = next(e["data"] for e in entries if e["kind"] == "daemon" and e["data"].get("event") == "continued")
    assert note["detail"].startswith(f"session/load {s['agent_session_id']}") and "2 updates" in note["detail"]


def test_a_kill_9_mid_turn_fails_the_session_and_a_reply_resumes_it(acp_bgd):
    bgd = acp_bgd
    s = dispatch(bgd, "say started; sleep 30")
    s = bgd.wait_session(s["id"], lambda x: x["last_message"] == "started" or x["state"] != "working")
    pid = s["pid"]
    os.kill(bgd.proc.pid, signal.SIGKILL)
    bgd.proc.wait()
    wait_until(lambda: not pid_alive(pid), what="the agent to see its stdin close")
    bgd.start()
    s = bgd.rpc("session.get", {"id": s["id"]})
    assert s["state"] == "failed" and "bgd restarted" in s["error"]
    assert bgd.ctl("reply", s["id"], "say back").returncode == 0
    s = bgd.wait_session(s["id"], lambda x: x["state"] != "working" and x["last_message"] == "back")
    assert s["state"] == "completed"
    assert [m["params"]["sessionId"] for m in received(bgd) if m["method"] == "session/load"] == [s["agent_session_id"]]


def test_an_agent_without_session_load_gets_a_fresh_session_and_the_transcript_says_so(bgd, tmp_path):
    log = tmp_path / "acp.log"
    bgd.acp_log = log
    bgd.write_config('idle_timeout_s = 0.3\n' if False else "")
    bgd.write_config(acp_agents({"FAKE_ACP_LOG": str(log), "FAKE_ACP_NO_LOAD": "1"}))
    config = bgd.config_dir / "config.toml"
    config.write_text(config.read_text().replace("idle_timeout_s = 30", "idle_timeout_s = 0.3"))
    bgd.start()
    s = dispatch(bgd, "say first")
    # Idle for idle_timeout_s: the process is let go; the reply needs a new one.
    s = bgd.wait_session(s["id"], lambda x: x["state"] == "completed" and x["pid"] is None)
    first_id = s["agent_session_id"]
    assert bgd.ctl("reply", s["id"], "say second").returncode == 0
    s = bgd.wait_session(s["id"], lambda x: x["state"] == "completed" and x["last_message"] == "second")
    methods = [m["method"] for m in received(bgd)]
    assert methods.count("session/new") == 2 and "session/load" not in methods
    assert s["agent_session_id"] != first_id
    note = next(e["data"] for e in bgd.ctl_json("logs", s["id"])
                if e["kind"] == "daemon" and e["data"].get("event") == "fresh ACP session")
    assert "cannot continue an earlier conversation" in note["detail"]
    assert "fresh ACP session: Fake ACP cannot continue" in bgd.ctl("logs", s["id"]).stdout


def test_an_agent_offering_session_resume_is_resumed_without_replay(bgd, tmp_path):
    log = tmp_path / "acp.log"
    bgd.acp_log = log
    bgd.write_config(acp_agents({"FAKE_ACP_LOG": str(log), "FAKE_ACP_RESUME": "1",
                                 "FAKE_ACP_STATE_DIR": str(tmp_path / "state-acp")}))
    bgd.start()
    s = dispatch(bgd, "sleep 30")
    s = bgd.wait_session(s["id"], lambda x: x["pid"] is not None)
    wait_until(lambda: "session/prompt" in [m["method"] for m in received(bgd)], what="the prompt")
    bgd.ctl("stop", s["id"])
    bgd.wait_session(s["id"], lambda x: x["state"] == "stopped" and x["pid"] is None)
    assert bgd.ctl("resume", s["id"], "say resumed").returncode == 0
    s = bgd.wait_session(s["id"], lambda x: x["state"] != "working" and x["last_message"] == "resumed")
    assert [m["params"]["sessionId"] for m in received(bgd) if m["method"] == "session/resume"] == [
        s["agent_session_id"]]


# -- failures -------------------------------------------------------------------------------

def test_a_crash_mid_turn_fails_the_session(acp_bgd):
    s = dispatch(acp_bgd, "say starting; crash 3")
    s = settle(acp_bgd, s["id"])
    assert s["state"] == "failed"
    assert "exited mid-turn (exit code 3)" in s["error"] and "fake crash" in s["error"] and s["pid"] is None


def test_a_non_json_line_fails_the_session_and_is_kept(acp_bgd):
    s = dispatch(acp_bgd, "garbage; sleep 5")
    s = settle(acp_bgd, s["id"])
    assert s["state"] == "failed" and "non-JSON line" in s["error"] and "this is not json" in s["error"]
    entries = acp_bgd.ctl_json("logs", s["id"])
    assert any(e["kind"] == "raw" and "this is not json" in e["data"]["text"] for e in entries)


def test_a_ten_megabyte_line_is_stored_and_the_turn_completes(acp_bgd):
    bgd = acp_bgd
    s = dispatch(bgd, "bigline 10; say after")
    s = settle(bgd, s["id"], timeout=60)
    assert s["state"] == "completed" and s["last_message"] == "after"
    entries = bgd.rpc("session.transcript", {"id": s["id"]})["entries"]
    big = [e for e in entries if e["data"].get("truncated")]
    assert big and big[0]["kind"] == "assistant" and big[0]["data"]["bytes"] > 10_000_000
    full = bgd.rpc("session.transcript", {"id": s["id"], "since": big[0]["n"] - 1, "limit": 1, "full": True})
    assert len(full["entries"][0]["data"]["text"]) == 10 * 1024 * 1024


def test_an_agent_that_never_answers_initialize_fails_with_a_clear_error(bgd, tmp_path):
    bgd.write_config(acp_agents(mute={"FAKE_ACP_NO_INIT": "1"}).replace(
        "start_timeout_s = 5\nenv = {FAKE_ACP_NO_INIT", "start_timeout_s = 1\nenv = {FAKE_ACP_NO_INIT"))
    bgd.start()
    started = time.monotonic()
    s = dispatch(bgd, "say hi", agent="mute")
    assert time.monotonic() - started < 1   # the handshake is not inside the dispatch call
    s = settle(bgd, s["id"])
    assert s["state"] == "failed"
    assert s["error"].startswith("the agent did not answer initialize within 1 s")
    assert "[agents.mute]" in s["error"]
    bgd.wait_session(s["id"], lambda x: x["pid"] is None, timeout=10)


def test_an_incompatible_protocol_version_is_refused(bgd):
    bgd.write_config(acp_agents(future={"FAKE_ACP_PROTOCOL": "2"}))
    bgd.start()
    s = settle(bgd, dispatch(bgd, "say hi", agent="future")["id"])
    assert s["state"] == "failed" and "speaks ACP version 2, bgd speaks version 1" in s["error"]


def test_authentication_only_when_demanded_and_configured(bgd, tmp_path):
    log = tmp_path / "acp.log"
    bgd.acp_log = log
    config = acp_agents(locked={"FAKE_ACP_AUTH": "token", "FAKE_ACP_LOG": str(log)},
                        keyed={"FAKE_ACP_AUTH": "token", "FAKE_ACP_LOG": str(log)})
    bgd.write_config(config.replace('[agents.keyed]\n', '[agents.keyed]\nauth_method = "token"\n'))
    bgd.start()
    s = settle(bgd, dispatch(bgd, "say hi", agent="locked")["id"])
    assert s["state"] == "failed"
    assert s["error"].startswith("Authentication required (session/new)")
    assert "auth_method under [agents.locked] to one of: token (Log in)" in s["error"]
    assert "authenticate" not in [m["method"] for m in received(bgd)]
    s = settle(bgd, dispatch(bgd, "say hi", agent="keyed")["id"])
    assert s["state"] == "completed" and s["last_message"] == "hi"
    assert [m["params"] for m in received(bgd) if m["method"] == "authenticate"] == [{"methodId": "token"}]


@pytest.mark.parametrize("directive, error", [
    ("stop refusal", "the agent refused to go on (stopReason refusal)"),
    ("stop max_tokens", "the agent reached its token limit (stopReason max_tokens); reply to continue"),
    ("error the model is overloaded", "the model is overloaded (session/prompt)"),
])
def test_stop_reasons_and_errors_fail_the_turn_with_the_reason(acp_bgd, directive, error):
    s = settle(acp_bgd, dispatch(acp_bgd, f"say partial; {directive}")["id"])
    assert s["state"] == "failed" and s["error"] == error and s["last_message"] == "partial"


def test_a_reported_cost_and_usage_are_shown(acp_bgd):
    bgd = acp_bgd
    s = settle(bgd, dispatch(bgd, "cost 0.25; say done")["id"])
    assert s["state"] == "completed" and s["cost_usd"] == 0.25
    assert s["usage"] == {"totalTokens": 150, "inputTokens": 100, "outputTokens": 50}
    assert bgd.ctl("reply", s["id"], "cost 0.5").returncode == 0
    s = bgd.wait_session(s["id"], lambda x: x["state"] == "completed" and x["turns"] == 2)
    assert s["cost_usd"] == 0.75 and s["usage"]["totalTokens"] == 300
    shown = bgd.ctl("show", s["id"]).stdout
    assert "cost:             $0.7500" in shown and "totalTokens 300" in shown
    assert "$0.75" in bgd.ctl("ls").stdout


def test_unknown_cost_is_unknown_in_ls_and_show(acp_bgd):
    bgd = acp_bgd
    s = settle(bgd, dispatch(bgd, "say free?")["id"])
    assert s.get("cost_usd") is None
    row = next(line for line in bgd.ctl("ls").stdout.splitlines() if s["id"] in line)
    assert "unknown" in row and "$0.00" not in row


def test_a_missing_binary_names_the_package_that_provides_it(bgd):
    bgd.write_config('[agents.gemini]\ncommand = ["/nonexistent/gemini", "--acp"]\n')
    bgd.start()
    out = bgd.ctl("dispatch", "--agent", "gemini", "hello")
    assert out.returncode == 1
    assert "'/nonexistent/gemini' not found" in out.stderr
    assert "npm install -g @google/gemini-cli" in out.stderr and "[agents.gemini]" in out.stderr


def test_the_ready_made_agents_are_in_the_default_config(running_bgd):
    agents = {a["name"]: a for a in running_bgd.rpc("daemon.status").get("agents", [])} or None
    from bgcore.config import parse_config
    config = parse_config("")
    assert {name: list(a.command) for name, a in config.agents.items() if a.backend == "acp"} == {
        "gemini": ["gemini", "--acp"], "qwen": ["qwen", "--acp"], "opencode": ["opencode", "acp"],
        "codex": ["codex-acp"], "claude-acp": ["claude-code-acp"], "goose": ["goose", "acp"]}
    assert agents is None or set(agents) >= {"gemini", "codex"}


# -- loops and tasks ----------------------------------------------------------------------------

def test_a_dynamic_loop_schedules_its_wake_through_the_daemons_mcp_server(acp_bgd):
    bgd = acp_bgd
    prompt = 'mcp schedule_wakeup {"delay_seconds": 120, "reason": "waiting for CI"}'
    loop = bgd.ctl_json("loop", "--agent", "fake", prompt)
    assert loop["kind"] == "dynamic" and not loop.get("note")
    session = bgd.wait_state(loop["session"], "sleeping", timeout=40)
    assert session["last_message"].startswith("mcp: next wake of loop"), session
    [current] = bgd.ctl_json("loop", "ls", "--session", loop["session"])
    assert current["reason"] == "waiting for CI" and not current["fallback"]


def test_a_desktop_task_runs_with_an_acp_agent(acp_bgd):
    bgd = acp_bgd
    out = bgd.ctl("task", "add", "acp-nightly", "--schedule", "manual", "--cwd", str(bgd.work),
                  "--agent", "fake", "say", "task", "done")
    assert out.returncode == 0, out.stderr
    wait_until(lambda: any(t["name"] == "acp-nightly" for t in bgd.rpc("task.list")["tasks"]), what="the task")
    run = bgd.rpc("task.run", {"name": "acp-nightly"})
    s = settle(bgd, run["session_id"])
    assert s["state"] == "completed" and s["last_message"] == "task done" and s["origin"] == "task:acp-nightly"


def test_the_permission_mode_is_the_agents_session_mode_of_that_name(acp_bgd):
    bgd = acp_bgd
    s = settle(bgd, dispatch(bgd, "say planned", permission_mode="plan")["id"])
    assert s["state"] == "completed"
    assert [m["params"] for m in received(bgd) if m["method"] == "session/set_mode"] == [
        {"sessionId": s["agent_session_id"], "modeId": "plan"}]
    s = settle(bgd, dispatch(bgd, "say bypassed", permission_mode="bypassPermissions")["id"])
    assert s["state"] == "completed"
    note = next(e["data"]["detail"] for e in bgd.ctl_json("logs", s["id"])
                if e["kind"] == "daemon" and e["data"].get("event") == "permission mode")
    assert note.startswith("the agent has no mode 'bypassPermissions' (it offers default, acceptEdits, plan)")


def test_the_daemon_answers_a_tool_allowed_always_when_a_new_process_asks_again(acp_bgd):
    bgd = acp_bgd
    s = dispatch(bgd, 'tool Bash {"command": "ls"}')
    assert settle(bgd, s["id"])["state"] == "needs_input"
    assert bgd.ctl("approve", s["id"], "--always").returncode == 0
    assert settle(bgd, s["id"])["state"] == "completed"
    bgd.ctl("stop", s["id"])                       # the agent process, and what it remembered, are gone
    bgd.wait_session(s["id"], lambda x: x["pid"] is None)
    assert bgd.ctl("resume", s["id"], 'tool Bash {"command": "pwd"}').returncode == 0
    s = bgd.wait_session(s["id"], lambda x: x["state"] != "working" and x["turns"] >= 2)
    assert s["state"] == "completed" and s["last_message"] == "allowed Bash"
    assert answers(bgd)[-1] == {"outcome": {"outcome": "selected", "optionId": "allow"}}
    controls = [e["data"] for e in bgd.ctl_json("logs", s["id"]) if e["kind"] == "control"]
    assert controls[-1]["rule"] == "always"


def test_permission_requests_asked_at_once_are_put_to_the_person_one_at_a_time(acp_bgd):
    bgd = acp_bgd
    s = dispatch(bgd, "tools Lint Test")
    s = settle(bgd, s["id"])
    assert s["state"] == "needs_input"
    first = s["pending"]["tool_name"]
    assert bgd.ctl("approve", s["id"]).returncode == 0
    s = bgd.wait_session(s["id"], lambda x: x["state"] != "working" and (x.get("pending") or {}).get("tool_name") != first)
    second = s["pending"]["tool_name"]
    assert s["state"] == "needs_input" and {first, second} == {"Lint", "Test"}
    assert bgd.ctl("deny", s["id"]).returncode == 0
    s = settle(bgd, s["id"])
    assert s["state"] == "completed"
    said = [e["data"]["text"] for e in bgd.ctl_json("logs", s["id"]) if e["kind"] == "assistant"]
    assert sorted(said) == sorted([f"allowed {first}", f"denied {second}"])
