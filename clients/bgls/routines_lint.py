"""routines.toml as a language: problems with exact ranges, hover, completion (SPEC §8, §10).

As for tasks.toml, no second set of rules: routines are validated by `bgcore.routines_file.load_routines`
(what the daemon and `bgctl routine ls` report), GitHub events and filters by `bgcore.github`,
schedules by `bgcore.schedule`.  The scanner of `definitions` finds where each key, list element and
inline-table key sits, so each problem reported at a (line, column) gets the range of what is wrong:
the unknown event in a `github` list, the operator of a filter, the character of a regular expression
that does not compile, the words of a schedule that cannot be read.

    [routines.pr-review]
    prompt = "Review the pull request below."
    repos = ["https://github.com/acme/api"]

    [[routines.pr-review.triggers]]
    schedule = "weekdays at 9am"          # hover: the next fire times, with the routine's offset
    [[routines.pr-review.triggers]]
    github = ["pull_request.opened"]      # completion: events, filters, operators
    title = { matches = ".*hotfix.*" }
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime
from typing import Callable
from zoneinfo import ZoneInfo

from bgcore.github import ACTIONS, EVENTS, OPERATORS, FilterError, compile_filter, parse_event
from bgcore.github import FIELDS as FILTER_FIELDS
from bgcore.routines_file import NETWORKS, OVERLAPS, RoutineFileError, load_routines, stagger_seconds

from .definitions import (ASSIGN, PARTIAL_KEY, Completion, EditorContext, Entry, FileKind, Layout, Problem, Span,
                          contains, key_of_assignment, key_replace, literal_span, locate, read_key, rounded_note, scan,
                          schedule_error_span, schedule_markdown, schedule_presets, string_literal, value_of,
                          value_replace, zone_of)

FILE_NAME = "routines.toml"

# What each field means (SPEC §8), and what completing it inserts.  A test keeps these tables and
# bgcore's in step.
FIELD_DOCS: dict[str, tuple[str, str]] = {
    "description": ("What the routine is for, shown by `bgctl routine ls`.", '""'),
    "prompt": ("The prompt each run starts with (or `prompt_file`); an API fire's `text` or a GitHub "
               "event's essentials are added to it.", '""'),
    "prompt_file": ("A file holding the prompt, read at each run; relative to the directory of routines.toml "
                    "(nothing is read from a repository's own files).", '""'),
    "repos": ("**Required.** Git URLs or local paths, cloned fresh for every run; the first is the working "
              "directory. `{ url = \"…\", ref = \"v2\" }` checks out a branch, tag or commit (default: the "
              "remote's default branch).", '[""]'),
    "agent": ("The agent to run (from config.toml), e.g. `claude`.", '""'),
    "model": ("The model to ask the agent for, e.g. `sonnet`.", '""'),
    "where": ("Where runs go: `local` (default) or `cluster` (the workers of config.toml's [cluster]).", '"local"'),
    "push": ("The branch patterns a run may push (default `[\"claude/*\"]`): the clone's hooks refuse other "
             "pushes, and a push outside them is flagged in the run record.", '["claude/*"]'),
    "timeout": ("How long a run may take: `\"4h\"` (the default), `\"30m\"`, `\"90s\"` or seconds; at most 7 days.",
                '"4h"'),
    "overlap": ("What to do when the routine fires while a run of it still runs (default `allow`).", '"allow"'),
    "enabled": ("`false` pauses the routine: no trigger fires it (`bgctl routine resume` turns it on).", "true"),
    "timezone": ("The IANA zone of the schedule triggers' times (default: the machine's).", '""'),
    "environment": ("`[routines.NAME.environment]`: `env_file`, `setup` and `network` of the runs.", "{}"),
    "connectors": ("`[routines.NAME.connectors]`: `mcp_config`, the MCP servers of the runs.", "{}"),
    "triggers": ("`[[routines.NAME.triggers]]`, one table per trigger: a `schedule`, `api = true` or a "
                 "`github` list of events.", "[]"),
}
ENV_DOCS: dict[str, tuple[str, str]] = {
    "env_file": ("A dotenv file (`KEY=VALUE` lines) whose values each run gets in its environment; never "
                 "logged, stored or shown (`***`, and masked in the transcript). Relative to routines.toml.", '""'),
    "setup": ("A bash script run once in a template workspace (its stdin at end of file, the env_file's values "
              "in its environment); later runs start from a copy of the result until the script, the "
              "repositories or the network change, or 7 days pass.", '""'),
    "setup_file": ("A file holding the setup script (instead of `setup`). Relative to routines.toml.", '""'),
    "setup_timeout": ("How long the setup script may take: `\"10m\"` (the default), `\"90s\"` or seconds; "
                      "at most 6 hours.", '"10m"'),
    "network": ("The network a run gets: `\"full\"` (the default), `\"none\"`, `\"trusted\"` (package registries, "
                "git hosts) or a list of host names such as `[\"pypi.org\", \"*.github.com\"]`; enforced by a "
                "sandbox whose only way out is a filtering proxy, never advisory.", '"full"'),
    "grant": ("Paths a confined run may read that it otherwise cannot (credential files such as "
              "`\"~/.config/gh\"`), read-only.", "[]"),
}
CONNECTOR_DOCS: dict[str, tuple[str, str]] = {
    "mcp_config": ("An MCP config file (JSON) whose servers each run gets beside the daemon's own tools; "
                   "none unless given. Relative to routines.toml.", '""'),
}
TRIGGER_DOCS: dict[str, tuple[str, str]] = {
    "schedule": ("When the routine fires, in the schedule language of tasks (at least an hour apart): "
                 "`hourly`, `daily at 9am`, `weekdays at 9:30`, `every 2 hours`, `once at 2026-12-24 09:00` "
                 "or a 5-field cron. Each routine fires at its own small offset (up to 5 minutes).", '""'),
    "api": ("`true`: `POST /v1/routines/NAME/fire` with `Authorization: Bearer <token>` fires the routine "
            "(`bgctl routine token NAME` prints a token); an optional JSON body `{\"text\": \"…\"}` is added "
            "to the prompt.", "true"),
    "github": ("The GitHub events that fire the routine: `pull_request` (any action) or "
               "`pull_request.ACTION`, `release` or `release.ACTION`, delivered to `POST /v1/github/webhook` "
               "and signed with `[github] webhook_secret_file`. All of the trigger's filters must match.",
               '["pull_request.opened"]'),
    "enabled": ("`false` turns this trigger off; the routine's other triggers still fire.", "true"),
    "rate_limit": ("API fires an hour before the answer is 429 (default 60).", "60"),
    "hourly_cap": ("Runs an hour this trigger may start (default 20); past it deliveries are recorded as "
                   "skipped (`rate_limited`), never dropped silently.", "20"),
}
FILTER_DOCS: dict[str, str] = {
    "repository": "The repository, `owner/name` (case is ignored).",
    "author": "The login of the pull request's or release's author (case is ignored).",
    "title": "The pull request's title; a release's name (its tag when it has none).",
    "body": "The pull request's or release's description.",
    "draft": "`true` or `false`: whether the pull request or release is a draft.",
    "base": "The branch the pull request merges into.",
    "head": "The pull request's branch.",
    "labels": "`{ include = [\"needs-review\"], exclude = [\"wip\"] }`: labels the pull request must all have, "
              "and labels it must have none of.",
    "merged": "`true` or `false`; a merge arrives as `pull_request.closed` with `merged = true`.",
    "tag": "The release's tag.",
    "prerelease": "`true` or `false`: whether the release is a pre-release.",
}
OPERATOR_DOCS: dict[str, tuple[str, str]] = {
    "equals": ("The value is exactly this (what a plain string means).", '""'),
    "contains": ("The value contains this.", '""'),
    "starts_with": ("The value starts with this.", '""'),
    "one_of": ("The value is one of these.", '[""]'),
    "not_one_of": ("The value is none of these.", '[""]'),
    "matches": ("A regular expression (Python's) that the whole value must match.", '""'),
}
LABEL_DOCS: dict[str, tuple[str, str]] = {
    "include": ("Labels the pull request must all have.", '[""]'),
    "exclude": ("Labels the pull request must have none of.", '[""]'),
}
REPO_DOCS: dict[str, tuple[str, str]] = {
    "url": ("A git URL (https://, ssh://, file://, git@host:path) or an absolute path (or `~/…`).", '""'),
    "ref": ("The branch, tag or commit each run checks out (default: the remote's default branch).", '""'),
}
_TEXT_FILTER = "A string means `equals`; or a table of operators, such as `{ matches = \".*hotfix.*\" }`: "
_FILTER_EXAMPLE = {"text": '""', "bool": "false", "labels": '{ include = [""] }'}
_SUBTABLES = ("environment", "connectors", "triggers")

# Offered when completing a trigger's schedule: each is at least an hour apart and accepted by the
# routines validator (a test keeps this true).
SCHEDULE_PRESETS = (
    "hourly", "every 2 hours", "every 6 hours", "daily", "daily at 9am", "weekdays", "weekdays at 9:30",
    "weekends at 10:00", "weekly", "weekly on monday at 10:00", "every 3 days", "at 15:00", "0 9 * * 1-5",
)
EVENT_NAMES = tuple(name for event in EVENTS for name in (event, *(f"{event}.{a}" for a in ACTIONS[event])))


def is_routines_file(path: str | os.PathLike | None) -> bool:
    """The user's routines file, or any file named routines.toml."""
    return KIND.handles(path)


