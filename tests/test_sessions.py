"""Sessions end to end: real bgd, real bgctl, the fake agent speaking stream-json (SPEC §2, §5)."""

from __future__ import annotations

import json
import sys


from conftest import pid_alive


def test_dispatch_runs_a_turn_to_completed_with_cost_and_transcript(running_bgd):
    bgd = running_bgd
    out = bgd.ctl("dispatch", "say hello from the agent")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("backgrounded · ")
    session_id = out.stdout.split(" · ")[1]
    s = bgd.wait_state(session_id, "completed")
    assert s["last_message"] == "hello from the agent"
    assert s["cost_usd"] > 0 and s["turns"] >= 1
    assert s["origin"] == "dispatch" and s["agent"] == "claude"
    entries = bgd.ctl_json("logs", session_id)
    kinds = [(e["kind"], e["data"].get("type")) for e in entries]
    assert kinds[0] == ("user", None)
    assert ("agent", "system") in kinds and ("agent", "result") in kinds
    text = bgd.ctl("logs", session_id).stdout
    assert "› say hello from the agent" in text and "hello from the agent" in text


def test_permission_request_needs_input_then_approve(running_bgd):
    bgd = running_bgd
    s = bgd.dispatch('tool Bash {"command": "ls"}')
    s = bgd.wait_state(s["id"], "needs_input")
    assert s["waiting_for"] == "permission"
    assert s["pending"]["tool_name"] == "Bash" and s["pending"]["input"] == {"command": "ls"}
    shown = bgd.ctl("show", s["id"]).stdout
    assert "waiting for permission: Bash" in shown and f"bgctl approve {s['id']}" in shown
    assert bgd.ctl("approve", s["id"]).returncode == 0
    s = bgd.wait_state(s["id"], "completed")
    assert s["last_message"] == "allowed Bash"
    assert "✓ allowed Bash" in bgd.ctl("logs", s["id"]).stdout


def test_deny_passes_the_message_to_the_agent(running_bgd):
    bgd = running_bgd
    s = bgd.dispatch('tool Write {"file_path": "/etc/passwd"}')
    bgd.wait_state(s["id"], "needs_input")
    out = bgd.ctl("deny", s["id"], "--message", "not that file")
    assert out.returncode == 0, out.stderr
    s = bgd.wait_state(s["id"], "completed")
    assert s["last_message"] == "denied Write: not that file"


def test_approve_always_remembers_the_rule_for_the_session(running_bgd):
    bgd = running_bgd
    s = bgd.dispatch('tool Bash {"command": "ls"}')
    bgd.wait_state(s["id"], "needs_input")
    assert bgd.ctl("approve", s["id"], "--always").returncode == 0
    bgd.wait_state(s["id"], "completed")
    # A second turn asks for the same tool: no person is asked again.
    assert bgd.ctl("reply", s["id"], 'tool Bash {"command": "pwd"}').returncode == 0
    s = bgd.wait_session(s["id"], lambda x: x["state"] in ("completed", "needs_input") and x["turns"] >= 2)
    assert s["state"] == "completed", s
    assert s["last_message"] == "allowed Bash"


def test_question_is_answered_by_reply(running_bgd):
    bgd = running_bgd
    s = bgd.dispatch("ask Deploy now?")
    s = bgd.wait_state(s["id"], "needs_input")
    assert s["waiting_for"] == "question"
    assert "waiting for an answer: Deploy now?" in bgd.ctl("show", s["id"]).stdout
    assert bgd.ctl("reply", s["id"], "yes", "please").returncode == 0
    s = bgd.wait_state(s["id"], "completed")
    assert s["last_message"] == "answer: yes please"


def test_withdrawn_request_returns_to_working(running_bgd):
    bgd = running_bgd
    s = bgd.dispatch('tool Bash {"command": "ls"}; cancel-after 0.3')
    bgd.wait_state(s["id"], "needs_input")
    s = bgd.wait_state(s["id"], "completed")
    assert s["pending"] is None if "pending" in s else True
    assert s["last_message"] == "withdrawn"


