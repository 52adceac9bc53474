"""tasks.toml as a language: problems with exact ranges, hover on schedules, completion.

No LSP here (the server converts), no second schedule parser and no second set of
rules: schedules are read by `bgcore.schedule` and tasks are validated by the
daemon's own `bgcore.tasks_file.load_tasks` (what `bgctl task ls` reports).  What this
module adds is editor-shaped: a small scanner of the text finds where each key and
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

Positions are 0-based (line, character) in code points; the server converts them
to the client's units.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bgcore import paths
from bgcore.schedule import ScheduleError, explain, parse_schedule
from bgcore.zones import local_zone
from bgcore.config import PERMISSION_MODES
from bgcore.tasks_file import OVERLAPS, TaskFileError, load_tasks

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


# -- results ----------------------------------------------------------------------

@dataclass(frozen=True)
class Span:
    line: int
    start: int
    end_line: int
    end: int


@dataclass(frozen=True)
class Problem:
    span: Span
    message: str
    severity: str  # "error" | "warning" | "information"
    code: str


@dataclass(frozen=True)
class Completion:
    label: str
    kind: str  # "field" | "value" | "schedule"
    detail: str = ""
    documentation: str = ""
    insert_text: str = ""
    replace: Span | None = None  # the text the insert replaces (None: insert at the cursor)


def is_tasks_file(path: str | os.PathLike | None) -> bool:
    """The user's tasks file, or any file named tasks.toml."""
    if not path:
        return False
    p = Path(path)
    return p.name == FILE_NAME or p == paths.config_dir() / FILE_NAME


# -- where things are: a scanner of the text ---------------------------------------

@dataclass
class _Entry:
    path: tuple[str, ...]
    key: Span
    value: Span
    raw: str | None  # the value's text when it sits on one line


@dataclass
class _Table:
    path: tuple[str, ...]
    header: Span
    name: Span  # the last part of the header's key


@dataclass
class _Layout:
    lines: list[str]
    entries: list[_Entry] = field(default_factory=list)
    tables: list[_Table] = field(default_factory=list)

    def entry(self, path: tuple[str, ...]) -> _Entry | None:
        return next((e for e in self.entries if e.path == path), None)

    def table(self, path: tuple[str, ...]) -> _Table | None:
        return next((t for t in self.tables if t.path == path), None)

    def span(self, path: tuple[str, ...], *, part: str = "key") -> Span:
        """Where `path` is written; else where its closest written parent is."""
        for n in range(len(path), 0, -1):
            prefix = path[:n]
            entry = self.entry(prefix)
            if entry is not None:
                return entry.value if part == "value" and n == len(path) else entry.key
            table = self.table(prefix)
            if table is not None:
                return table.name
        return Span(0, 0, 0, len(self.lines[0]) if self.lines else 0)

    def table_at(self, line: int) -> tuple[str, ...]:
        current: tuple[str, ...] = ()
        for t in self.tables:
            if t.header.line <= line:
                current = t.path
        return current


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _read_key(line: str, i: int) -> tuple[list[tuple[str, int, int]], int] | None:
    """A dotted key from column i: its parts with their columns, and the column after it."""
    parts = []
    while True:
        while i < len(line) and line[i] in " \t":
            i += 1
        if i >= len(line):
            return None
        start = i
        if line[i] == '"':
            j = i + 1
            while j < len(line) and line[j] != '"':
                j += 2 if line[j] == "\\" else 1
            if j >= len(line):
                return None
            try:
                name = json.loads(line[i:j + 1])
            except ValueError:
                name = line[i + 1:j]
            i = j + 1
        elif line[i] == "'":
            j = line.find("'", i + 1)
            if j < 0:
                return None
            name, i = line[i + 1:j], j + 1
        else:
            m = _BARE_KEY.match(line, i)
            if not m:
                return None
            name, i = m.group(), m.end()
        parts.append((name, start, i))
        j = i
        while j < len(line) and line[j] in " \t":
            j += 1
        if j < len(line) and line[j] == ".":
            i = j + 1
            continue
        return parts, i


def _skip_string(text: str, i: int) -> int:
    """From an opening quote at i, the index after the closing one (or len(text))."""
    for q in ('"""', "'''"):
        if text.startswith(q, i):
            end = text.find(q, i + 3)
            while end >= 0 and q == '"""' and _escaped(text, end):
                end = text.find(q, end + 1)
            if end < 0:
                return len(text)
            while text.startswith(q[0], end + 3):  # up to two quotes may end the content
                end += 1
            return end + 3
    quote = text[i]
    j = i + 1
    while j < len(text) and text[j] != quote and text[j] != "\n":
        j += 2 if quote == '"' and text[j] == "\\" else 1
    return min(j + 1, len(text))