# -- problems -----------------------------------------------------------------------

def lint(text: str, *, now: datetime, tz: ZoneInfo, path: str = FILE_NAME,
         is_file: Callable[[str], bool] = os.path.isfile, context: EditorContext | None = None,
         base_dir: str | None = None) -> list[Problem]:
    """Every problem of a routines file, in reading order: the daemon's own (with the exact range of
    each), and an editor-only note on a schedule that was rounded. Relative paths are taken from
    `path`'s directory (or `base_dir`), as the daemon takes them from its routines.toml's."""
    layout = scan(text)
    agents = set(context.agents) if context and context.agents is not None else None
    _, errors = load_routines(text, path, now, tz, isfile=is_file, agents=agents, base_dir=base_dir)
    problems = [Problem(_error_span(error, layout, now=now, tz=tz), error.reason, "error", error_code(error.reason))
                for error in errors]
    if not any(p.code == "toml-syntax" for p in problems):
        for entry in layout.entries:
            if _trigger_key(entry) == "schedule":
                note = rounded_note(entry, zone_of(layout, entry.path[:2], tz), now)
                if note is not None and not any(p.span.line == note.span.line for p in problems):
                    problems.append(note)
    problems.sort(key=lambda p: (p.span.line, p.span.start))
    return problems


_CODES = (
    (("not valid TOML",), "toml-syntax"),
    (("duplicate routine name",), "duplicate-routine"),
    (("is not kebab-case", "longer than 64 characters"), "bad-name"),
    (("unknown GitHub event", "unknown action", "GitHub sends a merge", "a GitHub event must be", "github of "),
     "bad-event"),
    (("unknown GitHub filter",), "unknown-filter"),
    (("not a valid regular expression",), "bad-regex"),
    (("unknown operator", "in filter labels"), "unknown-operator"),
    ((" applies only to ",), "filter-event-mismatch"),
    (("unknown field", "unknown top-level key"), "unknown-field"),
    (("unknown agent",), "unknown-agent"),
    (("unknown timezone",), "bad-timezone"),
    (("does not exist",), "missing-file"),
)


