"""Loops end to end: real bgd and bgctl processes, the fake agent, the real MCP server process.

Iteration timing is covered on the virtual clock (test_loops_runner.py); here the first iteration
runs at once and the recorded schedule (next_wake_at, next_fire_at) is checked, never waited for.
"""

from __future__ import annotations

import sys
from datetime import datetime

import pytest

from bgcore.jsonrpc import LIMIT_REACHED, RpcError

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from fake_claude import mcp_call  # noqa: E402


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _prompts(bgd, session_id: str) -> list[str]:
    entries = bgd.rpc("session.transcript", {"id": session_id})["entries"]
    return [e["data"]["text"] for e in entries if e["kind"] == "user"]


def test_loop_prints_its_id_and_the_schedule_it_chose(running_bgd):
    result = running_bgd.ctl("loop", "7m", "say hello")
    assert result.returncode == 0, result.stderr
    assert "every 6 minutes (rounded from 7m)" in result.stdout and "*/6 * * * *" in result.stdout
    loop = running_bgd.ctl_json("loop", "say hello", "every", "90", "minutes")
    assert (loop["cron"], loop["human"], loop["rounded_from"]) == ("0 */2 * * *", "every 2 hours", "every 90 minutes")
    assert len(loop["id"]) == 8 and loop["runs"] == 1
    session = running_bgd.wait_state(loop["session"], "sleeping")
    assert session["origin"] == "loop" and session["loop_runs"] == 1 and session["cwd"] == str(running_bgd.work)
    assert session["next_wake_at"] == loop["next_fire_at"] and _ts(loop["next_fire_at"]) % 7200 == 0
    assert _prompts(running_bgd, loop["session"]) == ["say hello"]


def test_a_bare_loop_sends_loop_md_read_afresh(running_bgd):
    md = running_bgd.work / ".claude" / "loop.md"
    md.parent.mkdir()
    md.write_text("say version one")
    loop = running_bgd.ctl_json("loop", "5m")
    session = running_bgd.wait_state(loop["session"], "sleeping")
    assert session["last_message"] == "version one" and loop["bare"]
    md.write_text("say version two")
    # The next fire of this loop is minutes away; a second bare loop on the session fires at once
    # and shows the file is read at fire time, not at creation.
    second = running_bgd.ctl_json("loop", "--session", loop["session"], "1h")
    running_bgd.wait_session(loop["session"], lambda s: s["loop_runs"] == 2 and s["state"] == "sleeping")
    assert _prompts(running_bgd, loop["session"]) == ["say version one", "say version two"]
    assert second["session"] == loop["session"]


def test_schedule_wakeup_through_the_real_mcp_server_sets_the_next_wake(running_bgd):
    prompt = 'mcp schedule_wakeup {"delay_seconds": 120, "reason": "waiting for CI"}'
    loop = running_bgd.ctl_json("loop", prompt)
    assert loop["kind"] == "dynamic"
    session = running_bgd.wait_state(loop["session"], "sleeping", timeout=30)
    assert session["last_message"].startswith("mcp: next wake of loop")
    [current] = running_bgd.ctl_json("loop", "ls", "--session", loop["session"])
    assert current["reason"] == "waiting for CI" and not current["fallback"]
    wake = _ts(session["next_wake_at"])
    assert wake == _ts(current["next_fire_at"])
    assert abs(wake - (_ts(current["last_fire_at"]) + 120)) < 30  # now+120 s, from inside the turn
    shown = running_bgd.ctl("loop", "ls").stdout
    assert "waiting for CI" in shown
    logs = running_bgd.ctl("logs", loop["session"]).stdout
    assert "waiting for CI" in logs


def test_the_fifty_first_loop_is_refused(running_bgd):
    first = running_bgd.ctl_json("loop", "1d", "say hi")
    for i in range(49):
        running_bgd.rpc("loop.create", {"session": first["session"], "interval": "1d", "prompt": f"say {i}"})
    result = running_bgd.ctl("loop", "--session", first["session"], "1d", "say one too many")
    assert result.returncode == 1
    assert "50" in result.stderr and "loop stop" in result.stderr
    with pytest.raises(RpcError) as err:
        running_bgd.rpc("loop.create", {"session": first["session"], "interval": "1d", "prompt": "x"})
    assert err.value.code == LIMIT_REACHED
    assert len(running_bgd.ctl_json("loop", "ls", "--session", first["session"])) == 50


def test_remind_schedules_a_one_shot(running_bgd):
    session = running_bgd.dispatch("say ready")
    running_bgd.wait_state(session["id"], "completed")
    reminder = running_bgd.ctl_json("remind", "--session", session["id"], "in", "45", "minutes",
                                    "push", "the", "release", "branch")
    assert reminder["kind"] == "once" and reminder["prompt"] == "push the release branch"
    assert abs(_ts(reminder["next_fire_at"]) - _ts(reminder["created_at"]) - 45 * 60) < 2
    shown = running_bgd.rpc("session.get", {"id": session["id"]})
    assert shown["state"] == "sleeping" and shown["next_wake_at"] == reminder["next_fire_at"]
    text = running_bgd.ctl("remind", "--cwd", str(running_bgd.work), "check the deploy at 23:59")
    assert text.returncode == 0 and text.stdout.startswith("reminder ")


