"""tasks.toml as a language: problems with exact ranges, hover on schedules, completion.

No LSP here (the server converts), no second schedule parser and no second set of
rules: schedules are read by `bgcore.schedule` and tasks are validated by the
daemon's own `bgcore.tasks_file.load_tasks` (what `bgctl task ls` reports).  What this
module adds is editor-shaped: the scanner of `definitions` finds where each key and
value sits, so each problem the daemon reports at a (line, column) gets the exact
range of what is wrong; hover and completion use the same scanner.

The format (SPEC §7, shared with the daemon's task engine): one table per task,

    [tasks.nightly-report]
    description = "Summarise yesterday's failures"
    prompt = "Read the CI failures of the last day and write a summary"   # or prompt_file
    cwd = "~/src/app"             # required, must exist
    schedule = "weekdays at 9am"  # required
    agent = "claude"
    permission_mode = "default"
    model = "sonnet"
    worktree = false
    enabled = true
    overlap = "skip"              # skip | buffer_one | replace | allow
    timezone = "Europe/Paris"

Positions are 0-based (line, character) in code points (see `definitions`).
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass
from datetime import datetime
from typing import Callable
from zoneinfo import ZoneInfo

from bgcore.config import PERMISSION_MODES
from bgcore.tasks_file import OVERLAPS, TaskFileError, load_tasks
from bgcore.zones import local_zone

from .definitions import (ASSIGN, PARTIAL_KEY, Completion, EditorContext, FileKind, Layout, Problem, Span,
                          contains, key_of_assignment, key_replace, locate, rounded_note, scan,
                          schedule_error_span, schedule_markdown, schedule_presets, string_literal, value_replace,
                          zone_of)

FILE_NAME = "tasks.toml"


@dataclass(frozen=True)
class FieldSpec:
    kind: type
    doc: str
    values: tuple[str, ...] = ()
    example: str = '""'


FIELDS: dict[str, FieldSpec] = {
    "description": FieldSpec(str, "What the task is for, shown by `bgctl task ls`."),
    "prompt": FieldSpec(str, "The prompt each run starts with (or `prompt_file`)."),
    "prompt_file": FieldSpec(str, "A file holding the prompt, read at each run; relative paths are "
                                  "taken from the task's `cwd`."),
    "cwd": FieldSpec(str, "**Required.** The directory each run starts in; it must exist. `~` is expanded."),
    "schedule": FieldSpec(str, "**Required.** When the task runs: `manual`, `hourly`, `daily at 9am`, "
                               "`weekdays at 9:30`, `weekly on monday at 10:00`, `every 15 minutes`, "
                               "`once at 2026-12-24 09:00`, or a 5-field cron."),
    "agent": FieldSpec(str, "The agent to run (from config.toml), e.g. `claude`."),
    "permission_mode": FieldSpec(str, "The agent's permission mode.", PERMISSION_MODES),
    "model": FieldSpec(str, "The model to ask the agent for, e.g. `sonnet`."),
    "worktree": FieldSpec(bool, "Run each fire in its own git worktree.", example="false"),
    "enabled": FieldSpec(bool, "`false` pauses the task.", example="true"),
    "overlap": FieldSpec(str, "What to do when a run is due while the last one still runs "
                              "(default `skip`).", OVERLAPS),
    "timezone": FieldSpec(str, "The IANA zone the schedule's times are in (default: local)."),
    "where": FieldSpec(str, "Where runs go: `local` (default) or `cluster` (the workers of config.toml's "
                            "[cluster]).", ("local", "cluster")),
}
REQUIRED = ("cwd", "schedule")

# Offered when completing a schedule; each is checked by the schedule core and accepted by the
# daemon in a tasks file (a test keeps both true), and shown with its human form.  Relative
# one-shots (`in 45 minutes`, `tomorrow at 9am`) are left out: in a file they would mean another
# time at each reading, and the daemon refuses them there.
SCHEDULE_PRESETS = (
    "manual", "hourly", "daily", "daily at 9am", "weekdays", "weekdays at 9:30", "weekends at 10:00",
    "weekly", "weekly on monday at 10:00", "every 15 minutes", "every 2 hours", "every 3 days",
    "at 15:00", "0 9 * * 1-5",
)


def is_tasks_file(path: str | os.PathLike | None) -> bool:
    """The user's tasks file, or any file named tasks.toml."""
    return KIND.handles(path)


# -- problems -----------------------------------------------------------------------

def lint(text: str, *, now: datetime, tz: ZoneInfo, path: str = FILE_NAME,
         is_dir: Callable[[str], bool] = os.path.isdir,
         is_file: Callable[[str], bool] = os.path.isfile,
         context: EditorContext | None = None) -> list[Problem]:
    """Every problem of a tasks file, in reading order.

    The rules are the daemon's (`bgcore.tasks_file.load_tasks`, what `bgctl task ls` reports), so the
    editor and the daemon never disagree about what is valid; this adds the exact range of each
    problem, and two editor-only notes: a schedule that was rounded, a prompt_file not found.
    """
    layout = scan(text)
    agents = set(context.agents) if context and context.agents is not None else None
    _, errors = load_tasks(text, path, now, tz, isdir=is_dir, agents=agents)
    problems = [Problem(_error_span(error, layout, now=now, tz=tz), error.reason, "error", _error_code(error.reason))
                for error in errors]
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        data = {}
    tasks = data.get("tasks") if isinstance(data.get("tasks"), dict) else {}
    for name, task in tasks.items():
        if isinstance(task, dict):
            problems.extend(_notes(name, task, layout, now=now, tz=tz, is_file=is_file))
    problems.sort(key=lambda p: (p.span.line, p.span.start))
    return problems