def error_code(reason: str) -> str:
    """A short, stable name for the kind of problem (the diagnostic's code)."""
    for needles, code in _CODES:
        if any(n in reason for n in needles):
            return code
    if reason.startswith("filter ") or re.match(r"(?:labels|[a-z_]+)\.[a-z_]+ must", reason):
        return "bad-filter"
    if reason.startswith("schedule"):
        return "bad-schedule"
    if " needs " in reason:
        return "missing-field"
    for word, code in (("network", "bad-network"), ("repos", "bad-repos"), ("timeout", "bad-timeout"),
                       ("push", "bad-push"), ("rate_limit", "bad-limit"), ("hourly_cap", "bad-limit")):
        if reason.startswith(word) or f" {word} " in reason or f"{word}[" in reason:
            return code
    return "invalid-routine"


def _trigger_key(entry: Entry) -> str | None:
    """The key of an entry written in a [[routines.NAME.triggers]] table, else None."""
    p = entry.path
    if len(p) == 4 and p[0] == "routines" and p[2] == "triggers" and not entry.inline:
        return p[3]
    return None


def _error_span(error: RoutineFileError, layout: Layout, *, now: datetime, tz: ZoneInfo) -> Span:
    """Widen the (line, column) the validator reports into the range of what is wrong."""
    reason = error.reason
    found = locate(layout, error.line, error.column, syntax=reason.startswith("not valid TOML"))
    entry = found.entry
    if entry is None:
        if found.table is not None and found.table.array:
            return found.table.header  # a trigger as a whole
        return found.span
    if found.on_key:
        return found.span
    if reason.startswith(("unknown field", "unknown GitHub filter")) or " applies only to " in reason:
        return entry.key
    key = _trigger_key(entry)
    if key == "schedule" and reason.startswith("schedule of "):
        return schedule_error_span(entry, zone_of(layout, entry.path[:2], tz), now) or entry.value
    if key == "github":
        return _event_span(entry) or entry.value
    if key in FILTER_FIELDS:
        return _filter_span(entry, layout) or entry.value
    if entry.path[-1] == "repos" and (m := re.match(r"(?:ref of |unknown key '[^']*' in )?repos\[(\d+)\]",
                                                    reason)):
        if int(m[1]) < len(entry.items):
            return entry.items[int(m[1])].span
    return entry.value