def test_stale_decision_is_refused_clearly(running_bgd):
    bgd = running_bgd
    s = bgd.dispatch("say done")
    bgd.wait_state(s["id"], "completed")
    out = bgd.ctl("approve", s["id"])
    assert out.returncode == 1
    assert "not waiting for a decision" in out.stderr


def test_reply_starts_a_new_turn_and_cost_accumulates(running_bgd):
    bgd = running_bgd
    s = bgd.dispatch("say one")
    s1 = bgd.wait_state(s["id"], "completed")
    assert bgd.ctl("reply", s["id"], "say two").returncode == 0
    s2 = bgd.wait_session(s["id"], lambda x: x["state"] == "completed" and x["last_message"] == "two")
    assert s2["turns"] > s1["turns"] and s2["cost_usd"] > s1["cost_usd"]


def test_reply_while_working_is_refused(running_bgd):
    bgd = running_bgd
    s = bgd.dispatch("sleep 30")
    bgd.wait_state(s["id"], "working")
    out = bgd.ctl("reply", s["id"], "hurry")
    assert out.returncode == 1 and "is working" in out.stderr
    bgd.ctl("stop", s["id"])


def test_stop_interrupts_the_turn_and_ends_the_process(running_bgd):
    bgd = running_bgd
    s = bgd.dispatch("sleep 30")
    s = bgd.wait_session(s["id"], lambda x: x["pid"] is not None)
    pid = s["pid"]
    assert bgd.ctl("stop", s["id"]).returncode == 0
    s = bgd.wait_session(s["id"], lambda x: x["state"] == "stopped" and x["pid"] is None, timeout=10)
    assert not pid_alive(pid)


def test_agent_that_ignores_stop_is_killed_after_the_grace_period(running_bgd):
    bgd = running_bgd
    s = bgd.dispatch("ignore-stop")
    # "ignoring stop" is said once the fake agent's SIG_IGN handlers are in place.
    s = bgd.wait_session(s["id"], lambda x: x["pid"] is not None and x["last_message"] == "ignoring stop")
    pid = s["pid"]
    assert bgd.ctl("stop", s["id"]).returncode == 0
    assert bgd.rpc("session.get", {"id": s["id"]})["state"] == "stopped"
    # grace is 1 s: SIGTERM after 1 s (ignored), SIGKILL after 2 s.
    bgd.wait_session(s["id"], lambda x: x["pid"] is None, timeout=15)
    assert not pid_alive(pid)


def test_stop_then_resume_continues_with_the_agents_session_id(running_bgd, tmp_path):
    bgd = running_bgd
    log = tmp_path / "argv.log"
    bgd.stop()
    bgd.start(extra_env={"FAKE_CLAUDE_ARGV_LOG": str(log)})
    s = bgd.dispatch("sleep 30")
    bgd.wait_session(s["id"], lambda x: x["pid"] is not None)
    bgd.ctl("stop", s["id"])
    bgd.wait_session(s["id"], lambda x: x["state"] == "stopped" and x["pid"] is None)
    assert bgd.ctl("resume", s["id"], "say resumed").returncode == 0
    s = bgd.wait_session(s["id"], lambda x: x["state"] == "completed" and x["last_message"] == "resumed")
    starts = [json.loads(line) for line in log.read_text().splitlines()]
    assert "--session-id" in starts[0]["argv"]
    assert starts[-1]["argv"][starts[-1]["argv"].index("--resume") + 1] == s["agent_session_id"]
    assert all(start["env_disable_cron"] == "1" for start in starts)


def test_rm_deletes_the_session_and_its_transcript(running_bgd):
    bgd = running_bgd
    s = bgd.dispatch("say bye")
    bgd.wait_state(s["id"], "completed")
    assert bgd.ctl("rm", s["id"]).returncode == 0
    assert all(x["id"] != s["id"] for x in bgd.ctl_json("ls", "--all"))
    out = bgd.ctl("logs", s["id"])
    assert out.returncode == 1 and "no session" in out.stderr


