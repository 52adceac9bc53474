"""Routines end to end: a real bgd, bgctl, an HTTP client (httpx) and the fake agent, with local bare
repositories as remotes. A run clones fresh, runs autonomously, pushes only where it may, keeps its
secrets out of everything it stores, and reports its outcome apart from its status."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx

from routine_helpers import git, make_remote, start_routine_daemon, transcript_text, wait_run

PUSH = ("sh git checkout -q -b claude/fix && echo fixed > fix.txt && git add fix.txt && "
        "git commit -q -m 'Fix the thing' && git push -q origin claude/fix; "
        "sh git push origin HEAD:main; say done")


def routine(name: str, remote: Path, prompt: str, *, triggers: str = "[[routines.{name}.triggers]]\napi = true\n",
            extra: str = "") -> str:
    return (f'[routines.{name}]\nprompt = {json.dumps(prompt)}\nrepos = ["{remote}"]\n{extra}\n'
            + triggers.format(name=name))


def fire(url: str, name: str, token: str, text: str | None = None, **kw) -> httpx.Response:
    return httpx.post(f"{url}/v1/routines/{name}/fire", headers={"Authorization": f"Bearer {token}", **kw.pop("headers", {})},
                      json={"text": text} if text is not None else None, timeout=60, **kw)


def test_an_api_fire_runs_autonomously_in_a_fresh_clone(bgd, tmp_path):
    remote = make_remote(tmp_path)
    prompt = ('sh echo run=$BGAGENTS_RUN_ID routine=$BGAGENTS_ROUTINE url=$BGAGENTS_SESSION_URL && pwd && cat README.md; '
              'ask Which branch should I use?; say done')
    url = start_routine_daemon(bgd, routine("fixer", remote, prompt))
    token = bgd.ctl_json("routine", "token", "fixer")["token"]
    answer = fire(url, "fixer", token, "issue #12: the login page is slow")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["type"] == "routine_fire" and set(body) >= {"run_id", "session_id", "session_url"}
    assert body["session_url"] == f"{url}/s/{body['session_id']}"
    session = bgd.wait_state(body["session_id"], "completed", "failed")
    assert session["state"] == "completed" and session["origin"] == "routine:fixer"
    rec = wait_run(bgd, body["run_id"])
    workspace = bgd.state_dir / "runs" / body["run_id"]
    assert rec["status"] == "finished" and rec["outcome"] == "unreported"
    assert session["cwd"] == str(workspace / "app") and rec["repos"][0]["commit"] == git("rev-parse", "main", cwd=remote)

    entries = bgd.rpc("session.transcript", {"id": session["id"]})["entries"]
    prompt_sent = entries[0]["data"]["text"]
    assert "Text sent with this fire:\nissue #12: the login page is slow" in prompt_sent
    said = [e["data"]["message"]["content"][0]["text"] for e in entries
            if e["kind"] == "agent" and e["data"].get("type") == "assistant"
            and e["data"]["message"]["content"][0].get("type") == "text"]
    assert said[0] == (f"sh exit 0: run={body['run_id']} routine=fixer url={body['session_url']} | "
                       f"{workspace / 'app'} | # app")
    assert said[1] == "answer: nobody is watching this run: choose the safest option and say what you chose"
    decisions = [e["data"] for e in entries if e["kind"] == "control"]
    assert [(d["tool_name"], d["rule"]) for d in decisions] == [("Bash", "auto"), ("AskUserQuestion", "auto")]
    logs = bgd.ctl("logs", session["id"]).stdout
    assert "✓ auto-allowed Bash (nobody is watching this run)" in logs


def test_a_run_pushes_claude_fix_and_main_is_refused(bgd, tmp_path):
    remote = make_remote(tmp_path)
    url = start_routine_daemon(bgd, routine("fixer", remote, PUSH))
    token = bgd.ctl_json("routine", "token", "fixer")["token"]
    main_before = git("rev-parse", "main", cwd=remote)
    body = fire(url, "fixer", token).json()
    rec = wait_run(bgd, body["run_id"])
    assert rec["status"] == "finished"
    fix = git("rev-parse", "claude/fix", cwd=remote)
    assert git("rev-parse", "main", cwd=remote) == main_before
    message = git("log", "-1", "--format=%B", "claude/fix", cwd=remote)
    assert message.splitlines()[0] == "Fix the thing" and f"Bgagents-Run: {body['run_id']}" in message
    assert rec["pushed"] == [{"ref": "refs/heads/claude/fix", "old": "0" * 40, "new": fix, "remote": "origin",
                              "allowed": True, "deleted": False, "found": "clone", "repo": "app"}]
    assert [(r["ref"], r["verdict"]) for r in rec["refused_pushes"]] == [("refs/heads/main", "refused")]
    assert rec["policy_violations"] == []
    said = transcript_text(bgd, body["session_id"])
    assert "this run may push only to claude/*; refused refs/heads/main" in said
    table = bgd.ctl("routine", "runs", "fixer").stdout
    assert f"claude/fix 0000000→{fix[:7]}" in table and "main refused" in table
    assert "finished" in table and "? unreported" in table


def test_a_push_around_the_hook_is_flagged(bgd, tmp_path):
    remote = make_remote(tmp_path)
    sneaky = ("sh echo x > x && git add x && git commit -q -m sneaky && git push -q --no-verify origin HEAD:main; "
              "say done")
    url = start_routine_daemon(bgd, routine("sneaky", remote, sneaky))
    token = bgd.ctl_json("routine", "token", "sneaky")["token"]
    rec = wait_run(bgd, fire(url, "sneaky", token).json()["run_id"])
    assert [p["ref"] for p in rec["policy_violations"]] == ["refs/heads/main"]
    assert "main" in bgd.ctl("routine", "runs").stdout and "OUTSIDE push" in bgd.ctl("routine", "runs").stdout


def test_a_push_to_the_remotes_url_around_the_hook_is_flagged(bgd, tmp_path):
    # No remote-tracking ref moves and the hook never runs: only the remote, asked again after the
    # run, shows the push. Someone else's push during the run (a commit the clone never had) is not
    # the run's.
    remote = make_remote(tmp_path)
    other = tmp_path / "other"
    git("clone", "-q", str(remote), str(other), cwd=tmp_path)
    git("-c", "user.name=O", "-c", "user.email=o@example.com", "commit", "-q", "--allow-empty", "-m", "theirs",
        cwd=other)
    sneaky = (f"sh echo x > x && git add x && git commit -q -m sneaky && git push -q --no-verify {remote} HEAD:main "
              f"&& git push -q --no-verify {remote} HEAD:claude/ok && git -C {other} push -q origin HEAD:elsewhere; "
              "say done")
    url = start_routine_daemon(bgd, routine("sneaky", remote, sneaky))
    token = bgd.ctl_json("routine", "token", "sneaky")["token"]
    main_before = git("rev-parse", "main", cwd=remote)
    rec = wait_run(bgd, fire(url, "sneaky", token).json()["run_id"])
    main_after = git("rev-parse", "main", cwd=remote)
    assert main_after != main_before
    assert rec["refused_pushes"] == []
    assert [(p["ref"], p["old"], p["new"], p["remote"], p["allowed"], p["found"]) for p in rec["pushed"]] == [
        ("refs/heads/claude/ok", "0" * 40, main_after, str(remote), True, "remote"),
        ("refs/heads/main", main_before, main_after, str(remote), False, "remote")]
    assert [p["ref"] for p in rec["policy_violations"]] == ["refs/heads/main"]
    assert rec["repos"][0]["remote_refs"] == {"refs/heads/main": main_before}
    table = bgd.ctl("routine", "runs", "sneaky").stdout
    assert f"main {main_before[:7]}→{main_after[:7]}" in table and "OUTSIDE push" in table
    assert "pushed outside its push patterns: refs/heads/main" in bgd.log_path.read_text()


def test_an_env_file_secret_reaches_the_agent_and_nothing_else(bgd, tmp_path):
    remote = make_remote(tmp_path)
    secret = "s3cr3t-Value-9f1c"
    env_file = tmp_path / "fixer.env"
    env_file.write_text(f"API_KEY={secret}\nSHORT=ab\n")
    prompt = "sh echo key=$API_KEY short=$SHORT; say the key is $API_KEY; fail oops " + secret
    url = start_routine_daemon(bgd, routine("fixer", remote, prompt,
                                            extra=f'[routines.fixer.environment]\nenv_file = "{env_file}"\n'))
    token = bgd.ctl_json("routine", "token", "fixer")["token"]
    shown = bgd.ctl_json("routine", "show", "fixer")
    assert shown["environment"]["env"]["values"] == {"API_KEY": "***", "SHORT": "***"}
    body = fire(url, "fixer", token, f"use {secret} wisely").json()
    session = bgd.wait_state(body["session_id"], "completed", "failed")
    rec = wait_run(bgd, body["run_id"])
    text = transcript_text(bgd, body["session_id"])
    assert "sh exit 0: key=*** short=ab" in text and secret not in text
    assert secret not in json.dumps(session) and secret not in json.dumps(rec)
    assert session["error"] == "oops ***"
    assert secret not in bgd.ctl("routine", "show", "fixer").stdout
    assert secret not in bgd.ctl("events", "--since", "0", "--json").stdout
    bgd.stop()
    for path in list(bgd.state_dir.glob("bgd.sqlite3*")) + [bgd.log_path]:
        assert secret.encode() not in path.read_bytes(), path


def test_report_outcome_keeps_outcome_apart_from_status(bgd, tmp_path):
    remote = make_remote(tmp_path)
    report = ('mcp mcp__bgagents__report_outcome {"status": "needs_attention", "summary": "tests fail on main", '
              '"links": ["https://example.com/pr/1"]}; say reported')
    toml = routine("reporter", remote, report) + routine("quiet", remote, "say nothing to report")
    url = start_routine_daemon(bgd, toml, env={"FAKE_CLAUDE_ARGV_LOG": str(tmp_path / "argv.log")})
    tokens = {name: bgd.ctl_json("routine", "token", name)["token"] for name in ("reporter", "quiet")}
    reported = fire(url, "reporter", tokens["reporter"]).json()
    quiet = fire(url, "quiet", tokens["quiet"]).json()
    rec = wait_run(bgd, reported["run_id"], lambda r: r["outcome"] != "unreported" and r["status"] == "finished")
    assert (rec["status"], rec["outcome"], rec["summary"], rec["links"]) == (
        "finished", "needs_attention", "tests fail on main", ["https://example.com/pr/1"])
    assert bgd.rpc("session.get", {"id": reported["session_id"]})["outcome"] == "needs_attention"
    assert wait_run(bgd, quiet["run_id"])["outcome"] == "unreported"
    listing = bgd.ctl("ls").stdout
    rows = {line.split()[0]: line for line in listing.splitlines()[1:]}
    assert "! completed · needs attention" in rows[reported["session_id"]]
    assert "? completed · unreported" in rows[quiet["session_id"]] and "✓" not in rows[quiet["session_id"]]
    starts = [json.loads(line) for line in (tmp_path / "argv.log").read_text().splitlines()]
    argv = next(s["argv"] for s in starts)
    assert "--strict-mcp-config" in argv
    config = json.loads(argv[argv.index("--mcp-config") + 1])
    assert list(config["mcpServers"]) == ["bgagents"] and "--routine" in config["mcpServers"]["bgagents"]["args"]


def test_the_routines_mcp_config_is_given_beside_the_daemons(bgd, tmp_path):
    remote = make_remote(tmp_path)
    mcp = tmp_path / "mcp.json"
    mcp.write_text(json.dumps({"mcpServers": {"tracker": {"command": "tracker-mcp", "args": ["--stdio"]}}}))
    toml = routine("fixer", remote, "say hi", extra=f'[routines.fixer.connectors]\nmcp_config = "{mcp}"\n')
    url = start_routine_daemon(bgd, toml, env={"FAKE_CLAUDE_ARGV_LOG": str(tmp_path / "argv.log")})
    token = bgd.ctl_json("routine", "token", "fixer")["token"]
    wait_run(bgd, fire(url, "fixer", token).json()["run_id"])
    argv = json.loads((tmp_path / "argv.log").read_text().splitlines()[0])["argv"]
    servers = json.loads(argv[argv.index("--mcp-config") + 1])["mcpServers"]
    assert set(servers) == {"bgagents", "tracker"} and servers["tracker"]["args"] == ["--stdio"]


def test_a_repository_that_cannot_be_cloned(bgd, tmp_path):
    url = start_routine_daemon(bgd, routine("broken", tmp_path / "nowhere.git", "say hi"))
    token = bgd.ctl_json("routine", "token", "broken")["token"]
    answer = fire(url, "broken", token)
    assert answer.status_code == 502
    error = answer.json()["error"]
    assert error["type"] == "clone_failed" and "does not exist" in error["message"]
    rec = wait_run(bgd, answer.json()["run_id"])
    assert rec["status"] == "clone_failed" and rec["session_id"] is None and "nowhere.git" in rec["error"]
    run = bgd.ctl("routine", "run", "broken")
    assert run.returncode == 1 and "clone_failed" in run.stderr and "does not exist" in run.stderr
    assert bgd.rpc("daemon.status")["pid"]  # still serving


def test_an_env_file_that_went_missing_fails_the_setup(bgd, tmp_path):
    remote = make_remote(tmp_path)
    env_file = tmp_path / "x.env"
    env_file.write_text("A=12345\n")
    toml = routine("fixer", remote, "say hi", extra=f'[routines.fixer.environment]\nenv_file = "{env_file}"\n')
    start_routine_daemon(bgd, toml)
    env_file.unlink()
    rec = bgd.ctl_json("routine", "run", "fixer")
    assert rec["status"] == "setup_failed" and "env_file" in rec["error"] and "does not exist" in rec["error"]
    bad = bgd.ctl("routine", "add", "other", "--repo", str(remote), "--env-file", str(tmp_path / "none.env"), "hi")
    assert bad.returncode == 2 and "does not exist" in bad.stderr


def test_timeout_and_max_concurrent_runs(bgd, tmp_path):
    remote = make_remote(tmp_path)
    toml = (routine("slow", remote, "sleep 30; say late", extra='timeout = "1s"')
            + routine("quick", remote, "sleep 0.5; say ok"))
    url = start_routine_daemon(bgd, toml, "max_concurrent_runs = 1\n")
    first = bgd.ctl_json("routine", "run", "slow")
    token = bgd.ctl_json("routine", "token", "quick")["token"]
    queued = fire(url, "quick", token)
    assert first["status"] == "running"
    assert queued.status_code == 202 and queued.json()["status"] == "queued"
    assert queued.json()["reason"] == "concurrency_limit" and queued.json()["session_id"] is None
    done = wait_run(bgd, first["id"])
    assert done["status"] == "timed_out" and "timeout" in done["error"]
    assert bgd.rpc("session.get", {"id": done["session_id"]})["state"] == "stopped"
    later = wait_run(bgd, queued.json()["run_id"])
    assert later["status"] == "finished" and later["session_id"]


def test_a_daemon_restart_during_a_run(bgd, tmp_path):
    remote = make_remote(tmp_path)
    start_routine_daemon(bgd, routine("long", remote, "sleep 60; say late"))
    rec = bgd.ctl_json("routine", "run", "long")
    assert rec["status"] == "running"
    bgd.stop(signal.SIGKILL)
    bgd.start()
    after = bgd.rpc("routine.get_run", {"id": rec["id"]})
    assert after["status"] == "daemon_restarted" and rec["session_id"] in after["error"]
    session = bgd.rpc("session.get", {"id": rec["session_id"]})
    assert session["state"] == "failed"
    assert bgd.ctl("resume", rec["session_id"], "say resumed").returncode == 0
    assert bgd.wait_state(rec["session_id"], "completed")["last_message"] == "resumed"


def test_workspaces_are_pruned_and_sessions_stay(bgd, tmp_path):
    remote = make_remote(tmp_path)
    start_routine_daemon(bgd, routine("fixer", remote, "say hi"), "keep_workspaces_days = 0\n")
    rec = bgd.ctl_json("routine", "run", "fixer")
    workspace = Path(rec["workspace"])
    done = wait_run(bgd, rec["id"], lambda r: r.get("workspace_removed_at"))
    assert not workspace.exists() and done["status"] == "finished"
    assert bgd.rpc("session.get", {"id": rec["session_id"]})["state"] == "completed"