def _event_span(entry: Entry) -> Span | None:
    """The element of a `github` list that is not an event the routines take (asking bgcore.github)."""
    for item in entry.items:
        spec = string_literal(item.raw)
        if spec is None:
            return item.span
        try:
            parse_event(spec)
        except FilterError:
            return item.span
    return None


def _inner(layout: Layout, entry: Entry, key: str) -> Entry | None:
    """The key `key` inside the inline table that is `entry`'s value."""
    for e in layout.entries:
        if e.inline and e.table == entry.table and e.path == entry.path + (key,) and \
                contains(entry.value, e.key.line, e.key.start):
            return e
    return None


def _filter_span(entry: Entry, layout: Layout) -> Span | None:
    """What is wrong in a filter's value, asking bgcore.github again: an operator, its operand, or the
    character of a regular expression that does not compile."""
    value = value_of(entry.raw)
    if value is None:
        return None
    try:
        compile_filter(entry.path[-1], value)
    except FilterError as exc:
        inner = _inner(layout, entry, exc.key) if exc.key else None
        if inner is None:
            return None
        if exc.position is not None:
            return literal_span(inner.value, inner.raw, exc.position, 1) or inner.value
        if exc.key in OPERATORS or exc.key in LABEL_DOCS:
            return inner.value
        return inner.key
    return None


# -- hover ------------------------------------------------------------------------------

def hover(text: str, line: int, character: int, *, now: datetime, tz: ZoneInfo,
          context: EditorContext | None = None) -> tuple[str, Span] | None:
    """Markdown for what is under the cursor, and the range it describes: a schedule's next fire times,
    a GitHub event, or what a field, filter or operator means."""
    layout = scan(text)
    found: tuple[Entry, bool] | None = None
    for entry in layout.entries:  # the innermost entry wins: inline-table keys follow their table
        if entry.path[:1] != ("routines",) or len(entry.path) < 3:
            continue
        on_key, on_value = contains(entry.key, line, character), contains(entry.value, line, character)
        if on_key or on_value:
            found = (entry, on_key)
    if found is None:
        return None
    entry, on_key = found
    key = _trigger_key(entry)
    if key == "schedule":
        spec = string_literal(entry.raw)
        if spec is None:
            return None
        return _schedule_hover(spec, entry, layout, text, now=now, tz=tz, context=context), \
            entry.key if on_key else entry.value
    if key == "github" and not on_key:
        for item in entry.items:
            if contains(item.span, line, character):
                return _event_hover(item.raw), item.span
    if not on_key:
        return None
    doc = _doc(entry)
    return (f"**{entry.path[-1]}**: {doc}", entry.key) if doc else None


