"""`bgctl routine ...` against a real daemon: edits that keep routines.toml as written (byte for byte),
every bad input with a clear error, the last valid routines working while the file is broken."""

from __future__ import annotations

import json

import pytest

from conftest import wait_until
from routine_helpers import ROUTINE_CONFIG, make_remote

HAND_WRITTEN = '''# My routines. Comments and layout here are mine.

[routines.nightly]   # every night
description = "the nightly sweep"
prompt = "say swept"
repos = ["{remote}"]

# at three
[[routines.nightly.triggers]]
schedule = "daily at 03:00"

# keep this comment
'''


@pytest.fixture
def cli(bgd, tmp_path):
    remote = make_remote(tmp_path)
    bgd.write_config(ROUTINE_CONFIG)
    path = bgd.config_dir / "routines.toml"
    path.write_text(HAND_WRITTEN.format(remote=remote))
    bgd.start()
    return bgd, remote, path


def test_add_edit_pause_resume_rm_keep_the_file_as_written(cli, tmp_path):
    bgd, remote, path = cli
    original = path.read_text()
    env = tmp_path / "review.env"
    env.write_text("TOKEN=abcdef123\n")
    added = bgd.ctl("routine", "add", "pr-review", "--repo", f"{remote}#main", "--github",
                    "pull_request.opened,pull_request.synchronize", "--filter", "base=main", "--filter",
                    "title:matches=.*hotfix.*", "--filter", "labels:exclude=wip", "--filter", "draft=false",
                    "--api", "--push", "claude/*", "--env-file", str(env), "--timeout", "30m",
                    "review", "the", "pull", "request")
    assert added.returncode == 0, added.stderr
    assert added.stdout.startswith("added pr-review · api; github pull_request.opened,pull_request.synchronize")
    text = path.read_text()
    assert text.startswith(original.rstrip("\n") + "\n\n[routines.pr-review]\n")
    r = bgd.ctl_json("routine", "show", "pr-review")
    gh = next(t for t in r["triggers"] if t["kind"] == "github")
    assert gh["filters"] == {"base": "main", "title": {"matches": ".*hotfix.*"}, "labels": {"exclude": ["wip"]},
                             "draft": False}
    assert r["repos"] == [{"url": str(remote), "ref": "main"}] and r["timeout_s"] == 1800
    assert r["prompt"] == "review the pull request" and r["environment"]["env"]["values"] == {"TOKEN": "***"}

    after_add = path.read_text()
    assert bgd.ctl("routine", "edit", "nightly", "--model", "sonnet").returncode == 0
    assert path.read_text() == after_add.replace('repos = ["' + str(remote) + '"]\n\n# at three',
                                                 'repos = ["' + str(remote) + '"]\nmodel = "sonnet"\n\n# at three')
    edited = path.read_text()
    assert bgd.ctl("routine", "pause", "nightly").returncode == 0
    assert path.read_text() == edited.replace('model = "sonnet"\n', 'model = "sonnet"\nenabled = false\n')
    assert bgd.ctl_json("routine", "show", "nightly")["status"] == "paused"
    assert bgd.ctl("routine", "resume", "nightly").returncode == 0
    assert path.read_text() == edited
    assert bgd.ctl("routine", "edit", "nightly", "--schedule", "weekdays at 9am").returncode == 0
    assert '# at three\n[[routines.nightly.triggers]]\nschedule = "daily at 03:00"' not in path.read_text()
    assert bgd.ctl_json("routine", "show", "nightly")["triggers"][0]["schedule"] == "weekdays at 9am"
    assert bgd.ctl("routine", "rm", "pr-review").returncode == 0
    assert "pr-review" not in path.read_text() and "# keep this comment" in path.read_text()
    listing = bgd.ctl("routine", "ls").stdout
    assert listing.splitlines()[1].startswith("nightly  enabled  weekdays at 9am")


@pytest.mark.parametrize("args, needle", [
    (["--schedule", "every 30 minutes"], "fires every 30 minutes; routines fire at most once an hour"),
    (["--github", "push"], "unknown GitHub event 'push'"),
    (["--github", "pull_request.opened", "--filter", "colour=red"], "unknown GitHub filter 'colour'"),
    (["--github", "pull_request.opened", "--filter", "title:matches=(hotfix"], "not a valid regular expression"),
    (["--setup", "   "], "setup of routine 'x' is empty"),
    (["--network", "pypi.org,bad_name.com"], "network: 'bad_name.com' is not a host name"),
    (["--push", "main branch"], "characters a branch name cannot have"),
    (["--schedule", "every fortnight"], "could not read"),
])
def test_bad_routines_are_refused_and_change_nothing(cli, args, needle):
    bgd, remote, path = cli
    before = path.read_text()
    result = bgd.ctl("routine", "add", "x", "--repo", str(remote), *args, "say", "hi")
    assert result.returncode == 2, result
    assert needle in result.stderr and result.stderr.startswith("bgctl: ")
    assert path.read_text() == before