def _error_code(reason: str) -> str:
    for needle, code in (("not valid TOML", "toml-syntax"), ("unknown field", "unknown-field"),
                         ("unknown top-level key", "unknown-field"), ("duplicate", "duplicate-task"),
                         ("kebab-case", "bad-name"), (" needs ", "missing-field"), ("has both", "bad-value"),
                         ("schedule", "bad-schedule"), ("cwd", "bad-cwd"), ("timezone", "bad-timezone"),
                         ("unknown agent", "unknown-agent")):
        if needle in reason:
            return code
    return "invalid-task"


def _error_span(error: TaskFileError, layout: Layout, *, now: datetime, tz: ZoneInfo) -> Span:
    """Widen the (line, column) the daemon reports into the range of what is wrong."""
    found = locate(layout, error.line, error.column, syntax=error.reason.startswith("not valid TOML"))
    entry = found.entry
    if entry is None or found.on_key:
        return found.span
    if error.reason.startswith("unknown field"):
        return entry.key
    if entry.path[-1] == "schedule" and error.reason.startswith("schedule of task"):
        return schedule_error_span(entry, zone_of(layout, ("tasks", entry.path[1]), tz), now) or entry.value
    return entry.value


def _notes(name: str, task: dict, layout: Layout, *, now: datetime, tz: ZoneInfo,
           is_file: Callable[[str], bool]) -> list[Problem]:
    """Editor-only hints on a task the daemon may well accept."""
    out: list[Problem] = []
    schedule, cwd, prompt_file = task.get("schedule"), task.get("cwd"), task.get("prompt_file")
    entry = layout.entry(("tasks", name, "schedule"))
    if isinstance(schedule, str) and entry is not None:
        note = rounded_note(entry, zone_of(layout, ("tasks", name), tz), now)
        if note is not None:
            out.append(note)
    if isinstance(prompt_file, str) and isinstance(cwd, str):
        target = os.path.join(os.path.expanduser(cwd), os.path.expanduser(prompt_file))
        if os.path.isabs(target) and not is_file(target):
            out.append(Problem(layout.span(("tasks", name, "prompt_file"), part="value"),
                               f"prompt_file {prompt_file!r} not found (looked for {target})", "warning",
                               "prompt-file-not-found"))
    return out


# -- hover ------------------------------------------------------------------------------

def hover(text: str, line: int, character: int, *, now: datetime, tz: ZoneInfo,
          context: EditorContext | None = None) -> tuple[str, Span] | None:
    """Markdown for what is under the cursor, and the range it describes."""
    layout = scan(text)
    for entry in layout.entries:
        if len(entry.path) != 3 or entry.path[0] != "tasks" or entry.inline:
            continue
        on_key, on_value = contains(entry.key, line, character), contains(entry.value, line, character)
        if not (on_key or on_value):
            continue
        key = entry.path[2]
        if key == "schedule":
            spec = string_literal(entry.raw)
            if spec is None:
                return None
            zone = zone_of(layout, ("tasks", entry.path[1]), tz)
            return schedule_markdown(spec, now=now, tz=zone), entry.value if on_value else entry.key
        if on_key and key in FIELDS:
            spec_ = FIELDS[key]
            extra = f"\n\nOne of: {', '.join(f'`{v}`' for v in spec_.values)}" if spec_.values else ""
            return f"**{key}**: {spec_.doc}{extra}", entry.key
    return None


# -- completion ------------------------------------------------------------------------

def complete(text: str, line: int, character: int, *, now: datetime, tz: ZoneInfo,
             context: EditorContext | None = None) -> list[Completion]:
    """Field names in a task table; schedule presets and enum values after `key =`."""
    layout = scan(text)
    current = layout.lines[line] if line < len(layout.lines) else ""
    before = current[:character]
    table = layout.table_at(line)
    m = ASSIGN.match(before)
    if m:
        return _value_completions(key_of_assignment(m), m.group(2), line, character, current, now=now, tz=tz,
                                  context=context)
    km = PARTIAL_KEY.match(before)
    if km and len(table) == 2 and table[0] == "tasks":
        used = {e.path[2] for e in layout.entries if len(e.path) == 3 and e.path[:2] == table and e.key.line != line}
        replace = key_replace(km.group(1), line, character, current)
        return [Completion(name, "field", "required" if name in REQUIRED else spec.kind.__name__,
                           spec.doc, f"{name} = {spec.example}", replace)
                for name, spec in FIELDS.items() if name not in used]
    return []


def _value_completions(key: str, typed: str, line: int, character: int, current: str, *,
                       now: datetime, tz: ZoneInfo, context: EditorContext | None) -> list[Completion]:
    replace = value_replace(typed, line, character, current)
    if key == "schedule":
        return schedule_presets(SCHEDULE_PRESETS, replace, now=now, tz=tz)
    spec = FIELDS.get(key)
    if spec is None:
        return []
    if spec.kind is bool:
        return [Completion(v, "value", key, spec.doc, v, replace) for v in ("true", "false")]
    values = spec.values
    if key == "agent" and context is not None and context.agents:
        values = tuple(sorted(context.agents))
    return [Completion(v, "value", key, spec.doc, json.dumps(v), replace) for v in values]


KIND = FileKind(FILE_NAME, lint, hover, complete)

__all__ = ["Completion", "FIELDS", "KIND", "Problem", "SCHEDULE_PRESETS", "Span", "complete", "hover",
           "is_tasks_file", "lint", "local_zone", "schedule_markdown"]