def _doc(entry: Entry) -> str | None:
    p = entry.path
    if len(p) == 3:
        doc = FIELD_DOCS.get(p[2])
        if p[2] == "overlap" and doc:
            return f"{doc[0]}\n\nOne of: {', '.join(f'`{v}`' for v in OVERLAPS)}"
        return doc[0] if doc else None
    section = p[2]
    if len(p) == 4 and section == "environment":
        doc = ENV_DOCS.get(p[3])
        return doc[0] if doc else None
    if len(p) == 4 and section == "connectors":
        return CONNECTOR_DOCS.get(p[3], (None,))[0]
    if len(p) == 4 and section == "repos":
        return REPO_DOCS.get(p[3], (None,))[0]
    if section != "triggers":
        return None
    if len(p) == 4:
        if p[3] in TRIGGER_DOCS:
            return TRIGGER_DOCS[p[3]][0]
        if p[3] in FILTER_FIELDS:
            return _filter_doc(p[3])
        return None
    if len(p) == 5 and p[3] in FILTER_FIELDS:
        docs = LABEL_DOCS if FILTER_FIELDS[p[3]][0] == "labels" else OPERATOR_DOCS
        return docs.get(p[4], (None,))[0]
    return None


def _filter_doc(name: str) -> str:
    kind, events = FILTER_FIELDS[name]
    how = ""
    if kind == "text":
        how = _TEXT_FILTER + ", ".join(f"`{op}`" for op in OPERATORS) + "."
    return "\n\n".join(filter(None, [
        f"GitHub filter. {FILTER_DOCS[name]}", how, f"For {' and '.join(f'`{e}`' for e in events)} events."]))


def _schedule_hover(spec: str, entry: Entry, layout: Layout, text: str, *, now: datetime, tz: ZoneInfo,
                    context: EditorContext | None) -> str:
    name = entry.path[1]
    refused = [p for p in lint(text, now=now, tz=tz, is_file=lambda _: True)
               if p.severity == "error" and p.span.line == entry.value.line
               and entry.value.start <= p.span.start < max(entry.value.end, entry.value.start + 1)]
    if refused:
        return f"**schedule** `{spec}`\n\n⚠ {refused[0].message}"
    notes = []
    enabled = next((e for e in layout.siblings(entry.table) if e.path[-1] == "enabled"), None)
    if enabled is not None and enabled.raw == "false":
        notes.append("this trigger is off (`enabled = false`): it does not fire")
    paused = layout.entry(("routines", name, "enabled"))
    if paused is not None and paused.raw == "false":
        notes.append(f"routine {name} is paused (`enabled = false`): it does not fire")
    stagger = context.stagger if context is not None else True
    offset = stagger_seconds(name) if stagger else 0
    return schedule_markdown(spec, now=now, tz=zone_of(layout, ("routines", name), tz), offset_s=offset,
                             notes=tuple(notes))


def _event_hover(raw: str) -> str:
    spec = string_literal(raw)
    if spec is None:
        return "⚠ a GitHub event is a string such as `\"pull_request.opened\"`"
    try:
        event, action = parse_event(spec)
    except FilterError as exc:
        return f"**{spec}**\n\n⚠ {exc.message}"
    filters = ", ".join(f"`{f}`" for f, (_, events) in FILTER_FIELDS.items() if event in events)
    if action is None:
        head = f"**{spec}**: a `{event}` event with any action: {', '.join(f'`{a}`' for a in ACTIONS[event])}"
    else:
        head = f"**{spec}**: a `{event}` event with the action `{action}`"
        if spec == "pull_request.closed":
            head += " (a merge too: add `merged = true` for merges only)"
    return f"{head}\n\nFilters: {filters}"