def test_pin_unpin_rename(running_bgd):
    bgd = running_bgd
    s = bgd.dispatch("say hi")
    bgd.wait_state(s["id"], "completed")
    assert bgd.ctl_json("pin", s["id"])["pinned"] is True
    assert bgd.ctl_json("unpin", s["id"])["pinned"] is False
    renamed = bgd.ctl_json("rename", s["id"], "login", "fix")
    assert renamed["name"] == "login fix"
    # a session can be named by its name or an unambiguous id prefix
    assert bgd.ctl_json("show", "login fix")["id"] == s["id"]
    assert bgd.ctl_json("show", s["id"][:5])["id"] == s["id"]


def test_ls_filters_by_state_and_cwd(running_bgd, tmp_path):
    bgd = running_bgd
    other = tmp_path / "other"
    other.mkdir()
    a = bgd.dispatch("say a")
    b = bgd.dispatch('tool Bash {"command": "ls"}', cwd=str(other))
    bgd.wait_state(a["id"], "completed")
    bgd.wait_state(b["id"], "needs_input")
    assert [x["id"] for x in bgd.ctl_json("ls", "--state", "needs_input")] == [b["id"]]
    assert [x["id"] for x in bgd.ctl_json("ls", "--cwd", str(other))] == [b["id"]]
    table = bgd.ctl("ls").stdout
    assert a["id"] in table and b["id"] in table and "needs_input (permission)" in table


# -- failure paths ---------------------------------------------------------------

def test_missing_agent_binary_fails_the_session_with_a_fix(bgd):
    bgd.write_config('[agents.ghost]\nbackend = "claude"\ncommand = ["/nonexistent/claude-code"]\n')
    bgd.start()
    out = bgd.ctl("dispatch", "--agent", "ghost", "hello")
    assert out.returncode == 1
    assert "'/nonexistent/claude-code' not found" in out.stderr
    assert "[agents.ghost]" in out.stderr and "config.toml" in out.stderr
    s = bgd.ctl_json("ls")[0]
    assert s["state"] == "failed" and "not found" in s["error"]
    assert bgd.rpc("daemon.status")["sessions"] == 1  # the daemon is fine


def test_agent_exiting_mid_turn_fails_the_session(running_bgd):
    bgd = running_bgd
    s = bgd.dispatch("say starting; crash 3")
    s = bgd.wait_state(s["id"], "failed")
    assert "exited mid-turn (exit code 3)" in s["error"] and "fake crash" in s["error"]
    assert s["pid"] is None


def test_non_json_line_fails_the_session_and_is_kept(running_bgd):
    bgd = running_bgd
    s = bgd.dispatch("garbage; sleep 5")
    s = bgd.wait_state(s["id"], "failed")
    assert "non-JSON line" in s["error"] and "this is not json" in s["error"]
    entries = bgd.ctl_json("logs", s["id"])
    assert any(e["kind"] == "raw" and "this is not json" in e["data"]["text"] for e in entries)
    assert bgd.rpc("daemon.status")["pid"]


def test_ten_megabyte_line_is_stored_and_the_turn_completes(running_bgd):
    bgd = running_bgd
    s = bgd.dispatch("bigline 10; say after")
    s = bgd.wait_state(s["id"], "completed", timeout=60)
    assert s["last_message"] == "after"
    entries = bgd.rpc("session.transcript", {"id": s["id"]})["entries"]
    big = [e for e in entries if e["data"].get("truncated")]
    assert big and big[0]["data"]["bytes"] > 10_000_000
    full = bgd.rpc("session.transcript", {"id": s["id"], "since": big[0]["n"] - 1, "limit": 1, "full": True})
    text = full["entries"][0]["data"]["message"]["content"][0]["text"]
    assert len(text) >= 10 * 1024 * 1024 - 10


