"""routines.toml: reading every field, every error with its line, and edits that keep the file as written."""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, strategies as st

from bgcore.routines_edit import (add_routine_text, edit_routine_text, find_block, has_routine, remove_routine_text,
                                  set_trigger_enabled_text)
from bgcore.routines_file import (DEFAULT_HOURLY_CAP, DEFAULT_RATE_LIMIT, ApiTrigger, GitHubTrigger, ScheduleTrigger,
                                  load_routines, parse_duration, read_env_text, stagger_seconds)

NOW = datetime(2026, 3, 2, 8, 0, tzinfo=timezone.utc)
UTC = ZoneInfo("UTC")
PATH = "/home/me/.config/bgagents/routines.toml"

FULL = '''# Routines of this machine.
[routines.pr-review]   # the reviewer
description = "review pull requests"
prompt = "Review the pull request below."
repos = ["https://github.com/acme/api", { url = "~/src/shared", ref = "v2" }, "git@github.com:acme/docs.git"]
agent = "claude"
model = "sonnet"
push = ["claude/*", "refs/tags/v*"]
timeout = "1h 30m"
overlap = "skip"
enabled = true
timezone = "Europe/Berlin"

[routines.pr-review.environment]
env_file = "env/pr-review.env"   # dotenv
network = "full"

[routines.pr-review.connectors]
mcp_config = "~/mcp/review.json"

[[routines.pr-review.triggers]]
schedule = "weekdays at 9am"

[[routines.pr-review.triggers]]
api = true
rate_limit = 10

[[routines.pr-review.triggers]]
github = ["pull_request.opened", "pull_request.synchronize"]
repository = "acme/api"
base = "main"
title = { matches = ".*hotfix.*" }
labels = { include = ["needs-review"], exclude = ["wip"] }
draft = false
hourly_cap = 5

[[routines.pr-review.triggers]]
github = "release.published"
tag = { starts_with = "v" }
prerelease = false
'''


def load(text: str, **kw):
    kw.setdefault("isfile", lambda p: True)
    return load_routines(text, PATH, NOW, UTC, **kw)


def only_error(text: str, **kw):
    routines, errors = load(text, **kw)
    assert len(errors) == 1, errors
    return errors[0]


def test_every_field_is_read():
    routines, errors = load(FULL, agents={"claude"})
    assert errors == []
    r = routines["pr-review"]
    assert r.description == "review pull requests"
    assert [(x.url, x.ref) for x in r.repos] == [("https://github.com/acme/api", None), ("~/src/shared", "v2"),
                                                 ("git@github.com:acme/docs.git", None)]
    assert (r.agent, r.model, r.push, r.timeout_s, r.overlap, r.enabled) == (
        "claude", "sonnet", ("claude/*", "refs/tags/v*"), 5400.0, "skip", True)
    assert r.tz.key == "Europe/Berlin" and r.line == 2
    assert r.env_path == "/home/me/.config/bgagents/env/pr-review.env" and r.network == "full"
    assert r.mcp_config == "~/mcp/review.json" and r.mcp_path.endswith("/mcp/review.json")
    sched, api, gh, rel = r.triggers
    assert isinstance(sched, ScheduleTrigger) and sched.schedule.cron == "0 9 * * 1-5" and sched.line == 21
    assert isinstance(api, ApiTrigger) and api.rate_limit == 10 and api.line == 24
    assert isinstance(gh, GitHubTrigger) and gh.events == (("pull_request", "opened"), ("pull_request", "synchronize"))
    assert [f.field for f in gh.filters] == ["repository", "base", "title", "labels", "draft"] and gh.hourly_cap == 5
    assert rel.events == (("release", "published"),) and rel.hourly_cap == DEFAULT_HOURLY_CAP
    data = r.to_json()
    assert data["triggers"][2]["filters"]["labels"] == {"include": ["needs-review"], "exclude": ["wip"]}
    assert data["environment"] == {"env_file": "env/pr-review.env", "network": "full"}


