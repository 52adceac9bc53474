"""Desktop tasks end to end (SPEC §7): real bgd and bgctl processes, tasks.toml on disk."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


from conftest import wait_until

PERSONAL = '''\
# My tasks (a comment that must survive bgctl)

[tasks.existing]   # kept as written
prompt   =   "say hello"
cwd = "WORK"
schedule = "manual"
'''


def wait_for(predicate, timeout: float = 5.0, what: str = "condition"):
    return wait_until(predicate, timeout, what)


def tasks_toml(bgd) -> Path:
    return bgd.config_dir / "tasks.toml"


def test_task_commands_keep_the_persons_file(bgd):
    tasks_toml(bgd).write_text(PERSONAL.replace("WORK", str(bgd.work)))
    bgd.start()
    added = bgd.ctl_json("task", "add", "nightly", "--schedule", "weekdays at 02:30", "--overlap", "buffer_one",
                         "update", "the", "lockfile")
    assert (added["name"], added["cron"], added["overlap"], added["cwd"], added["prompt"]) == (
        "nightly", "30 2 * * 1-5", "buffer_one", str(bgd.work), "update the lockfile")
    listing = bgd.ctl_json("task", "ls")
    assert [t["name"] for t in listing["tasks"]] == ["existing", "nightly"] and listing["errors"] == []
    assert bgd.ctl_json("task", "show", "nightly")["next_at"].endswith("+00:00")

    bgd.ctl_json("task", "edit", "nightly", "--schedule", "every 2 hours", "--model", "sonnet")
    assert bgd.ctl_json("task", "pause", "nightly")["status"] == "paused"
    assert bgd.ctl_json("task", "show", "nightly")["next_at"] is None
    assert bgd.ctl_json("task", "resume", "nightly")["status"] == "enabled"
    text = tasks_toml(bgd).read_text()
    assert text.startswith(PERSONAL.replace("WORK", str(bgd.work)))  # comments, order, spacing intact
    assert '[tasks.nightly]\nprompt = "update the lockfile"' in text and 'schedule = "every 2 hours"' in text
    assert 'model = "sonnet"' in text and "enabled = true" in text

    assert bgd.ctl_json("task", "rm", "nightly") == {"name": "nightly", "removed": True}
    assert tasks_toml(bgd).read_text().rstrip("\n") == PERSONAL.replace("WORK", str(bgd.work)).rstrip("\n")
    assert bgd.ctl("task", "show", "nightly").returncode == 1
    out = bgd.ctl("task", "ls").stdout
    assert "existing" in out and "manual" in out


def test_run_by_hand_and_history(running_bgd):
    bgd = running_bgd
    bgd.ctl_json("task", "add", "greet", "--schedule", "manual", "say hi from the task")
    run = bgd.ctl_json("task", "run", "greet")
    assert run["status"] == "ran" and run["manual"] is True
    session = bgd.wait_state(run["session_id"], "completed")
    assert (session["origin"], session["cwd"], session["name"]) == ("task:greet", str(bgd.work), "greet")
    (entry,) = bgd.ctl_json("task", "history", "greet")
    assert {k: entry[k] for k in ("status", "session_id", "catch_up", "reason")} == {
        "status": "ran", "session_id": run["session_id"], "catch_up": False, "reason": None}
    assert "due_at" in entry
    assert "ran" in bgd.ctl("task", "history", "greet").stdout


def test_bad_input_is_refused_and_nothing_is_lost(running_bgd, tmp_path):
    bgd = running_bgd
    bgd.ctl_json("task", "add", "keep-me", "--schedule", "hourly", "say hi")
    before = tasks_toml(bgd).read_text()
    cases = [
        (["--schedule", "fortnightly"], 2, "not a schedule"),                 # unknown preset
        (["--schedule", "0 25 * * *"], 2, "hour 25 is out of range 0-23"),    # cron field out of range
        (["--schedule", "every 20 seconds"], 2, "once a minute"),             # too frequent
        (["--schedule", "hourly", "--cwd", str(tmp_path / "nope")], 2, "is not a directory"),
    ]
    for flags, code, words in cases:
        result = bgd.ctl("task", "add", "new-task", *flags, "say", "hi")
        assert result.returncode == code and words in result.stderr, (flags, result.stderr)
    result = bgd.ctl("task", "add", "keep-me", "--schedule", "daily", "say", "hi")
    assert result.returncode == 1 and "already exists" in result.stderr                 # duplicate name
    result = bgd.ctl("task", "add", "Not_Kebab", "--schedule", "daily", "say", "hi")
    assert result.returncode == 2 and "kebab-case" in result.stderr
    result = bgd.ctl("task", "add", "in-git", "--worktree", "--schedule", "daily", "say", "hi")
    assert result.returncode == 2 and "not a git repository" in result.stderr
    bad = bgd.ctl("task", "add", "new-task", "--schedule", "every 7 parsecs", "say", "hi")
    assert bad.stderr.splitlines()[1:] == ["  every 7 parsecs", "          ^^^^^^^", "example: every 15 minutes"]
    assert tasks_toml(bgd).read_text() == before


def test_outside_edits_apply_and_broken_ones_keep_the_last_valid_tasks(running_bgd):
    bgd = running_bgd
    path = tasks_toml(bgd)

    def names():
        return [t["name"] for t in bgd.ctl_json("task", "ls")["tasks"]]

    def errors():
        return bgd.ctl_json("task", "ls")["errors"]

    good = f'[tasks.a]\nprompt = "say a"\ncwd = "{bgd.work}"\nschedule = "hourly"\n'
    path.write_text(good)
    wait_for(lambda: names() == ["a"], what="the new task")  # applied by the watcher, no reload asked

    path.write_text(good + '\n[tasks.b]\nprompt = "say b"\ncwd = "/no/such/dir"\nschedule = "every 7 parsecs"\n')
    cwd_error, schedule_error = wait_for(errors, what="the errors")
    assert (cwd_error["line"], cwd_error["task"]) == (8, "b") and "does not exist" in cwd_error["reason"]
    assert (schedule_error["line"], schedule_error["column"]) == (9, 21) and "parsecs" in schedule_error["reason"]
    out = bgd.ctl("task", "ls").stdout
    assert f"{path}:8:" in out and "does not exist" in out
    assert names() == ["a"]

    path.write_text("this is [not toml\n")  # a is kept as it was
    wait_for(lambda: any("not valid TOML" in e["reason"] for e in errors()), what="the TOML error")
    assert names() == ["a"] and errors()[0]["line"] == 1
    add = bgd.ctl("task", "add", "c", "--schedule", "hourly", "say", "c")
    assert add.returncode == 1 and "fix tasks.toml first" in add.stderr

    path.write_text(good + f'\n[tasks.a]\nprompt = "x"\ncwd = "{bgd.work}"\nschedule = "daily"\n')
    wait_for(lambda: any("duplicate task name 'a'" in e["reason"] for e in errors()), what="the duplicate")
    assert names() == ["a"]

    path.unlink()  # deleted while the daemon runs: reported, tasks kept
    wait_for(lambda: any("deleted" in e["reason"] for e in errors()), what="the deletion")
    assert names() == ["a"]

    path.write_text("")  # an empty file is how a person says "no tasks"
    wait_for(lambda: names() == [] and errors() == [], what="no tasks")


def test_a_one_time_task_fires_once_and_disables_itself(running_bgd):
    bgd = running_bgd
    task = bgd.ctl_json("task", "add", "soon", "--schedule", "in 2 seconds", "say once")
    assert task["kind"] == "once" and task["schedule"].startswith("once at ")
    wait_for(lambda: bgd.ctl_json("task", "show", "soon")["status"] == "ran", timeout=10, what="the fire")
    (run,) = bgd.ctl_json("task", "history", "soon")
    assert run["status"] == "ran" and run["session_id"]
    assert "enabled = false" in tasks_toml(bgd).read_text()


def test_approve_always_is_remembered_for_the_task(running_bgd):
    bgd = running_bgd
    bgd.ctl_json("task", "add", "bash-task", "--schedule", "manual", 'tool Bash {"command": "echo hi"}')
    first = bgd.ctl_json("task", "run", "bash-task")
    bgd.wait_state(first["session_id"], "needs_input")
    assert bgd.ctl("approve", first["session_id"], "--always").returncode == 0
    bgd.wait_state(first["session_id"], "completed")
    assert bgd.ctl_json("task", "show", "bash-task")["always_allow"] == ["Bash"]
    second = bgd.ctl_json("task", "run", "bash-task")
    session = bgd.wait_state(second["session_id"], "completed", "needs_input")
    assert session["state"] == "completed"


def test_worktree_runs_get_their_own_checkout(running_bgd, tmp_path):
    bgd = running_bgd
    repo = tmp_path / "repo"
    repo.mkdir()
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    for argv in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "first"]):
        subprocess.run(["git", "-C", str(repo), *argv], check=True, env=env)
    bgd.ctl_json("task", "add", "in-tree", "--worktree", "--cwd", str(repo), "--schedule", "manual", "say hi")
    run = bgd.ctl_json("task", "run", "in-tree")
    session = bgd.wait_state(run["session_id"], "completed")
    assert session["cwd"].startswith(str(bgd.state_dir / "worktrees" / "in-tree"))
    assert (Path(session["cwd"]) / ".git").is_file()  # a linked worktree, detached at HEAD
    head = subprocess.run(["git", "-C", session["cwd"], "rev-parse", "--abbrev-ref", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    assert head == "HEAD"


def test_restart_three_hours_later_runs_an_hourly_task_once(bgd):
    """libfaketime shifts the daemon's wall clock (not its monotonic one, which trio sleeps on)."""
    bgd.start()
    bgd.ctl_json("task", "add", "hourly", "--schedule", "hourly", "say hourly")
    bgd.stop()
    bgd.start(prefix=["faketime", "-f", "+3h"], extra_env={"FAKETIME_DONT_FAKE_MONOTONIC": "1"})
    def settled():
        rows = bgd.ctl_json("task", "history", "hourly")
        return rows if len(rows) >= 3 and all(r["status"] != "queued" for r in rows) else None

    # The skips are recorded in the scheduler's first pass; the catch-up is queued, then ran.
    history = wait_for(settled, what="the catch-up and the two skipped slots")
    assert [(r["status"], r["reason"], r["catch_up"]) for r in history] == [
        ("ran", None, True), ("skipped", "daemon_down", False), ("skipped", "daemon_down", False)]
    assert history[0]["due_at"] > history[1]["due_at"] > history[2]["due_at"]


