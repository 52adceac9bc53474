"""tasks.toml (SPEC §7): reading with line/column errors, and edits that keep a person's layout."""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest
import tomllib

from bgcore.tasks_file import (add_task_text, edit_task_text, load_tasks, remove_task_text)

NOW = datetime(2026, 11, 24, 10, 7, tzinfo=timezone.utc)
TZ = ZoneInfo("Europe/Berlin")

PERSONAL = '''\
# My tasks. Keep this comment!

[tasks.nightly-deps]   # the big one
description = "bump deps"
prompt = "update the lockfile"  # why: renovate is too noisy
cwd = "/tmp"
schedule = "weekdays at 02:30"

# Reports go to the team on Fridays.
[tasks.weekly-report]
prompt   =   "write the report"
cwd = "/tmp"
schedule = "weekly on friday at 17:00"
overlap = "buffer_one"
'''


def load(text: str, **kw):
    return load_tasks(text, "tasks.toml", NOW, TZ, **kw)


def test_reads_every_field_and_the_header_line():
    tasks, errors = load(PERSONAL)
    assert errors == []
    assert list(tasks) == ["nightly-deps", "weekly-report"]
    deps = tasks["nightly-deps"]
    assert (deps.schedule.cron, deps.cwd, deps.line, deps.enabled, deps.overlap) == ("30 2 * * 1-5", "/tmp", 3, True, "skip")
    assert tasks["weekly-report"].overlap == "buffer_one"
    assert tasks["weekly-report"].line == 10


def test_an_empty_file_means_no_tasks():
    assert load("") == ({}, [])
    assert load("# nothing yet\n") == ({}, [])


@pytest.mark.parametrize("schedule, line, column, words", [
    ('"every 7 parsecs"', 4, 21, "not a unit"),              # column of 'parsecs' in the value
    ('"fortnightly"', 4, 13, "not a schedule"),               # unknown preset
    ('"61 * * * *"', 4, 13, "out of range 0-59"),              # cron field out of range
    ('"every 30 seconds"', 4, 19, "once a minute"),            # more frequent than once a minute
    ('"* * * * * *"', 4, 23, "seconds are not supported"),
    ('"in 45 minutes"', 4, 13, "another time each time"),      # relative one-shot: ambiguous in a file
])
def test_bad_schedules_point_at_the_part_they_could_not_read(schedule, line, column, words):
    text = f'[tasks.a]\nprompt = "x"\ncwd = "/tmp"\nschedule = {schedule}\n'
    tasks, errors = load(text)
    assert tasks == {}
    (error,) = errors
    assert (error.line, error.column, error.task) == (line, column, "a")
    assert words in error.reason and "example:" in error.reason


def test_field_errors_name_the_line_and_the_good_tasks_stay():
    text = PERSONAL + '''
[tasks.broken]
prompt = "x"
cwd = "/no/such/dir"
schedule = "hourly"

[tasks.Not_Kebab]
prompt = "x"
cwd = "/tmp"
schedule = "hourly"

[tasks.typo]
promt = "x"
cwd = "/tmp"
schedule = "hourly"
'''
    tasks, errors = load(text)
    assert list(tasks) == ["nightly-deps", "weekly-report"]
    by_task = {e.task: e for e in errors}
    assert by_task["broken"].line == 18 and "does not exist" in by_task["broken"].reason
    assert by_task["Not_Kebab"].line == 21 and "kebab-case" in by_task["Not_Kebab"].reason
    assert by_task["typo"].line == 27 and "did you mean 'prompt'" in by_task["typo"].reason
    assert not any(e.fatal for e in errors)


def test_duplicate_names_and_text_that_is_not_toml_are_fatal():
    tasks, errors = load(PERSONAL + '\n[tasks.nightly-deps]\nprompt = "again"\n')
    assert tasks == {} and errors[0].fatal and errors[0].line == 16
    assert "duplicate task name 'nightly-deps' (first defined on line 3)" in errors[0].reason
    tasks, errors = load("this is not toml at all\n")
    assert tasks == {} and errors[0].fatal and errors[0].line == 1 and "not valid TOML" in errors[0].reason


def test_other_checks():
    base = '[tasks.a]\ncwd = "/tmp"\nschedule = "hourly"\n'
    cases = {
        base: "needs a prompt",
        base + 'prompt = "x"\nprompt_file = "p.md"\n': "both prompt and prompt_file",
        base + 'prompt = "x"\noverlap = "sometimes"\n': "overlap",
        base + 'prompt = "x"\ntimezone = "Mars/Olympus"\n': "unknown timezone",
        base + 'prompt = "x"\npermission_mode = "yolo"\n': "permission_mode",
        base + 'prompt = "x"\nworktree = "yes"\n': "true or false",
        '[tasks.a]\nprompt = "x"\nschedule = "hourly"\n': "needs cwd",
        '[tasks.a]\nprompt = "x"\ncwd = "/tmp"\n': "needs a schedule",
        'tasks = 3\n': "must be a table",
        'task = {}\n': "did you mean 'tasks'",
    }
    for text, words in cases.items():
        _, errors = load(text, agents={"claude"})
        assert errors and words in errors[0].reason, (text, errors)
    _, errors = load(base + 'prompt = "x"\nagent = "gpt"\n', agents={"claude"})
    assert "unknown agent 'gpt'" in errors[0].reason


def test_a_reload_reuses_unchanged_tasks():
    first, _ = load(PERSONAL)
    checked = []
    second, _ = load(PERSONAL.replace("bump deps", "bump the deps"), previous=first,
                     isdir=lambda p: checked.append(p) or True)
    assert second["weekly-report"] is first["weekly-report"]
    assert second["nightly-deps"] is not first["nightly-deps"] and checked == ["/tmp"]


def test_add_edit_remove_keep_comments_order_and_formatting():
    added = add_task_text(PERSONAL, "new-one", {"prompt": "p", "cwd": "/tmp", "schedule": "daily", "worktree": True})
    assert added.startswith(PERSONAL.rstrip("\n"))
    assert added.endswith('[tasks.new-one]\nprompt = "p"\ncwd = "/tmp"\nschedule = "daily"\nworktree = true\n')

    edited = edit_task_text(added, "nightly-deps", {"schedule": "hourly", "enabled": False, "description": None})
    assert '# the big one' in edited and '# why: renovate is too noisy' in edited
    assert 'schedule = "hourly"\nenabled = false\n' in edited and "bump deps" not in edited
    assert edited.index("nightly-deps") < edited.index("weekly-report") < edited.index("new-one")
    assert 'prompt   =   "write the report"' in edited  # the other tables untouched, byte for byte
    assert edited.split("[tasks.weekly-report]")[1] == added.split("[tasks.weekly-report]")[1]

    removed = remove_task_text(edited, "weekly-report")
    assert "weekly-report" not in removed and "Reports go to the team" not in removed
    assert "# My tasks. Keep this comment!" in removed and "[tasks.new-one]" in removed
    data = tomllib.loads(removed)["tasks"]
    assert list(data) == ["nightly-deps", "new-one"] and data["nightly-deps"]["enabled"] is False


def test_edit_falls_back_for_other_layouts():
    text = '[tasks]\n# inline style\na = { prompt = "x", cwd = "/tmp", schedule = "hourly" }\n'
    edited = edit_task_text(text, "a", {"enabled": False})
    assert "# inline style" in edited and tomllib.loads(edited)["tasks"]["a"]["enabled"] is False
    assert tomllib.loads(remove_task_text(text, "a")) == {"tasks": {}}