def test_defaults():
    routines, errors = load('[routines.a]\nprompt = "p"\nrepos = ["/srv/a"]\n[[routines.a.triggers]]\napi = true\n')
    assert errors == []
    r = routines["a"]
    assert (r.push, r.timeout_s, r.overlap, r.enabled, r.network, r.env_path) == (("claude/*",), 4 * 3600, "allow",
                                                                                   True, "full", None)
    assert r.triggers[0].rate_limit == DEFAULT_RATE_LIMIT


@pytest.mark.parametrize("body, line, needle", [
    ('prompt = "p"\nrepos = ["/a"]\ncolour = "red"', 4, "unknown field 'colour'"),
    ('prompt = "p"\nrepos = ["/a"]\npromt_file = "x"', 4, "did you mean 'prompt_file'?"),
    ('prompt = "p"', 1, "needs repos"),
    ('prompt = "p"\nrepos = []', 3, "repos of routine 'a' is empty"),
    ('prompt = "p"\nrepos = ["src/app"]', 3, "absolute path"),
    ('prompt = "p"\nrepos = ["/x/app", "/y/app.git"]', 3, "two repositories named 'app'"),
    ('repos = ["/a"]', 1, "needs a prompt"),
    ('prompt = "p"\nprompt_file = "x.md"\nrepos = ["/a"]', 3, "both prompt and prompt_file"),
    ('prompt = "p"\nrepos = ["/a"]\ntimeout = "forever"', 4, "timeout of routine 'a' must be cannot read"),
    ('prompt = "p"\nrepos = ["/a"]\ntimeout = 0', 4, "from 1 second to 7 days"),
    ('prompt = "p"\nrepos = ["/a"]\noverlap = "queue"', 4, "overlap of routine 'a' must be one of"),
    ('prompt = "p"\nrepos = ["/a"]\npush = ["claude/ *"]', 4, "characters a branch name cannot have"),
    ('prompt = "p"\nrepos = ["/a"]\ntimezone = "Mars/Base"', 4, "unknown timezone"),
    ('prompt = "p"\nrepos = ["/a"]\nagent = "gpt"', 4, "unknown agent 'gpt'"),
    ('prompt = "p"\nrepos = ["/a"]\nenabled = "yes"', 4, "enabled of routine 'a' must be true or false"),
])
def test_bad_fields(body, line, needle):
    error = only_error(f"[routines.a]\n{body}\n", agents={"claude"})
    assert needle in error.reason and error.line == line and error.routine == "a"
    assert str(error).startswith(f"{PATH}:{line}: ")


@pytest.mark.parametrize("trigger, needle, line", [
    ('schedule = "every 30 minutes"', "fires every 30 minutes; routines fire at most once an hour", 5),
    ('schedule = "*/15 * * * *"', "fires 4 times an hour", 5),
    ('schedule = "0,30 9 * * *"', "fires 2 times an hour", 5),
    ('schedule = "manual"', "remove this trigger instead", 5),
    ('schedule = "in 45 minutes"', "means another time each time the file is read", 5),
    ('schedule = "every fortnight"', "schedule of trigger 1 of routine 'a'", 5),
    ('github = ["pull_request.merged"]', 'use github = ["pull_request.closed"] with merged = true', 5),
    ('github = ["push"]', "unknown GitHub event 'push'", 5),
    ('github = ["pull_request.opend"]', "did you mean 'opened'?", 5),
    ('github = ["release"]\nlabels = ["x"]', "filter labels applies only to pull_request events", 6),
    ('github = ["pull_request"]\ncolour = "red"', "unknown GitHub filter 'colour'", 6),
    ('github = ["pull_request"]\ntitle = { matches = "(hotfix" }', "not a valid regular expression", 6),
    ('github = ["pull_request"]\ntitle = { like = "x" }', "unknown operator 'like'", 6),
    ('github = ["pull_request"]\nbase = { one_of = [] }', "base.one_of must be a non-empty list", 6),
    ('github = ["pull_request"]\ndraft = "no"', "filter draft must be true or false", 6),
    ('github = ["pull_request"]\nhourly_cap = 0', "hourly_cap of trigger 1", 6),
    ('api = false', "api of trigger 1 of routine 'a' must be true", 5),
    ('api = true\nrate_limit = -1', "rate_limit of trigger 1", 6),
    ('api = true\nschedule = "daily"', "needs exactly one of", 4),
    ('colour = "red"', "needs exactly one of", 4),
    ('schedule = "daily"\nat = "9"', "unknown field 'at' in trigger 1", 6),
])
def test_bad_triggers(trigger, needle, line):
    error = only_error(f'[routines.a]\nprompt = "p"\nrepos = ["/a"]\n[[routines.a.triggers]]\n{trigger}\n')
    assert needle in error.reason, error.reason
    assert error.line == line