# -- completion ------------------------------------------------------------------------

_HEADER_PARTIAL = re.compile(r'^\s*(\[\[?)\s*routines\s*\.\s*(?:([A-Za-z0-9_-]+)|"([^"]*)")\s*\.\s*([A-Za-z0-9_]*)$')


def complete(text: str, line: int, character: int, *, now: datetime, tz: ZoneInfo,
             context: EditorContext | None = None) -> list[Completion]:
    """Field names by table (a routine, its environment and connectors, a trigger: its kind, then the
    filters of its events); values after `key =`: schedule presets, GitHub events, operators of a
    filter, overlap and network values, agents; the sub-tables of a routine in a header."""
    layout = scan(text)
    current = layout.lines[line] if line < len(layout.lines) else ""
    before = current[:character]
    if (hm := _HEADER_PARTIAL.match(before)) is not None:
        return _header_completions(hm, layout, line, character, current)
    ti = layout.table_index_at(line)
    table = layout.tables[ti].path if ti >= 0 else ()
    if len(table) < 2 or table[0] != "routines":
        return []
    m = ASSIGN.match(before)
    if m:
        key = read_key(m.group(1), 0)
        path = table + (tuple(part for part, _, _ in key[0]) if key else (key_of_assignment(m),))
        return _value_completions(path, m.group(2), layout, ti, line, character, current, now=now, tz=tz,
                                  context=context)
    enclosing = _enclosing_list(layout, line, character)
    if enclosing is not None:  # inside a `github = [` list written over several lines
        segment = before[max(before.rfind(","), before.rfind("[")) + 1:]
        return _events(segment, line, character, current, in_list=True)
    km = PARTIAL_KEY.match(before)
    if km:
        return _field_completions(table, layout, ti, km.group(1), line, character, current)
    return []


def _enclosing_list(layout: Layout, line: int, character: int) -> Entry | None:
    for entry in layout.entries:
        if _trigger_key(entry) == "github" and entry.value.line < line and contains(entry.value, line, character) \
                and not (line == entry.value.end_line and character >= entry.value.end):
            return entry
    return None


def _field(name: str, doc: str, example: str, detail: str, replace: Span) -> Completion:
    return Completion(name, "field", detail, doc, f"{name} = {example}", replace)


def _field_completions(table: tuple[str, ...], layout: Layout, ti: int, partial: str, line: int, character: int,
                       current: str) -> list[Completion]:
    replace = key_replace(partial, line, character, current)
    used = {e.path[len(table)] for e in layout.siblings(ti) if e.key.line != line and len(e.path) > len(table)}
    if len(table) == 2:
        return [_field(k, doc, ex, "required" if k == "repos" else "", replace)
                for k, (doc, ex) in FIELD_DOCS.items() if k not in used and k not in _SUBTABLES
                and not (k in ("prompt", "prompt_file") and {"prompt", "prompt_file"} & used)]
    section = table[2]
    if len(table) == 3 and section == "environment":
        return [_field(k, doc, ex, "", replace) for k, (doc, ex) in ENV_DOCS.items() if k not in used]
    if len(table) == 3 and section == "connectors":
        return [_field(k, doc, ex, "", replace) for k, (doc, ex) in CONNECTOR_DOCS.items() if k not in used]
    if len(table) != 3 or section != "triggers":
        return []
    kinds = [k for k in ("schedule", "api", "github") if k in used]
    if not kinds:
        return [_field(k, TRIGGER_DOCS[k][0], TRIGGER_DOCS[k][1], "trigger", replace)
                for k in ("schedule", "api", "github")]
    extra = {"schedule": ("enabled",), "api": ("rate_limit", "enabled"),
             "github": ("hourly_cap", "enabled")}[kinds[0]]
    items = [_field(k, TRIGGER_DOCS[k][0], TRIGGER_DOCS[k][1], "", replace) for k in extra if k not in used]
    if kinds[0] == "github":
        events = _listed_events(layout, ti)
        for name, (kind, applies) in FILTER_FIELDS.items():
            if name not in used and (not events or events & set(applies)):
                items.append(_field(name, _filter_doc(name), _FILTER_EXAMPLE[kind], "filter", replace))
    return items