def test_error_result_fails_with_the_agents_message(running_bgd):
    bgd = running_bgd
    s = bgd.dispatch("fail Not logged in · Please run /login")
    s = bgd.wait_state(s["id"], "failed")
    assert s["error"] == "Not logged in · Please run /login"


def test_unknown_line_types_are_kept(running_bgd):
    bgd = running_bgd
    s = bgd.dispatch("unknown; say ok")
    bgd.wait_state(s["id"], "completed")
    entries = bgd.ctl_json("logs", s["id"])
    assert any(e["data"].get("type") == "weird_future_type" for e in entries)


def test_command_backend(bgd):
    script = "import sys; t = sys.argv[1]; print('got:', t); sys.exit(1 if 'boom' in t else 0)"
    bgd.write_config(f'[agents.py]\nbackend = "command"\ncommand = [{json.dumps(sys.executable)}, "-c", '
                     f'{json.dumps(script)}, "{{prompt}}"]\n'
                     f'[agents.stdin]\nbackend = "command"\ncommand = [{json.dumps(sys.executable)}, "-c", '
                     f'"import sys; print(sys.stdin.read().upper())"]\n')
    bgd.start()
    s = bgd.dispatch("it's $(not) a shell; rm -rf /", agent="py")
    s = bgd.wait_state(s["id"], "completed")
    assert s["last_message"] == "got: it's $(not) a shell; rm -rf /"
    s = bgd.dispatch("boom", agent="py")
    s = bgd.wait_state(s["id"], "failed")
    assert s["error"].startswith("agent exited with code 1")
    s = bgd.dispatch("via stdin", agent="stdin")
    s = bgd.wait_state(s["id"], "completed")
    assert s["last_message"] == "VIA STDIN"
    assert bgd.ctl("reply", s["id"], "again").returncode == 0
    s = bgd.wait_session(s["id"], lambda x: x["state"] == "completed" and x["last_message"] == "AGAIN")


def test_an_idle_agent_is_let_go_and_a_reply_resumes_it(bgd, tmp_path):
    log = tmp_path / "argv.log"
    bgd.write_config("")
    config = bgd.config_dir / "config.toml"
    config.write_text(config.read_text().replace("idle_timeout_s = 30", "idle_timeout_s = 0.3"))
    bgd.start(extra_env={"FAKE_CLAUDE_ARGV_LOG": str(log)})
    s = bgd.dispatch("say first")
    # The turn ends, then after idle_timeout_s the process is let go (its stdin closed).
    s = bgd.wait_session(s["id"], lambda x: x["state"] == "completed" and x["pid"] is None)
    assert bgd.ctl("reply", s["id"], "say second").returncode == 0
    s = bgd.wait_session(s["id"], lambda x: x["state"] == "completed" and x["last_message"] == "second")
    starts = [json.loads(line)["argv"] for line in log.read_text().splitlines()]
    assert len(starts) == 2 and "--session-id" in starts[0]
    assert starts[1][starts[1].index("--resume") + 1] == s["agent_session_id"]


def test_status_counts_follow_every_state_change_and_removal(running_bgd):
    # daemon.status keeps its per-state tally between changes; it must never be stale.
    bgd = running_bgd

    def counts():
        status = bgd.rpc("daemon.status")
        return {k: v for k, v in status["counts"].items() if v}, status["sessions"]

    assert counts() == ({}, 0)
    asking = bgd.dispatch('tool Bash {"command": "ls"}')
    bgd.wait_state(asking["id"], "needs_input")
    assert counts() == ({"needs_input": 1}, 1)
    done = bgd.dispatch("say hi")
    bgd.wait_state(done["id"], "completed")
    assert counts() == ({"needs_input": 1, "completed": 1}, 2)
    assert bgd.ctl("approve", asking["id"]).returncode == 0
    bgd.wait_state(asking["id"], "completed")
    assert counts() == ({"completed": 2}, 2)
    assert bgd.ctl("rm", done["id"]).returncode == 0
    assert counts() == ({"completed": 1}, 1)