def test_a_bad_regex_points_at_the_spot():
    error = only_error('[routines.a]\nprompt = "p"\nrepos = ["/a"]\n[[routines.a.triggers]]\n'
                       'github = ["pull_request"]\ntitle = { matches = ".*(hotfix.*" }\n')
    assert error.line == 6 and error.column == len('title = { matches = ".*(') and "position 2" in error.reason


def test_hourly_and_daily_schedules_are_fine():
    for spec in ("hourly", "every 2 hours", "0 * * * *", "30 9 * * 1-5", "weekly on monday at 10:00",
                 "once at 2026-12-24 18:00", "every 90 minutes"):
        routines, errors = load(f'[routines.a]\nprompt = "p"\nrepos = ["/a"]\n[[routines.a.triggers]]\nschedule = "{spec}"\n')
        assert errors == [], (spec, errors)


def test_two_api_triggers_are_refused():
    error = only_error('[routines.a]\nprompt = "p"\nrepos = ["/a"]\n[[routines.a.triggers]]\napi = true\n'
                       '[[routines.a.triggers]]\napi = true\n')
    assert "two api triggers" in error.reason and error.line == 7


def test_the_environment_fields_are_validated_naming_the_field():
    base = '[routines.a]\nprompt = "p"\nrepos = ["/a"]\n[routines.a.environment]\n'
    routines, errors = load(base + 'setup = "pip install -r requirements.txt"\nsetup_timeout = "20m"\n'
                                   'network = "trusted"\ngrant = ["~/.config/gh"]\n')
    assert errors == []
    a = routines["a"]
    assert (a.setup, a.setup_timeout_s, a.network, a.grant) == ("pip install -r requirements.txt", 1200.0, "trusted",
                                                                 ("~/.config/gh",))
    routines, errors = load(base + 'network = ["PyPI.org", "*.github.com", "pypi.org"]\nsetup_file = "s.sh"\n',
                            isfile=lambda p: True)
    assert errors == [] and routines["a"].network == ("pypi.org", "*.github.com")
    assert routines["a"].setup_path.endswith("/s.sh")
    error = only_error(base + 'network = ["pypi.org", "bad_name.org"]\n')
    assert "network: 'bad_name.org' is not a host name" in error.reason and error.line == 5
    assert "a wildcard may only open a name" in only_error(base + 'network = ["*.*.com"]\n').reason
    assert "is a URL" in only_error(base + 'network = ["https://pypi.org/simple"]\n').reason
    assert 'say network = "none"' in only_error(base + 'network = []\n').reason
    assert 'must be "none", "trusted", "full"' in only_error(base + 'network = "some"\n').reason
    error = only_error(base + 'setup = "a"\nsetup_file = "s.sh"\n', isfile=lambda p: True)
    assert "both setup and setup_file" in error.reason
    assert "does not exist" in only_error(base + 'setup_file = "s.sh"\n', isfile=lambda p: False).reason
    assert "has no setup script to limit" in only_error(base + 'setup_timeout = "5m"\n').reason
    assert "over 6 hours" in only_error(base + 'setup = "a"\nsetup_timeout = "7h"\n').reason
    assert "absolute paths" in only_error(base + 'grant = ["relative/path"]\n').reason
    routines, errors = load(base + 'network = "full"\n')
    assert errors == [] and routines["a"].network == "full"