def _git_repo(path: Path) -> Path:
    path.mkdir()
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    for argv in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "first"]):
        subprocess.run(["git", "-C", str(path), *argv], check=True, env=env)
    return path


def _listed_worktrees(repo: Path) -> str:
    return subprocess.run(["git", "-C", str(repo), "worktree", "list", "--porcelain"], capture_output=True,
                          text=True, check=True).stdout


def test_worktrees_are_pruned_once_their_session_ended_never_while_live(bgd, tmp_path):
    bgd.write_config("[tasks]\nkeep_worktrees_days = 0\n")
    bgd.start()
    repo = _git_repo(tmp_path / "repo")
    bgd.ctl_json("task", "add", "done", "--worktree", "--cwd", str(repo), "--schedule", "manual", "say hi")
    bgd.ctl_json("task", "add", "asks", "--worktree", "--cwd", str(repo), "--schedule", "manual", "tool Bash")
    asking = bgd.ctl_json("task", "run", "asks")
    asking_cwd = bgd.wait_state(asking["session_id"], "needs_input")["cwd"]
    done = bgd.ctl_json("task", "run", "done")
    done_cwd = bgd.wait_state(done["session_id"], "completed")["cwd"]

    # The ended run's worktree goes (directory and git's record of it); the live one stays.
    wait_until(lambda: not Path(done_cwd).exists() and done_cwd not in _listed_worktrees(repo),
               what="the ended run's worktree removed")
    [row] = bgd.ctl_json("task", "history", "done")
    assert row["worktree_pruned_at"] and row["worktree"] == done_cwd
    assert Path(asking_cwd).is_dir() and asking_cwd in _listed_worktrees(repo)
    assert bgd.ctl_json("task", "history", "asks")[0].get("worktree_pruned_at") is None

    # Once the live session ends, its worktree goes too.
    assert bgd.ctl("approve", asking["session_id"]).returncode == 0
    bgd.wait_state(asking["session_id"], "completed")
    wait_until(lambda: not Path(asking_cwd).exists() and asking_cwd not in _listed_worktrees(repo),
               what="the second worktree removed once its session ended")

