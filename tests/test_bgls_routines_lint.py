"""bgls on routines.toml, without an editor: problems with their ranges, hover, completion (routines_lint),
and the scanner they share with tasks.toml (definitions)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings, strategies as st

from bgcore import github, routines_file
from bgcore.routines_file import load_routines, stagger_seconds
from bgcore.schedule import next_fire_times, parse_schedule
from bgls import definitions, routines_lint
from bgls.definitions import EditorContext

NOW = datetime(2026, 3, 2, 8, 0, tzinfo=timezone.utc)  # a Monday
UTC = ZoneInfo("UTC")
NO_STAGGER = EditorContext(stagger=False)

FULL = '''# Routines of this machine.
[routines.pr-review]   # the reviewer
description = "review pull requests"
prompt = "Review the pull request below."
repos = ["https://github.com/acme/api", { url = "~/src/shared", ref = "v2" }]
agent = "claude"
push = ["claude/*"]
timeout = "1h 30m"
overlap = "skip"
timezone = "Europe/Berlin"

[routines.pr-review.environment]
env_file = "env/pr-review.env"
network = "full"

[routines.pr-review.connectors]
mcp_config = "~/mcp/review.json"

[[routines.pr-review.triggers]]
schedule = "weekdays at 9am"

[[routines.pr-review.triggers]]
api = true
rate_limit = 10

[[routines.pr-review.triggers]]
github = [
  "pull_request.opened",
  "pull_request.synchronize",
]
repository = "acme/api"
title = { matches = ".*hotfix.*" }
labels = { include = ["needs-review"], exclude = ["wip"] }
draft = false

[[routines.pr-review.triggers]]
github = "release.published"
tag = { starts_with = "v" }
'''

HEAD = '[routines.r]\nprompt = "p"\nrepos = ["/srv/app"]\n'


def lint(text: str, **kw):
    kw.setdefault("is_file", lambda p: True)
    return routines_lint.lint(text, now=NOW, tz=UTC, path="/home/me/.config/bgagents/routines.toml", **kw)


def covered(text: str, problem) -> str:
    span = problem.span
    assert span.line == span.end_line, problem
    return text.split("\n")[span.line][span.start:span.end]


def complete(text: str, line: int, character: int | None = None, **kw) -> dict:
    if character is None:
        character = len(text.split("\n")[line])
    kw.setdefault("context", NO_STAGGER)
    return {c.label: c for c in routines_lint.complete(text, line, character, now=NOW, tz=UTC, **kw)}


# -- the tables agree with bgcore ------------------------------------------------------

def test_field_tables_agree_with_the_validator():
    assert set(routines_lint.FIELD_DOCS) == set(routines_file.FIELDS)
    assert set(routines_lint.ENV_DOCS) == set(routines_file.ENV_FIELDS)
    assert set(routines_lint.CONNECTOR_DOCS) == set(routines_file.CONNECTOR_FIELDS)
    assert set(routines_lint.TRIGGER_DOCS) == set(routines_file.TRIGGER_KEYS)
    assert set(routines_lint.FILTER_DOCS) == set(github.FIELDS)
    assert set(routines_lint.OPERATOR_DOCS) == set(github.OPERATORS)
    for name in routines_lint.EVENT_NAMES:
        github.parse_event(name)


@pytest.mark.parametrize("preset", routines_lint.SCHEDULE_PRESETS)
def test_every_schedule_preset_is_accepted_in_a_routine(preset):
    text = HEAD + f'[[routines.r.triggers]]\nschedule = "{preset}"\n'
    _, errors = load_routines(text, "routines.toml", NOW, UTC, isfile=lambda p: True)
    assert errors == []


def test_a_valid_file_has_no_problems():
    assert lint(FULL, context=EditorContext(agents=frozenset({"claude"}))) == []


# -- problems with the range of what is wrong -------------------------------------------

@pytest.mark.parametrize("body, code, text", [
    ('[[routines.r.triggers]]\nschedule = "every 5 blargs"\n', "bad-schedule", "blargs"),
    ('[[routines.r.triggers]]\nschedule = "every 10 minutes"\n', "bad-schedule", '"every 10 minutes"'),
    ('[[routines.r.triggers]]\nschedule = "manual"\n', "bad-schedule", '"manual"'),
    ('[[routines.r.triggers]]\nschedule = "in 2 hours"\n', "bad-schedule", '"in 2 hours"'),
    ('[[routines.r.triggers]]\ngithub = ["release", "pull_request.opend"]\n', "bad-event", '"pull_request.opend"'),
    ('[[routines.r.triggers]]\ngithub = [\n  "pull_request",\n  "pul_request",\n]\n', "bad-event",
     '"pul_request"'),
    ('[[routines.r.triggers]]\ngithub = ["pull_request.merged"]\n', "bad-event", '"pull_request.merged"'),
    ('[[routines.r.triggers]]\ngithub = "issues"\n', "bad-event", '"issues"'),
    ('[[routines.r.triggers]]\ngithub = ["pull_request"]\ntitel = "x"\n', "unknown-filter", "titel"),
    ('[[routines.r.triggers]]\ngithub = ["pull_request"]\ntitle = { matches = "(abc" }\n', "bad-regex", "("),
    ('[[routines.r.triggers]]\ngithub = ["pull_request"]\nbody = { matches = "\\\\d+(x" }\n', "bad-regex", "("),
    ("[[routines.r.triggers]]\ngithub = ['pull_request']\nhead = { matches = 'a[' }\n", "bad-regex", "["),
    ('[[routines.r.triggers]]\ngithub = ["pull_request"]\nhead = { startswith = "x" }\n', "unknown-operator",
     "startswith"),
    ('[[routines.r.triggers]]\ngithub = ["pull_request"]\nlabels = { include = ["a"], exclud = ["b"] }\n',
     "unknown-operator", "exclud"),
    ('[[routines.r.triggers]]\ngithub = ["pull_request"]\nbase = { one_of = "main" }\n', "bad-filter", '"main"'),
    ('[[routines.r.triggers]]\ngithub = ["pull_request"]\ndraft = "no"\n', "bad-filter", '"no"'),
    ('[[routines.r.triggers]]\ngithub = ["pull_request"]\ntag = "v1"\n', "filter-event-mismatch", "tag"),
    ('[[routines.r.triggers]]\nschedule = "daily"\nbase = "main"\n', "unknown-field", "base"),
    ('[[routines.r.triggers]]\nenabled = false\n', "missing-field", "[[routines.r.triggers]]"),
    ('[[routines.r.triggers]]\napi = true\nrate_limit = 0\n', "bad-limit", "0"),
    ('[routines.r.environment]\nenv_file = "env/r.env"\n', "missing-file", '"env/r.env"'),
    ('[routines.r.environment]\nnetwork = ["pypi.org", "bad_name.org"]\n', "bad-network",
     '["pypi.org", "bad_name.org"]'),
    ('[routines.r.environment]\nnetwork = "nones"\n', "bad-network", '"nones"'),
    ('[routines.r.connectors]\nmcp = "x"\n', "unknown-field", "mcp"),
    ('overlap = "queue"\n', "invalid-routine", '"queue"'),
    ('timeout = "forever"\n', "bad-timeout", '"forever"'),
    ('agent = "gpt"\n', "unknown-agent", '"gpt"'),
    ('colour = "red"\n', "unknown-field", "colour"),
])
def test_problem_ranges(body, code, text):
    source = HEAD + body
    problems = lint(source, is_file=lambda p: not p.endswith(".env"),
                    context=EditorContext(agents=frozenset({"claude"})))
    assert [p.code for p in problems] == [code], problems
    assert covered(source, problems[0]) == text
    assert problems[0].severity == "error"


def test_problems_in_the_routine_table():
    text = '[routines.r]\nprompt = "p"\nrepos = ["/srv/app", "relative/app"]\n'
    (problem,) = lint(text)
    assert problem.code == "bad-repos" and covered(text, problem) == '"relative/app"'
    text = '[routines.Bad_Name]\nprompt = "p"\nrepos = ["/srv/app"]\n'
    (problem,) = lint(text)
    assert problem.code == "bad-name" and covered(text, problem) == "Bad_Name"
    text = '[routines.r]\nrepos = ["/srv/app"]\n'
    (problem,) = lint(text)
    assert problem.code == "missing-field" and covered(text, problem) == "r"
    text = HEAD + '[routines.r]\nprompt = "q"\n'
    (problem,) = lint(text)
    assert problem.code == "duplicate-routine" and problem.span.line == 3
    text = '[routine.r]\nprompt = "p"\n'
    (problem,) = lint(text)
    assert problem.code == "unknown-field" and "did you mean 'routines'" in problem.message


def test_a_syntax_error_points_at_its_line_and_nothing_else_is_said():
    text = HEAD + '[[routines.r.triggers]]\nschedule = every 5 hours\n'
    (problem,) = lint(text)
    assert problem.code == "toml-syntax" and problem.span.line == 4 and "not valid TOML" in problem.message


def test_every_bad_filter_of_a_trigger_is_reported():
    text = HEAD + ('[[routines.r.triggers]]\ngithub = ["pull_request.opened"]\ntitel = "x"\n'
                   'title = { matches = "(abc" }\nlabels = { include = ["a"], exclud = ["b"] }\n')
    assert [(p.code, covered(text, p)) for p in lint(text)] == [
        ("unknown-filter", "titel"), ("bad-regex", "("), ("unknown-operator", "exclud")]


def test_relative_paths_are_taken_from_the_files_directory():
    text = HEAD + '[routines.r.environment]\nenv_file = "env/r.env"\n'
    seen = []
    lint(text, is_file=lambda p: seen.append(p) or True)
    assert seen == ["/home/me/.config/bgagents/env/r.env"]


def test_a_rounded_schedule_gets_a_note():
    text = HEAD + '[[routines.r.triggers]]\nschedule = "every 5 hours"\n'
    (problem,) = lint(text)
    assert problem.severity == "information" and problem.code == "schedule-rounded"
    assert "every 6 hours" in problem.message and covered(text, problem) == '"every 5 hours"'


def test_error_codes_of_messages():
    assert routines_lint.error_code("not valid TOML: x") == "toml-syntax"
    assert routines_lint.error_code("something new") == "invalid-routine"


# -- hover ------------------------------------------------------------------------------

def _fires(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("- ") and "(20" in line]


def test_hover_on_a_schedule_shows_the_next_fires_in_the_routines_zone_with_its_offset():
    text = FULL
    line = text.split("\n").index('schedule = "weekdays at 9am"')
    markdown, span = routines_lint.hover(text, line, 14, now=NOW, tz=UTC)
    assert "`0 9 * * 1-5`" in markdown and "Europe/Berlin" in markdown
    offset = stagger_seconds("pr-review")
    zone = ZoneInfo("Europe/Berlin")
    expected = [t + timedelta(seconds=offset) for t in
                next_fire_times(parse_schedule("weekdays at 9am", now=NOW, tz=zone), NOW, zone, 3)]
    fires = _fires(markdown)
    assert len(fires) == 3 and all(t.isoformat() in f for t, f in zip(expected, fires))
    assert f"offset of {offset // 60} min" in markdown
    assert (span.line, span.start, span.end) == (line, 11, 28)

    markdown, _ = routines_lint.hover(text, line, 14, now=NOW, tz=UTC, context=NO_STAGGER)
    assert "offset" not in markdown and all("09:00:00+01:00" in f for f in _fires(markdown))


def test_hover_on_a_refused_schedule_says_why_instead_of_fires():
    text = HEAD + '[[routines.r.triggers]]\nschedule = "every 15 minutes"\n'
    markdown, _ = routines_lint.hover(text, 4, 14, now=NOW, tz=UTC)
    assert "at most once an hour" in markdown and not _fires(markdown)


def test_hover_notes_a_trigger_that_is_off():
    text = HEAD + 'enabled = false\n[[routines.r.triggers]]\nschedule = "hourly"\nenabled = false\n'
    markdown, _ = routines_lint.hover(text, 5, 14, now=NOW, tz=UTC, context=NO_STAGGER)
    assert "this trigger is off" in markdown and "routine r is paused" in markdown


def test_hover_on_events_filters_operators_and_fields():
    lines = FULL.split("\n")

    def at(needle: str, offset: int = 0):
        n = next(i for i, line in enumerate(lines) if needle in line)
        return routines_lint.hover(FULL, n, lines[n].index(needle) + offset, now=NOW, tz=UTC)

    markdown, span = at('"pull_request.opened"', 3)
    assert "action `opened`" in markdown and "`labels`" in markdown and "`tag`" not in markdown
    assert FULL.split("\n")[span.line][span.start:span.end] == '"pull_request.opened"'
    assert "any action" in routines_lint._event_hover('"release"')
    assert "merged = true" in routines_lint._event_hover('"pull_request.closed"')
    assert "unknown GitHub event" in routines_lint._event_hover('"push"')
    assert "GitHub filter" in at("title =")[0] and "`matches`" in at("title =")[0]
    assert "regular expression" in at("matches =")[0]
    assert "must have none of" in at("exclude =")[0]
    assert "starts with" in at("starts_with")[0]
    assert "never logged" in at("env_file =")[0]
    assert "enforced" in at("network =")[0]
    assert "MCP" in at("mcp_config")[0]
    assert "API fires an hour" in at("rate_limit")[0]
    assert "One of: `skip`" in at("overlap =")[0]
    assert "checks out" in at("ref =")[0]
    assert at("# Routines") is None
    setup = HEAD + '[routines.r.environment]\nsetup = "make"\n'
    assert "template workspace" in routines_lint.hover(setup, 4, 1, now=NOW, tz=UTC)[0]


# -- completion ------------------------------------------------------------------------

def test_completion_of_field_names_by_table():
    text = HEAD + '\n[routines.r.environment]\n\n[routines.r.connectors]\n\n[[routines.r.triggers]]\n\n'
    main = complete(text, 3)
    assert set(main) == {"description", "agent", "model", "push", "timeout", "overlap", "enabled", "timezone", "where"}
    assert main["timeout"].insert_text == 'timeout = "4h"'
    assert set(complete(text, 5)) == {"env_file", "setup", "setup_file", "setup_timeout", "network", "grant"}
    assert set(complete(text, 7)) == {"mcp_config"}
    kinds = complete(text, 9)
    assert set(kinds) == {"schedule", "api", "github"}
    assert kinds["github"].insert_text == 'github = ["pull_request.opened"]'


def test_completion_in_a_trigger_follows_its_kind_and_events():
    text = HEAD + ('[[routines.r.triggers]]\napi = true\n\n'
                   '[[routines.r.triggers]]\ngithub = ["release.published"]\n\n'
                   '[[routines.r.triggers]]\ngithub = ["pull_request.opened"]\nbase = "main"\n\n'
                   '[[routines.r.triggers]]\nschedule = "hourly"\n\n')
    assert set(complete(text, 5)) == {"rate_limit", "enabled"}
    release = complete(text, 8)
    assert {"tag", "prerelease", "title", "hourly_cap", "enabled"} <= set(release)
    assert not {"base", "labels", "merged"} & set(release)
    pull = complete(text, 12)
    assert {"head", "labels", "merged", "draft"} <= set(pull) and not {"base", "tag"} & set(pull)
    assert pull["labels"].insert_text == 'labels = { include = [""] }'
    assert set(complete(text, 15)) == {"enabled"}


def test_completion_of_event_names():
    text = HEAD + '[[routines.r.triggers]]\ngithub = \n'
    events = complete(text, 4)
    assert set(events) == set(routines_lint.EVENT_NAMES)
    assert {"pull_request", "pull_request.opened", "pull_request.ready_for_review", "release",
            "release.published"} <= set(events)
    assert events["release.published"].insert_text == '["release.published"]'
    text = HEAD + '[[routines.r.triggers]]\ngithub = ["pull_request.opened", "rel"]\n'
    events = complete(text, 4, len('github = ["pull_request.opened", "rel'))
    item = events["release.published"]
    assert item.insert_text == '"release.published"'
    assert (item.replace.start, item.replace.end) == (len('github = ["pull_request.opened", '),
                                                      len('github = ["pull_request.opened", "rel"'))
    text = HEAD + '[[routines.r.triggers]]\ngithub = [\n  "pull_request.opened",\n  \n]\n'
    assert complete(text, 6)["pull_request.closed"].insert_text == '"pull_request.closed"'
    assert complete(text, 7, 1) == {}  # after the closing bracket


def test_completion_of_filter_operators():
    text = HEAD + ('[[routines.r.triggers]]\ngithub = ["pull_request"]\ntitle = { ma\n'
                   'labels = { include = ["a"], \ndraft = { \nmerged = { equals = \nmerged = \n')
    ops = complete(text, 5)
    assert set(ops) == set(github.OPERATORS)
    assert ops["one_of"].insert_text == 'one_of = [""]'
    assert (ops["matches"].replace.start, ops["matches"].replace.end) == (10, 12)
    assert set(complete(text, 6)) == {"include", "exclude"}
    assert set(complete(text, 7)) == {"equals"}
    assert set(complete(text, 8)) == {"true", "false"}
    assert set(complete(text, 9)) == {"true", "false"}


def test_completion_of_values():
    text = HEAD + ('overlap = \nagent = "\n[routines.r.environment]\nnetwork = \n'
                   '[[routines.r.triggers]]\nschedule = "ev"\napi = \n')
    assert set(complete(text, 3)) == set(routines_file.OVERLAPS)
    assert set(complete(text, 4, context=EditorContext(agents=frozenset({"claude", "codex"})))) == {"claude", "codex"}
    network = list(complete(text, 6).values())
    assert {c.label for c in network} == set(routines_file.NETWORKS)
    assert all(c.detail == "network" for c in network)   # every policy is one this bgd enforces
    presets = complete(text, 8, len('schedule = "ev'))
    assert set(presets) == set(routines_lint.SCHEDULE_PRESETS)
    assert presets["every 2 hours"].insert_text == '"every 2 hours"'
    assert (presets["every 2 hours"].replace.start, presets["every 2 hours"].replace.end) == (11, 15)
    assert "Next 3 fire times" in presets["daily"].documentation
    assert set(complete(text, 9)) == {"true"}


def test_completion_of_a_routines_sub_tables_in_headers():
    text = HEAD + '[routines.r.environment]\n[routines.r.\n[[routines.r.tri\n[routines."r".co]\n'
    assert set(complete(text, 4)) == {"connectors"}  # environment is there already
    assert complete(text, 4)["connectors"].insert_text == "connectors]"
    trig = complete(text, 5)["triggers"]
    assert trig.insert_text == "triggers]]" and (trig.replace.start, trig.replace.end) == (13, 16)
    assert complete(text, 6, len('[routines."r".co'))["connectors"].insert_text == "connectors"


def test_completion_of_repository_keys():
    text = '[routines.r]\nrepos = ["/srv/a", { url = "/srv/b", r\n'
    assert set(complete(text, 1)) == {"url", "ref"}


def test_nothing_is_offered_outside_a_routine():
    assert complete("\n", 0) == {}
    assert complete("[other]\n\n", 1) == {}


# -- robustness while typing ------------------------------------------------------------

def test_any_prefix_of_a_file_can_be_linted_hovered_and_completed():
    for cut in range(0, len(FULL) + 1, 3):
        text = FULL[:cut]
        lint(text)
        lines = text.split("\n")
        routines_lint.complete(text, len(lines) - 1, len(lines[-1]), now=NOW, tz=UTC)
    lines = FULL.split("\n")
    for n, line in enumerate(lines):
        for col in range(len(line) + 1):
            routines_lint.hover(FULL, n, col, now=NOW, tz=UTC)
            routines_lint.complete(FULL, n, col, now=NOW, tz=UTC)


@settings(max_examples=50)
@given(st.lists(st.tuples(st.integers(0, len(FULL)), st.integers(0, 12),
                         st.text(alphabet='[]{}"\'=,.#\n abc_-5', max_size=6)), max_size=4))
def test_edits_never_break_the_services_and_ranges_stay_in_the_text(edits):
    text = FULL
    for at, cut, insert in edits:
        at = min(at, len(text))
        text = text[:at] + insert + text[at + cut:]
    lines = text.split("\n")
    for problem in lint(text):
        span = problem.span
        assert 0 <= span.line <= span.end_line < len(lines) and problem.message
        assert span.start <= len(lines[span.line]) and span.end <= len(lines[span.end_line]) + 1
    for n in range(0, len(lines), 4):
        for col in (len(lines[n]) // 2, len(lines[n])):
            routines_lint.hover(text, n, col, now=NOW, tz=UTC)
            routines_lint.complete(text, n, col, now=NOW, tz=UTC)


def test_is_routines_file(monkeypatch, tmp_path):
    monkeypatch.setenv("BGD_CONFIG_DIR", str(tmp_path))
    assert routines_lint.is_routines_file(tmp_path / "routines.toml")
    assert routines_lint.is_routines_file("/any/where/routines.toml")
    assert not routines_lint.is_routines_file(tmp_path / "tasks.toml")
    assert not routines_lint.is_routines_file(None)


# -- the shared scanner ----------------------------------------------------------------

def test_scanner_finds_list_elements_inline_keys_and_trigger_indexes():
    layout = definitions.scan(FULL)
    repos = layout.entry(("routines", "pr-review", "repos"))
    assert [i.raw for i in repos.items] == ['"https://github.com/acme/api"', '{ url = "~/src/shared", ref = "v2" }']
    ref = layout.entry(("routines", "pr-review", "repos", "ref"))
    assert ref.inline and ref.raw == '"v2"'
    events = next(e for e in layout.entries if e.path[-1] == "github")
    assert [i.raw for i in events.items] == ['"pull_request.opened"', '"pull_request.synchronize"']
    assert (events.value.line, events.value.end_line) == (26, 29)
    triggers = [t for t in layout.tables if t.path[-1] == "triggers"]
    assert [t.index for t in triggers] == [0, 1, 2, 3] and all(t.array for t in triggers)


def test_unclosed_values_end_where_the_next_key_or_header_starts():
    layout = definitions.scan('[a]\nx = "open\ny = [1,\nz = 2\n[b]\nw = { k = 1\nv = 3\n')
    assert [e.path for e in layout.entries if not e.inline] == [("a", "x"), ("a", "y"), ("a", "z"), ("b", "w"),
                                                                 ("b", "v")]


def test_literal_span_maps_decoded_offsets_through_escapes():
    value = definitions.Span(0, 10, 0, 18)
    raw = '"\\\\d+(x"'  # the regex \d+(x
    span = definitions.literal_span(value, raw, 3, 1)
    assert raw[span.start - 10:span.end - 10] == "("
    span = definitions.literal_span(value, raw, 5, 1)
    assert (span.start, span.end) == (17, 18)  # at the end: the closing quote
    assert definitions.literal_span(value, '"""x"""', 0, 1) is None