def _listed_events(layout: Layout, ti: int) -> set[str]:
    """The events the `github` key of trigger table `ti` names (those bgcore.github reads)."""
    entry = next((e for e in layout.siblings(ti) if e.path[-1] == "github"), None)
    if entry is None:
        return set()
    raws = [item.raw for item in entry.items] if entry.items else [entry.raw]
    events = set()
    for raw in raws:
        try:
            events.add(parse_event(string_literal(raw)))
        except FilterError:
            continue
    return {e for e, _ in events}


def _header_completions(hm: re.Match, layout: Layout, line: int, character: int, current: str) -> list[Completion]:
    array, name, partial = hm.group(1) == "[[", hm.group(2) or hm.group(3), hm.group(4)
    replace = key_replace(partial, line, character, current)
    rest = current[replace.end:].lstrip()
    close = "" if rest.startswith("]") else ("]]" if array else "]")
    present = {t.path[2] for t in layout.tables if len(t.path) == 3 and t.path[:2] == ("routines", name)
               and t.header.line != line}
    subs = ("triggers",) if array else tuple(s for s in ("environment", "connectors") if s not in present)
    return [Completion(sub, "field", "table", FIELD_DOCS[sub][0], sub + close, replace) for sub in subs]


def _open_containers(typed: str) -> list[list]:
    """The brackets still open in the text typed after `key =`: [char, where its current element starts]."""
    stack: list[list] = []
    i = 0
    while i < len(typed):
        c = typed[i]
        if c in "\"'":
            end = typed.find(c, i + 1)
            if end < 0:
                break  # the cursor is inside this string
            i = end + 1
            continue
        if c in "[{":
            stack.append([c, i + 1])
        elif c in "]}" and stack:
            stack.pop()
        elif c == "," and stack:
            stack[-1][1] = i + 1
        i += 1
    return stack


def _value_completions(path: tuple[str, ...], typed: str, layout: Layout, ti: int, line: int, character: int,
                       current: str, *, now: datetime, tz: ZoneInfo, context: EditorContext | None) -> list[Completion]:
    stack = _open_containers(typed)
    key = path[-1]
    in_trigger = len(path) == 4 and path[2] == "triggers"
    if stack:
        segment = typed[stack[-1][1]:]
        if in_trigger and key == "github" and [c for c, _ in stack] == ["["]:
            return _events(segment, line, character, current, in_list=True)
        if in_trigger and key in FILTER_FIELDS and [c for c, _ in stack] == ["{"]:
            return _operator_completions(key, segment, line, character, current)
        if len(path) == 3 and key == "repos" and [c for c, _ in stack] == ["[", "{"]:
            km = PARTIAL_KEY.match(segment)
            if km:
                replace = key_replace(km.group(1), line, character, current)
                return [_field(k, doc, ex, "", replace) for k, (doc, ex) in REPO_DOCS.items()]
        return []
    replace = value_replace(typed, line, character, current)
    if in_trigger:
        if key == "schedule":
            name = path[1]
            stagger = context.stagger if context is not None else True
            return schedule_presets(SCHEDULE_PRESETS, replace, now=now, tz=zone_of(layout, path[:2], tz),
                                    offset_s=stagger_seconds(name) if stagger else 0)
        if key == "github":
            return _events(typed, line, character, current, in_list=False)
        if key == "api":
            return [Completion("true", "value", key, TRIGGER_DOCS[key][0], "true", replace)]
        if key == "enabled" or (key in FILTER_FIELDS and FILTER_FIELDS[key][0] == "bool"):
            doc = TRIGGER_DOCS[key][0] if key == "enabled" else _filter_doc(key)
            return [Completion(v, "value", key, doc, v, replace) for v in ("true", "false")]
        return []
    if len(path) == 3:
        if key == "enabled":
            return [Completion(v, "value", key, FIELD_DOCS[key][0], v, replace) for v in ("true", "false")]
        if key == "overlap":
            return [Completion(v, "value", key, FIELD_DOCS[key][0], json.dumps(v), replace) for v in OVERLAPS]
        if key == "agent" and context is not None and context.agents:
            return [Completion(v, "value", key, FIELD_DOCS[key][0], json.dumps(v), replace)
                    for v in sorted(context.agents)]
        return []
    if len(path) == 4 and path[2] == "environment" and key == "network":
        return _network_values(replace, now=now, tz=tz)
    return []