def test_usage_errors(cli):
    bgd, remote, _ = cli
    assert "missing --repo" in bgd.ctl("routine", "add", "x", "say", "hi").stderr
    assert "missing prompt" in bgd.ctl("routine", "add", "x", "--repo", str(remote)).stderr
    assert "--filter belongs to a GitHub trigger" in bgd.ctl("routine", "add", "x", "--repo", str(remote),
                                                              "--filter", "base=main", "hi").stderr
    taken = bgd.ctl("routine", "add", "nightly", "--repo", str(remote), "hi")
    assert taken.returncode == 1 and "already exists" in taken.stderr
    missing = bgd.ctl("routine", "show", "nightlyy")
    assert missing.returncode == 1 and "no routine 'nightlyy' (did you mean nightly?)" in missing.stderr


def test_a_broken_edit_is_reported_and_the_last_routines_keep_working(cli):
    bgd, remote, path = cli
    good = path.read_text()
    path.write_text(good.replace('schedule = "daily at 03:00"', 'schedule = "every 5 minutes"'))
    wait_until(lambda: bgd.rpc("routine.list")["errors"], what="the error to be seen")
    listing = bgd.ctl("routine", "ls")
    assert f"error: {path}:10: schedule 'every 5 minutes' of trigger 1 of routine 'nightly'" in listing.stdout
    assert "the last valid definition of each routine keeps working" in listing.stdout
    assert bgd.ctl_json("routine", "show", "nightly")["triggers"][0]["schedule"] == "daily at 03:00"
    run = bgd.ctl("routine", "run", "nightly")
    assert run.returncode == 0 and run.stdout.startswith("started · run ")
    path.write_text("[routines.nightly\n")  # not TOML at all
    wait_until(lambda: any(e["line"] == 1 for e in bgd.rpc("routine.list")["errors"]), what="the TOML error")
    assert bgd.rpc("routine.list")["routines"][0]["name"] == "nightly"
    edit = bgd.ctl("routine", "edit", "nightly", "--model", "x")
    assert edit.returncode == 1 and "fix routines.toml first" in edit.stderr
    path.write_text(good)
    wait_until(lambda: not bgd.rpc("routine.list")["errors"], what="the fix to be seen")


def test_run_token_runs_and_json(cli):
    bgd, remote, _ = cli
    run = bgd.ctl("routine", "run", "nightly", "--text", "only the docs")
    assert run.returncode == 0
    _, run_id, session_id, url = [part.split()[-1] for part in run.stdout.strip().split(" · ")]
    assert url.endswith(f"/s/{session_id}")
    assert bgd.wait_state(session_id, "completed")["origin"] == "routine:nightly"
    token = bgd.ctl("routine", "token", "nightly")
    assert token.stdout.strip().startswith("bgr_") and "curl -X POST" in token.stderr
    assert "has no API trigger yet" in token.stderr
    runs = json.loads(bgd.ctl("--json", "routine", "runs").stdout)
    assert runs[0]["id"] == run_id and runs[0]["trigger"] == "manual"
    table = bgd.ctl("routine", "runs", "nightly").stdout
    assert table.splitlines()[0].split() == ["RUN", "ROUTINE", "TRIGGER", "WHEN", "STATUS", "OUTCOME", "SESSION",
                                             "PREPARED", "BLOCKED", "PUSHED"]
    assert bgd.ctl("routine", "deliveries").stdout.strip() == "no GitHub delivery yet"
    assert json.loads(bgd.ctl("--json", "routine", "ls").stdout)["routines"][0]["name"] == "nightly"


def test_the_agent_view_marks_a_routine_session_by_its_outcome():
    from datetime import datetime, timezone
    from bgctl import agents_model as m
    now = datetime(2026, 6, 1, tzinfo=timezone.utc)
    base = {"id": "abcd1234", "state": "completed", "cwd": "/state/runs/r1/app", "name": "pr-review",
            "last_message": "All tests pass", "created_at": now.isoformat(), "cost_usd": 0.0}
    quiet = m.row_text({**base, "outcome": "unreported"}, now, 100)
    assert quiet.startswith("? ") and "[unreported] All tests pass" in quiet
    assert m.row_text({**base, "outcome": "done"}, now, 100).startswith("✓ ")
    assert m.row_text({**base, "outcome": "failed"}, now, 100).startswith("✗ ")
    assert m.row_text(base, now, 100).startswith("✓ ")  # not a routine's run