def _escaped(text: str, i: int) -> bool:
    n = 0
    while i - 1 - n >= 0 and text[i - 1 - n] == "\\":
        n += 1
    return n % 2 == 1


def _value_end(text: str, i: int) -> int:
    """The offset just past the value that starts at offset i."""
    if i >= len(text):
        return i
    c = text[i]
    if c in "\"'":
        return _skip_string(text, i)
    if c in "[{":
        depth = 0
        j = i
        while j < len(text):
            c = text[j]
            if c in "\"'":
                j = _skip_string(text, j)
                continue
            if c == "#":
                nl = text.find("\n", j)
                j = len(text) if nl < 0 else nl
                continue
            if c in "[{":
                depth += 1
            elif c in "]}":
                depth -= 1
                if depth == 0:
                    return j + 1
            j += 1
        return len(text)
    j = i
    while j < len(text) and text[j] not in "#\n":
        j += 1
    while j > i and text[j - 1] in " \t\r":
        j -= 1
    return j


def _scan(text: str) -> _Layout:
    lines = text.split("\n")
    layout = _Layout([line.rstrip("\r") for line in lines])
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line) + 1)

    def position(offset: int) -> tuple[int, int]:
        lo, hi = 0, len(lines) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if starts[mid] <= offset:
                lo = mid
            else:
                hi = mid - 1
        return lo, offset - starts[lo]

    table: tuple[str, ...] = ()
    n = 0
    while n < len(lines):
        line = layout.lines[n]
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        if not stripped or stripped.startswith("#"):
            n += 1
            continue
        if stripped.startswith("["):
            array = stripped.startswith("[[")
            key = _read_key(line, indent + (2 if array else 1))
            if key is not None:
                parts, after = key
                close = line.find("]]" if array else "]", after)
                table = tuple(p[0] for p in parts)
                header_end = close + (2 if array else 1) if close >= 0 else len(line.rstrip())
                layout.tables.append(_Table(table, Span(n, indent, n, header_end),
                                            Span(n, parts[-1][1], n, parts[-1][2])))
            n += 1
            continue
        key = _read_key(line, indent)
        if key is None:
            n += 1
            continue
        parts, after = key
        eq = after
        while eq < len(line) and line[eq] in " \t":
            eq += 1
        if eq >= len(line) or line[eq] != "=":
            n += 1
            continue
        v = eq + 1
        while v < len(line) and line[v] in " \t":
            v += 1
        start_offset = starts[n] + v
        end_offset = _value_end(text, start_offset)
        end_line, end_col = position(end_offset) if end_offset > start_offset else (n, v)
        raw = line[v:end_col] if end_line == n else None
        layout.entries.append(_Entry(table + tuple(p[0] for p in parts),
                                     Span(n, parts[0][1], n, parts[-1][2]),
                                     Span(n, v, end_line, end_col), raw))
        n = max(end_line, n) + 1
    return layout


def _string_literal(raw: str | None) -> str | None:
    """The value of a one-line TOML string as written, when it is one."""
    if not raw or len(raw) < 2 or raw[0] not in "\"'" or raw[-1] != raw[0] or raw.startswith(raw[0] * 3):
        return None
    if raw[0] == "'":
        return raw[1:-1]
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, str) else None


# -- problems -----------------------------------------------------------------------

def lint(text: str, *, now: datetime, tz: ZoneInfo, path: str = FILE_NAME,
         is_dir: Callable[[str], bool] = os.path.isdir,
         is_file: Callable[[str], bool] = os.path.isfile) -> list[Problem]:
    """Every problem of a tasks file, in reading order.

    The rules are the daemon's (`bgcore.tasks_file.load_tasks`, what `bgctl task ls` reports), so the
    editor and the daemon never disagree about what is valid; this adds the exact range of each
    problem, and two editor-only notes: a schedule that was rounded, a prompt_file not found.
    """
    layout = _scan(text)
    _, errors = load_tasks(text, path, now, tz, isdir=is_dir)
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
                         ("schedule", "bad-schedule"), ("cwd", "bad-cwd"), ("timezone", "bad-timezone")):
        if needle in reason:
            return code
    return "invalid-task"