@pytest.mark.parametrize("words, fragment", [(["0m", "say x"], "positive"), (["5x", "say x"], "unit")])
def test_bad_intervals_are_usage_errors(running_bgd, words, fragment):
    result = running_bgd.ctl("loop", *words)
    assert result.returncode == 2 and fragment in result.stderr and "example" in result.stderr
    assert running_bgd.rpc("loop.list") == [] and running_bgd.rpc("session.list") == []


def test_a_session_that_does_not_exist_or_was_removed_is_refused(running_bgd):
    result = running_bgd.ctl("loop", "--session", "nosuchid", "5m", "say x")
    assert result.returncode == 1 and "nosuchid" in result.stderr and "removed" in result.stderr
    session = running_bgd.dispatch("say hi")
    running_bgd.wait_state(session["id"], "completed")
    running_bgd.ctl("rm", session["id"])
    result = running_bgd.ctl("remind", "--session", session["id"], "in 5 minutes say x")
    assert result.returncode == 1 and "does not exist or was removed" in result.stderr
    assert running_bgd.rpc("loop.list") == []


def test_a_loop_md_that_is_not_utf8_is_refused_at_creation(running_bgd):
    md = running_bgd.work / ".claude" / "loop.md"
    md.parent.mkdir()
    md.write_bytes(b"caf\xe9\n")
    result = running_bgd.ctl("loop", "5m")
    assert result.returncode == 1 and "not UTF-8" in result.stderr and str(md) in result.stderr
    assert running_bgd.rpc("loop.list") == [] and running_bgd.rpc("session.list") == []
    assert running_bgd.ctl("loop", "5m", "say a prompt ignores loop.md").returncode == 0


def test_stop_ends_the_loops_resume_restores_them_rm_deletes_them(running_bgd):
    loop = running_bgd.ctl_json("loop", "5m", "say tick")
    running_bgd.wait_state(loop["session"], "sleeping")
    assert running_bgd.ctl("stop", loop["session"]).returncode == 0
    [suspended] = running_bgd.rpc("loop.list")
    assert suspended["suspended"]
    with pytest.raises(RpcError) as err:
        running_bgd.rpc("loop.create", {"session": loop["session"], "interval": "5m", "prompt": "x"})
    assert "stopped" in err.value.message
    assert running_bgd.ctl("resume", loop["session"]).returncode == 0
    session = running_bgd.wait_state(loop["session"], "sleeping")
    [restored] = running_bgd.rpc("loop.list")
    assert not restored["suspended"] and session["next_wake_at"] == restored["next_fire_at"]
    assert running_bgd.ctl("rm", loop["session"]).returncode == 0
    assert running_bgd.rpc("loop.list") == []


def test_loop_stop_and_a_daemon_restart(bgd):
    bgd.start()
    keep = bgd.ctl_json("loop", "5m", "say keep")
    gone = bgd.ctl_json("loop", "--session", keep["session"], "1h", "say gone")
    bgd.wait_session(keep["session"], lambda s: s["state"] == "sleeping" and s["loop_runs"] == 2)
    assert bgd.ctl("loop", "stop", gone["id"]).returncode == 0
    assert bgd.ctl("loop", "stop", gone["id"]).returncode == 1
    bgd.stop()
    bgd.start()
    [after] = bgd.rpc("loop.list")
    assert after["id"] == keep["id"] and after["next_fire_at"] is not None
    session = bgd.rpc("session.get", {"id": keep["session"]})
    assert session["state"] == "sleeping" and session["next_wake_at"] == after["next_fire_at"]


def test_the_command_backend_gets_a_fixed_ten_minute_interval(running_bgd):
    running_bgd.write_config('[agents.echo]\nbackend = "command"\ncommand = ["echo", "{prompt}"]\n')
    running_bgd.rpc("daemon.reload")
    result = running_bgd.ctl("loop", "--agent", "echo", "check the queue")
    assert result.returncode == 0, result.stderr
    assert "every 10 minutes" in result.stdout and "10-minute" in result.stdout


def test_an_mcp_call_for_an_ended_session_gets_a_clear_error(running_bgd):
    session = running_bgd.dispatch("say hi")
    running_bgd.wait_state(session["id"], "completed")
    conf = {"command": sys.executable, "args": ["-m", "bgd.agents.mcp_server", "--session", session["id"]],
            "env": {"BGD_SOCKET": str(running_bgd.socket)}}
    ok, text = mcp_call(conf, "cron_list", {})
    assert ok and text == "no scheduled prompts"
    running_bgd.ctl("stop", session["id"])
    ok, text = mcp_call(conf, "schedule_wakeup", {"delay_seconds": 60, "reason": "x"})
    assert not ok and "has ended (stopped)" in text
    running_bgd.ctl("rm", session["id"])
    ok, text = mcp_call(conf, "cron_create", {"cron": "*/5 * * * *", "prompt": "x"})
    assert not ok and "removed" in text
    assert running_bgd.rpc("daemon.status")["pid"]  # the daemon is unaffected