def _events(segment: str, line: int, character: int, current: str, *, in_list: bool) -> list[Completion]:
    """GitHub event names: list elements inside `[ ]`, else a whole list."""
    typed = segment.lstrip()
    replace = value_replace(typed, line, character, current)
    items = []
    for name in EVENT_NAMES:
        event, _, action = name.partition(".")
        detail = f"{event}, any action" if not action else f"{event}, action {action}"
        text = json.dumps(name) if in_list or typed.startswith(("\"", "'")) else f"[{json.dumps(name)}]"
        items.append(Completion(name, "value", detail, _event_hover(json.dumps(name)), text, replace))
    return items


def _operator_completions(key: str, segment: str, line: int, character: int, current: str) -> list[Completion]:
    """Inside a filter's `{ }`: its operators (include/exclude for labels), or true/false after `equals =`."""
    kind = FILTER_FIELDS[key][0]
    assign = re.match(r"^\s*([A-Za-z0-9_]+)\s*=\s*(.*)$", segment)
    if assign:
        if kind == "bool" and assign.group(1) == "equals":
            replace = value_replace(assign.group(2), line, character, current)
            return [Completion(v, "value", f"{key}.equals", _filter_doc(key), v, replace) for v in ("true", "false")]
        return []
    km = PARTIAL_KEY.match(segment)
    if km is None:
        return []
    replace = key_replace(km.group(1), line, character, current)
    if kind == "bool":
        docs = {"equals": ("The value is this, `true` or `false` (what a plain value means).", "true")}
    else:
        docs = LABEL_DOCS if kind == "labels" else OPERATOR_DOCS
    return [_field(op, doc, ex, f"{key} operator", replace) for op, (doc, ex) in docs.items()]


def _network_values(replace: Span, *, now: datetime, tz: ZoneInfo) -> list[Completion]:
    """The network values, those this bgd accepts first (asking the routines validator)."""
    items = []
    for value in NETWORKS:
        refusal = _network_refusal(value, now=now, tz=tz)
        doc = ENV_DOCS["network"][0] + (f"\n\n⚠ {refusal}" if refusal else "")
        items.append((refusal is not None, Completion(value, "value", "refused by this bgd" if refusal else "network",
                                                      doc, json.dumps(value), replace)))
    return [c for _, c in sorted(items, key=lambda x: x[0])]


def _network_refusal(value: str, *, now: datetime, tz: ZoneInfo) -> str | None:
    probe = (f'[routines.probe]\nprompt = "p"\nrepos = ["/"]\n[routines.probe.environment]\n'
             f'network = {json.dumps(value)}\n')
    _, errors = load_routines(probe, FILE_NAME, now, tz, isfile=lambda _: True, base_dir="/")
    return errors[0].reason if errors else None


KIND = FileKind(FILE_NAME, lint, hover, complete)

__all__ = ["CONNECTOR_DOCS", "ENV_DOCS", "EVENT_NAMES", "FIELD_DOCS", "FILTER_DOCS", "KIND", "LABEL_DOCS",
           "OPERATOR_DOCS", "REPO_DOCS", "SCHEDULE_PRESETS", "TRIGGER_DOCS", "complete", "error_code", "hover",
           "is_routines_file", "lint"]