def test_files_that_do_not_exist():
    text = ('[routines.a]\nprompt_file = "prompts/a.md"\nrepos = ["/a"]\n[routines.a.environment]\n'
            'env_file = "~/nope.env"\n[routines.a.connectors]\nmcp_config = "/etc/nope.json"\n')
    routines, errors = load(text, isfile=lambda p: False)
    assert routines == {}
    reasons = {e.line: e.reason for e in errors}
    assert "prompt_file 'prompts/a.md'" in reasons[2] and "/home/me/.config/bgagents/prompts/a.md" in reasons[2]
    assert "env_file '~/nope.env' of routine 'a' does not exist" in reasons[5]
    assert "mcp_config '/etc/nope.json'" in reasons[7]


def test_file_level_errors():
    error = only_error('[routines.a]\nprompt = "p"\nrepos = ["/a" "/b"]\n')
    assert error.fatal and error.line == 3 and error.reason.startswith("not valid TOML")
    error = only_error('[routines.a]\nprompt = "p"\nrepos = ["/a"]\n[routines.a]\nprompt = "q"\n')
    assert error.fatal and error.line == 4 and "duplicate routine name 'a' (first defined on line 1)" in error.reason
    routines, errors = load('[routine.a]\nprompt = "p"\n')
    assert "unknown top-level key 'routine' (did you mean 'routines'?)" in errors[0].reason
    error = only_error('[routines.Bad_Name]\nprompt = "p"\nrepos = ["/a"]\n')
    assert "not kebab-case" in error.reason and error.line == 1


def test_one_bad_routine_leaves_the_others():
    text = FULL + '\n[routines.broken]\nprompt = "p"\n'
    routines, errors = load(text)
    assert set(routines) == {"pr-review"} and [e.routine for e in errors] == ["broken"]


def test_previous_routines_are_reused_when_unchanged():
    first, _ = load(FULL)
    again, errors = load("# a comment\n" + FULL, previous=first)
    assert errors == [] and again["pr-review"].line == 3
    assert again["pr-review"].triggers[0].line == 22
    same, _ = load(FULL, previous=first)
    assert same["pr-review"] is first["pr-review"]


def test_durations():
    assert parse_duration("4h") == 14400
    assert parse_duration("1h 30m") == parse_duration("90 minutes") == 5400
    assert parse_duration(90) == 90 and parse_duration("2s") == 2
    for bad in ("", "soon", "5 parsecs", True, 0, 8 * 86400, "-1h"):
        with pytest.raises(ValueError):
            parse_duration(bad)


@given(st.integers(1, 7 * 24), st.sampled_from(["h", "hours", "hr"]))
def test_hours_read_as_hours(n, unit):
    assert parse_duration(f"{n}{unit}") == n * 3600


def test_stagger_is_deterministic_and_at_most_five_minutes():
    values = {stagger_seconds(f"routine-{i}") for i in range(200)}
    assert all(0 <= v < 300 for v in values) and len(values) > 100
    assert stagger_seconds("a") == stagger_seconds("a")


def test_env_files():
    assert read_env_text('A=1\nexport B="two words"\n# c\nC=\'x#y\' # note\nD=\n', "e.env") == {
        "A": "1", "B": "two words", "C": "x#y", "D": ""}
    with pytest.raises(ValueError) as info:
        read_env_text("A=1\nthis is secret text\n", "/x/e.env")
    assert str(info.value) == "/x/e.env:2: cannot read this line; write KEY=VALUE"


# ---------------------------------------------------------------- editing

LAYOUT = '''# my routines
[routines.other]
prompt = "o"   # keep me
repos = ["/srv/o"]

# the reviewer
[routines.pr-review]   # the reviewer
prompt = "review it"  # inline
repos = ["/srv/api"]

[routines.pr-review.environment]
env_file = "x.env"   # secrets

# at nine
[[routines.pr-review.triggers]]
schedule = "weekdays at 9am"

# hotfixes only
[[routines.pr-review.triggers]]
github = ["pull_request.opened"]
title = { matches = ".*hotfix.*" }   # only hotfixes

# trailing comment
[routines.z]
prompt = "z"
repos = ["/srv/z"]
'''