def _error_span(error: TaskFileError, layout: _Layout, *, now: datetime, tz: ZoneInfo) -> Span:
    """Widen the (line, column) the daemon reports into the range of what is wrong."""
    if error.line is None:
        return Span(0, 0, 0, len(layout.lines[0]) if layout.lines else 0)
    line = min(error.line - 1, max(len(layout.lines) - 1, 0))
    col = (error.column or 1) - 1
    text = layout.lines[line] if layout.lines else ""
    if error.reason.startswith("not valid TOML"):
        end = len(text.rstrip())
        return Span(line, col, line, end if end > col else col + 1)
    for entry in layout.entries:
        if entry.value.line != line or not entry.value.start <= col < max(entry.value.end, entry.value.start + 1):
            if entry.key.line == line and entry.key.start == col:
                return entry.key
            continue
        if error.reason.startswith("unknown field"):
            return entry.key
        if entry.path[-1] == "schedule" and error.reason.startswith("schedule of task"):
            return _schedule_span(entry, layout, now=now, tz=tz) or entry.value
        return entry.value
    for table in layout.tables:
        if table.header.line == line:
            return table.name
    end = len(text.rstrip())
    return Span(line, col, line, end if end > col else col + 1)


def _schedule_span(entry: _Entry, layout: _Layout, *, now: datetime, tz: ZoneInfo) -> Span | None:
    """The characters of a schedule string the schedule core could not read (asking it again)."""
    spec = _string_literal(entry.raw)
    if spec is None:
        return None
    zone = _task_zone(layout, entry.path[1], tz)
    try:
        parse_schedule(spec, now=now.astimezone(zone), tz=zone)
    except ScheduleError as exc:
        return _fragment_span(entry, exc)
    return None


def _notes(name: str, task: dict, layout: _Layout, *, now: datetime, tz: ZoneInfo,
           is_file: Callable[[str], bool]) -> list[Problem]:
    """Editor-only hints on a task the daemon may well accept."""
    out: list[Problem] = []
    schedule, cwd, prompt_file = task.get("schedule"), task.get("cwd"), task.get("prompt_file")
    entry = layout.entry(("tasks", name, "schedule"))
    if isinstance(schedule, str) and entry is not None:
        zone = _task_zone(layout, name, tz)
        try:
            parsed = parse_schedule(schedule, now=now.astimezone(zone), tz=zone)
        except ScheduleError:
            parsed = None
        if parsed is not None and parsed.rounded_from:
            out.append(Problem(entry.value, f"read as {parsed.human!r}" + (f" ({parsed.cron})" if parsed.cron else "")
                               + f": {parsed.rounded_from!r} does not divide evenly, so the nearest clean "
                                 "interval was picked", "information", "schedule-rounded"))
    if isinstance(prompt_file, str) and isinstance(cwd, str):
        target = os.path.join(os.path.expanduser(cwd), os.path.expanduser(prompt_file))
        if os.path.isabs(target) and not is_file(target):
            out.append(Problem(layout.span(("tasks", name, "prompt_file"), part="value"),
                               f"prompt_file {prompt_file!r} not found (looked for {target})", "warning",
                               "prompt-file-not-found"))
    return out


def _schedule_message(exc: ScheduleError) -> str:
    text = str(exc)
    return f"{text} (e.g. {exc.example!r})" if exc.example else text


def _fragment_span(entry: _Entry | None, exc: ScheduleError) -> Span | None:
    """The characters of the schedule string that the schedule core could not read."""
    if entry is None:
        return None
    value = _string_literal(entry.raw)
    if value is None or value != exc.spec or entry.raw[1:-1] != value or exc.position is None:
        return entry.value  # escapes or a multi-line string: point at the whole value
    start = entry.value.start + 1 + exc.position
    length = len(exc.fragment) if exc.fragment and value.startswith(exc.fragment, exc.position) else 0
    end = start + max(length, 1)
    end = min(end, entry.value.end - 1) if length else min(end, entry.value.end)
    if end <= start:  # something missing at the end: point at the closing quote
        start, end = entry.value.end - 1, entry.value.end
    return Span(entry.value.line, start, entry.value.line, end)


# -- hover ------------------------------------------------------------------------------

def _contains(span: Span, line: int, character: int) -> bool:
    if not span.line <= line <= span.end_line:
        return False
    if line == span.line and character < span.start:
        return False
    return not (line == span.end_line and character > span.end)


def hover(text: str, line: int, character: int, *, now: datetime, tz: ZoneInfo) -> tuple[str, Span] | None:
    """Markdown for what is under the cursor, and the range it describes."""
    layout = _scan(text)
    for entry in layout.entries:
        if len(entry.path) != 3 or entry.path[0] != "tasks":
            continue
        on_key, on_value = _contains(entry.key, line, character), _contains(entry.value, line, character)
        if not (on_key or on_value):
            continue
        key = entry.path[2]
        if key == "schedule" and (on_value or on_key):
            spec = _string_literal(entry.raw)
            if spec is None:
                return None
            zone = _task_zone(layout, entry.path[1], tz)
            return schedule_markdown(spec, now=now, tz=zone), entry.value if on_value else entry.key
        if on_key and key in FIELDS:
            spec_ = FIELDS[key]
            extra = f"\n\nOne of: {', '.join(f'`{v}`' for v in spec_.values)}" if spec_.values else ""
            return f"**{key}**: {spec_.doc}{extra}", entry.key
    return None


def _task_zone(layout: _Layout, name: str, default: ZoneInfo) -> ZoneInfo:
    entry = layout.entry(("tasks", name, "timezone"))
    zone = _string_literal(entry.raw) if entry else None
    if zone:
        try:
            return ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return default


def schedule_markdown(spec: str, *, now: datetime, tz: ZoneInfo, count: int = 3) -> str:
    """The hover text of a schedule: normalized cron, human form, next fire times."""
    try:
        info = explain(spec, now=now.astimezone(tz), tz=tz, count=count, loop_intervals=False)  # tasks.toml's reading
    except ScheduleError as exc:
        return f"**schedule** `{spec}`\n\n⚠ {_schedule_message(exc)}"
    lines = [f"**schedule** `{spec}`: {info['human']}", ""]
    if info.get("cron"):
        lines.append(f"- cron: `{info['cron']}`")
    lines.append(f"- kind: {info['kind']}")
    if info.get("rounded_from"):
        lines.append(f"- rounded from {info['rounded_from']!r}")
    lines.append(f"- time zone: {info['timezone']}")
    if info["next"]:
        lines += ["", f"Next {len(info['next'])} fire times:"]
        lines += [f"- {_friendly(t)}" for t in info["next"]]
    else:
        lines += ["", "No fire times ahead" + (" (runs only when run by hand)" if info["kind"] == "manual" else "")]
    return "\n".join(lines)


def _friendly(iso: str) -> str:
    dt = datetime.fromisoformat(iso)
    return f"{dt:%a %Y-%m-%d %H:%M} ({iso})"


# -- completion ------------------------------------------------------------------------

_ASSIGN = re.compile(r"^\s*((?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'))*)"
                     r"\s*=\s*(.*)$")
_PARTIAL_KEY = re.compile(r"^\s*([A-Za-z0-9_]*)$")


def complete(text: str, line: int, character: int, *, now: datetime, tz: ZoneInfo) -> list[Completion]:
    """Field names in a task table; schedule presets and enum values after `key =`."""
    layout = _scan(text)
    current = layout.lines[line] if line < len(layout.lines) else ""
    before = current[:character]
    table = layout.table_at(line)
    m = _ASSIGN.match(before)
    if m:
        key = _read_key(m.group(1), 0)
        last = key[0][-1][0] if key else m.group(1)
        return _value_completions(last, m.group(2), line, character, current, now=now, tz=tz)
    km = _PARTIAL_KEY.match(before)
    if km and len(table) == 2 and table[0] == "tasks":
        used = {e.path[2] for e in layout.entries if len(e.path) == 3 and e.path[:2] == table and e.key.line != line}
        start = character - len(km.group(1))
        end = start + len(_BARE_KEY.match(current, start).group()) if _BARE_KEY.match(current, start) else character
        replace = Span(line, start, line, end)
        return [Completion(name, "field", "required" if name in REQUIRED else spec.kind.__name__,
                           spec.doc, f"{name} = {spec.example}", replace)
                for name, spec in FIELDS.items() if name not in used]
    return []


def _value_completions(key: str, typed: str, line: int, character: int, current: str, *,
                       now: datetime, tz: ZoneInfo) -> list[Completion]:
    start = character - len(typed)
    # Replace what is typed so far, up to the closing quote when the cursor is inside a string.
    end = character
    if typed[:1] in ("\"", "'"):
        close = current.find(typed[0], character)
        end = close + 1 if close >= 0 else len(current.rstrip())
    replace = Span(line, start, line, max(end, character))
    if key == "schedule":
        items = []
        for preset in SCHEDULE_PRESETS:
            try:
                human = parse_schedule(preset, now=now.astimezone(tz), tz=tz).human
            except ScheduleError:
                continue
            items.append(Completion(preset, "schedule", human, schedule_markdown(preset, now=now, tz=tz),
                                    json.dumps(preset), replace))
        return items
    spec = FIELDS.get(key)
    if spec is None:
        return []
    if spec.kind is bool:
        return [Completion(v, "value", key, spec.doc, v, replace) for v in ("true", "false")]
    return [Completion(v, "value", key, spec.doc, json.dumps(v), replace) for v in spec.values]


__all__ = ["Completion", "FIELDS", "Problem", "SCHEDULE_PRESETS", "Span", "complete", "hover", "is_tasks_file",
           "lint", "local_zone", "schedule_markdown"]