def test_an_edit_changes_only_what_it_changes():
    new = edit_routine_text(LAYOUT, "pr-review", {"model": "sonnet"})
    assert new == LAYOUT.replace('repos = ["/srv/api"]\n', 'repos = ["/srv/api"]\nmodel = "sonnet"\n')
    new = edit_routine_text(LAYOUT, "pr-review", {"prompt": "review it well"})
    assert new == LAYOUT.replace('prompt = "review it"  # inline', 'prompt = "review it well"  # inline')
    new = edit_routine_text(LAYOUT, "pr-review", {"environment": {"env_file": "y.env"}})
    assert new == LAYOUT.replace('env_file = "x.env"   # secrets', 'env_file = "y.env"   # secrets')


def test_pause_and_resume_write_enabled():
    paused = edit_routine_text(LAYOUT, "pr-review", {"enabled": False})
    assert paused == LAYOUT.replace('repos = ["/srv/api"]\n', 'repos = ["/srv/api"]\nenabled = false\n')
    resumed = edit_routine_text(paused, "pr-review", {"enabled": True})
    assert resumed == LAYOUT.replace('repos = ["/srv/api"]\n', 'repos = ["/srv/api"]\nenabled = true\n')
    assert edit_routine_text(paused, "pr-review", {"enabled": None}) == LAYOUT


def test_triggers_that_stay_are_left_as_written():
    same = [{"schedule": "weekdays at 9am"}, {"github": ["pull_request.opened"], "title": {"matches": ".*hotfix.*"}}]
    assert edit_routine_text(LAYOUT, "pr-review", {"triggers": same}) == LAYOUT
    added = edit_routine_text(LAYOUT, "pr-review", {"triggers": same + [{"api": True}]})
    assert added == LAYOUT.replace('title = { matches = ".*hotfix.*" }   # only hotfixes\n',
                                   'title = { matches = ".*hotfix.*" }   # only hotfixes\n\n'
                                   '[[routines.pr-review.triggers]]\napi = true\n')
    dropped = edit_routine_text(LAYOUT, "pr-review", {"triggers": same[1:]})
    assert dropped == LAYOUT.replace('# at nine\n[[routines.pr-review.triggers]]\nschedule = "weekdays at 9am"\n\n', "")
    none = edit_routine_text(LAYOUT, "pr-review", {"triggers": []})
    assert "triggers" not in none and none.startswith(LAYOUT[:LAYOUT.index("# at nine")])
    assert none.endswith("# trailing comment\n[routines.z]\nprompt = \"z\"\nrepos = [\"/srv/z\"]\n")
    routines, errors = load(none)
    assert errors == [] and routines["pr-review"].triggers == ()


def test_a_one_off_trigger_is_disabled_in_place():
    new = set_trigger_enabled_text(LAYOUT, "pr-review", 0, False)
    assert new == LAYOUT.replace('schedule = "weekdays at 9am"\n', 'schedule = "weekdays at 9am"\nenabled = false\n')
    assert set_trigger_enabled_text(new, "pr-review", 0, True) == LAYOUT


def test_remove_takes_the_comments_above_and_nothing_else():
    new = remove_routine_text(LAYOUT, "pr-review")
    assert new == LAYOUT[:LAYOUT.index("# the reviewer")] + LAYOUT[LAYOUT.index("# trailing comment"):]
    assert not has_routine(new, "pr-review") and has_routine(new, "z")
    assert remove_routine_text(LAYOUT, "z") == LAYOUT[:LAYOUT.index("\n# trailing comment")]


def test_add_appends_and_reads_back():
    fields = {"prompt": "p", "repos": ["/a", {"url": "/b", "ref": "v1"}], "push": ["claude/*"],
              "environment": {"env_file": "e.env"}, "connectors": {"mcp_config": "m.json"},
              "triggers": [{"schedule": "daily"}, {"api": True},
                           {"github": ["release.published"], "tag": {"starts_with": "v"}, "prerelease": False}]}
    new = add_routine_text(LAYOUT, "new-one", fields)
    assert new.startswith(LAYOUT.rstrip("\n") + "\n\n[routines.new-one]\n")
    routines, errors = load(new)
    assert errors == [] and set(routines) == {"other", "pr-review", "z", "new-one"}
    r = routines["new-one"]
    assert [t.kind for t in r.triggers] == ["schedule", "api", "github"]
    assert r.triggers[2].to_toml() == fields["triggers"][2]
    assert [x.to_json() for x in r.repos] == [{"url": "/a", "ref": None}, {"url": "/b", "ref": "v1"}]


def test_an_unusual_layout_is_edited_the_general_way():
    text = ('[routines.a]\nprompt = "p"\nrepos = ["/a"]\n[routines.b]\nprompt = "q"\nrepos = ["/b"]\n'
            '[[routines.a.triggers]]\napi = true\n')
    assert find_block(text, "a") is None
    new = edit_routine_text(text, "a", {"model": "opus"})
    routines, errors = load(new)
    assert errors == [] and routines["a"].model == "opus" and routines["b"].prompt == "q"
    routines, _ = load(remove_routine_text(text, "a"))
    assert set(routines) == {"b"}
    inline = '[routines.a]\nprompt = "p"\nrepos = ["/a"]\ntriggers = [{ api = true }]\n'
    routines, errors = load(edit_routine_text(inline, "a", {"triggers": [{"schedule": "daily"}]}))
    assert errors == [] and [t.kind for t in routines["a"].triggers] == ["schedule"]


_names = st.from_regex(r"[a-z][a-z0-9]{0,8}(-[a-z0-9]{1,5}){0,2}", fullmatch=True)
_texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=40) \
    .filter(lambda s: s.strip())


@given(_names, _texts, st.lists(st.sampled_from([{"api": True}, {"schedule": "daily"},
                                                 {"github": ["pull_request.opened"], "draft": False},
                                                 {"github": ["release"], "title": {"contains": "x"}}]),
                                max_size=3, unique_by=lambda t: str(t)),
       st.sampled_from(["allow", "skip", "replace", "buffer_one"]))
def test_what_add_writes_load_reads(name, prompt, triggers, overlap):
    if sum(1 for t in triggers if "api" in t) > 1:
        return
    text = add_routine_text("# mine\n", name, {"prompt": prompt, "repos": ["/srv/x"], "overlap": overlap,
                                               "triggers": triggers})
    routines, errors = load(text)
    assert errors == []
    r = routines[name]
    assert (r.prompt, r.overlap) == (prompt, overlap)
    assert [t.to_toml() for t in r.triggers] == triggers
    assert text.startswith("# mine\n")


def test_sub_tables_are_added_and_removed_in_their_own_sections():
    text = ('[routines.a]\nprompt = "p"\nrepos = ["/a"]\n\n# connectors below\n[routines.a.connectors]\n'
            'mcp_config = "m.json"\n\n# the api\n[[routines.a.triggers]]\napi = true\n\n# next\n[routines.b]\nprompt = "q"\n')
    new = edit_routine_text(text, "a", {"model": "m", "environment": {"env_file": "e.env"},
                                        "connectors": {"mcp_config": None}})
    assert new == ('[routines.a]\nprompt = "p"\nrepos = ["/a"]\nmodel = "m"\n\n# the api\n[[routines.a.triggers]]\n'
                   'api = true\n\n[routines.a.environment]\nenv_file = "e.env"\n\n# next\n[routines.b]\nprompt = "q"\n')


def test_setup_or_a_closed_network_is_refused_for_the_cluster():
    base = '[routines.r]\nprompt = "x"\nrepos = ["/srv/app.git"]\nwhere = "cluster"\n[routines.r.environment]\n'
    for env, field in (('setup = "make"', "setup"), ('network = "none"', "network"),
                       ('network = ["pypi.org"]', "network")):
        routines, errors = load(base + env + "\n")
        assert not routines and len(errors) == 1, errors
        assert errors[0].reason.startswith(f"{field} of routine 'r' cannot ") and 'where = "local"' in errors[0].reason
        assert errors[0].line == 6
    routines, errors = load(base + 'network = "full"\n')
    assert not errors and routines["r"].where == "cluster"
