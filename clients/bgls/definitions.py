"""What bgls's definition files (tasks.toml, routines.toml) share as languages.

The rules of each file live in bgcore (`tasks_file`, `routines_file`): the daemon, `bgctl` and bgls read
a file the same way.  What this module adds is editor-shaped and file-agnostic: a scanner of the text
that finds where each key, value, table header, list element and inline-table key sits (tomllib gives
no positions), the widening of a validator's (line, column) into the range of what is wrong, the hover
text of a schedule, and the results the server turns into LSP messages.  Each file kind is a module
(`tasks_lint`, `routines_lint`) with its own tables of fields, exposed as a `FileKind`.

Positions are 0-based (line, character) in code points; the server converts them to the client's units.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bgcore import paths
from bgcore.schedule import ScheduleError, explain, parse_schedule

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


@dataclass(frozen=True)
class FileKind:
    """One definitions file as a language: which files it is, and its three services.

    `lint(text, *, now, tz, path, context)`, `hover(text, line, character, *, now, tz, context)` and
    `complete(text, line, character, *, now, tz, context)`; `context` is what the user's config.toml
    says that the file's rules depend on (`EditorContext`)."""

    file_name: str
    lint: Callable[..., list[Problem]]
    hover: Callable[..., "tuple[str, Span] | None"]
    complete: Callable[..., list[Completion]]

    def handles(self, path: str | os.PathLike | None) -> bool:
        """The user's file of this kind (in the config dir), or any file of its name."""
        if not path:
            return False
        p = Path(path)
        return p.name == self.file_name or p == paths.config_dir() / self.file_name


@dataclass(frozen=True)
class EditorContext:
    """What config.toml says that a definitions file's rules depend on (None/defaults when unknown)."""

    agents: frozenset[str] | None = None  # the agents a definition may name; None: not checked
    stagger: bool = True                   # routines' schedule fires are offset per routine


# -- where things are: a scanner of the text ---------------------------------------

@dataclass
class Item:
    """One element of a list value."""
    span: Span
    raw: str  # its text as written


@dataclass
class Entry:
    path: tuple[str, ...]      # the table's path plus the key's parts
    key: Span
    value: Span
    raw: str | None            # the value's text when it sits on one line
    table: int = -1            # index of the table it is in (layout.tables), -1 for the root
    inline: bool = False       # a key inside an inline table (`title = { matches = "x" }`)
    items: list[Item] = field(default_factory=list)  # the elements, when the value is a list


@dataclass
class Table:
    path: tuple[str, ...]
    header: Span
    name: Span   # the last part of the header's key
    array: bool = False
    index: int = 0  # for [[arrays]]: which element of the array this header starts


@dataclass
class Layout:
    lines: list[str]
    entries: list[Entry] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)

    def entry(self, path: tuple[str, ...]) -> Entry | None:
        return next((e for e in self.entries if e.path == path), None)

    def table(self, path: tuple[str, ...]) -> Table | None:
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

    def table_index_at(self, line: int) -> int:
        current = -1
        for i, t in enumerate(self.tables):
            if t.header.line <= line:
                current = i
        return current

    def table_at(self, line: int) -> tuple[str, ...]:
        i = self.table_index_at(line)
        return self.tables[i].path if i >= 0 else ()

    def siblings(self, table: int) -> list[Entry]:
        """The entries written directly in one table (not inside its inline tables)."""
        return [e for e in self.entries if e.table == table and not e.inline]


BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def read_key(line: str, i: int) -> tuple[list[tuple[str, int, int]], int] | None:
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
            m = BARE_KEY.match(line, i)
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
    if j < len(text) and text[j] == quote:
        return j + 1
    return min(j, len(text))  # not closed on its line: it ends there


def _escaped(text: str, i: int) -> bool:
    n = 0
    while i - 1 - n >= 0 and text[i - 1 - n] == "\\":
        n += 1
    return n % 2 == 1


_HEADER_LINE = re.compile(r"[ \t]*\[\[?[ \t]*[A-Za-z0-9_\"'-][^=\n]*\]\]?[ \t]*(?:#[^\n]*)?(?:\n|$)")


_KEY_LINE = re.compile(r"[ \t]*[A-Za-z0-9_-]+[ \t]*(?:\.[ \t]*[A-Za-z0-9_-]+[ \t]*)*=")


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
            if c == "\n" and (text[i] == "{" or _HEADER_LINE.match(text, j + 1) or _KEY_LINE.match(text, j + 1)):
                return j  # not closed (an inline table ends on its line; a header or a key ends a list)
            if c in "[{":
                depth += 1
            elif c in "]}":
                depth -= 1
                if depth == 0:
                    return j + 1
            j += 1
        return len(text)
    j = i
    while j < len(text) and text[j] not in "#\n,]}":
        j += 1
    while j > i and text[j - 1] in " \t\r":
        j -= 1
    return j


class _Scanner:
    def __init__(self, text: str):
        self.text = text
        raw_lines = text.split("\n")
        self.layout = Layout([line.rstrip("\r") for line in raw_lines])
        self.starts = [0]
        for line in raw_lines:
            self.starts.append(self.starts[-1] + len(line) + 1)

    def position(self, offset: int) -> tuple[int, int]:
        lo, hi = 0, len(self.layout.lines) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.starts[mid] <= offset:
                lo = mid
            else:
                hi = mid - 1
        return lo, offset - self.starts[lo]

    def span(self, start: int, end: int) -> Span:
        line, col = self.position(start)
        end_line, end_col = self.position(end) if end > start else (line, col)
        return Span(line, col, end_line, end_col)

    def scan(self) -> Layout:
        layout = self.layout
        table: tuple[str, ...] = ()
        table_index = -1
        arrays: dict[tuple[str, ...], int] = {}
        n = 0
        while n < len(layout.lines):
            line = layout.lines[n]
            stripped = line.lstrip()
            indent = len(line) - len(stripped)
            if not stripped or stripped.startswith("#"):
                n += 1
                continue
            if stripped.startswith("["):
                array = stripped.startswith("[[")
                key = read_key(line, indent + (2 if array else 1))
                if key is not None:
                    parts, after = key
                    close = line.find("]]" if array else "]", after)
                    table = tuple(p[0] for p in parts)
                    header_end = close + (2 if array else 1) if close >= 0 else len(line.rstrip())
                    index = 0
                    if array:
                        index = arrays.get(table, -1) + 1
                        arrays[table] = index
                    layout.tables.append(Table(table, Span(n, indent, n, header_end),
                                               Span(n, parts[-1][1], n, parts[-1][2]), array, index))
                    table_index = len(layout.tables) - 1
                n += 1
                continue
            found = self.assignment(self.starts[n] + indent, table, table_index, inline=False)
            if found is None:
                n += 1
                continue
            n = max(self.position(found)[0], n) + 1
        return layout

    def assignment(self, offset: int, table: tuple[str, ...], table_index: int, *, inline: bool) -> int | None:
        """Read `key = value` at `offset`, record it (and what is inside its value); the offset after it."""
        line_no, col = self.position(offset)
        line = self.layout.lines[line_no]
        key = read_key(line, col)
        if key is None:
            return None
        parts, after = key
        eq = after
        while eq < len(line) and line[eq] in " \t":
            eq += 1
        if eq >= len(line) or line[eq] != "=":
            return None
        v = eq + 1
        while v < len(line) and line[v] in " \t":
            v += 1
        start = self.starts[line_no] + v
        end = _value_end(self.text, start)
        value = self.span(start, end)
        raw = line[v:value.end] if value.end_line == line_no else None
        path = table + tuple(p[0] for p in parts)
        entry = Entry(path, Span(line_no, parts[0][1], line_no, parts[-1][2]), value, raw, table_index, inline)
        self.layout.entries.append(entry)
        if start < len(self.text) and self.text[start] == "[":
            entry.items = self.items(start, end, path, table_index)
        elif start < len(self.text) and self.text[start] == "{":
            self.inline_table(start, end, path, table_index)
        return end

    def items(self, start: int, end: int, path: tuple[str, ...], table_index: int) -> list[Item]:
        """The elements of the list value at text[start:end] (and the keys of inline tables among them)."""
        found: list[Item] = []
        i = start + 1
        while i < end:
            c = self.text[i]
            if c in " \t\r\n,":
                i += 1
                continue
            if c == "#":
                nl = self.text.find("\n", i)
                i = end if nl < 0 else nl
                continue
            if c == "]":
                break
            stop = min(_value_end(self.text, i), end)
            if stop <= i:
                break
            found.append(Item(self.span(i, stop), self.text[i:stop]))
            if c == "{":
                self.inline_table(i, stop, path, table_index)
            i = stop
        return found

    def inline_table(self, start: int, end: int, path: tuple[str, ...], table_index: int) -> None:
        i = start + 1
        while i < end:
            c = self.text[i]
            if c in " \t,":
                i += 1
                continue
            if c in "}\n":
                break
            stop = self.assignment(i, path, table_index, inline=True)
            if stop is None or stop <= i:
                break
            i = stop


def scan(text: str) -> Layout:
    return _Scanner(text).scan()


def string_literal(raw: str | None) -> str | None:
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


def value_of(raw: str | None) -> Any:
    """The TOML value written as `raw` (one line), or None when it cannot be read."""
    if raw is None:
        return None
    try:
        return tomllib.loads(f"v = {raw}").get("v")
    except tomllib.TOMLDecodeError:
        return None


def _basic_offsets(raw: str) -> list[int] | None:
    """For a one-line basic string, the raw column of each decoded character (and of the end)."""
    out: list[int] = []
    i = 1
    while i < len(raw) - 1:
        out.append(i)
        if raw[i] == "\\":
            nxt = raw[i + 1:i + 2]
            i += {"u": 6, "U": 10}.get(nxt, 2)
        else:
            i += 1
    out.append(len(raw) - 1)
    return out


def literal_span(value: Span, raw: str | None, position: int, length: int) -> Span | None:
    """The columns of characters [position, position + length) of a one-line string value, as decoded;
    the closing quote when the position is at its end. None when the value is not such a string."""
    text = string_literal(raw)
    if text is None or value.line != value.end_line or position < 0 or position > len(text):
        return None
    offsets = list(range(1, len(raw))) if raw[0] == "'" else _basic_offsets(raw)
    if offsets is None or len(offsets) != len(text) + 1:
        return None
    if position >= len(text):
        return Span(value.line, value.end - 1, value.line, value.end)
    stop = offsets[min(position + max(length, 1), len(text))]
    return Span(value.line, value.start + offsets[position], value.line, value.start + stop)


def contains(span: Span, line: int, character: int) -> bool:
    if not span.line <= line <= span.end_line:
        return False
    if line == span.line and character < span.start:
        return False
    return not (line == span.end_line and character > span.end)


def line_span(layout: Layout, line: int, col: int = 0) -> Span:
    text = layout.lines[line] if 0 <= line < len(layout.lines) else ""
    end = len(text.rstrip())
    return Span(line, col, line, end if end > col else col + 1)


@dataclass(frozen=True)
class Located:
    """Where a validator's (line, column) falls: an entry's key or value, a table header, or a line."""
    span: Span
    entry: Entry | None = None
    on_key: bool = False
    table: Table | None = None


def locate(layout: Layout, line: int | None, column: int | None, *, syntax: bool = False) -> Located:
    """Widen a validator's 1-based (line, column) into what it points at."""
    if line is None:
        return Located(Span(0, 0, 0, len(layout.lines[0]) if layout.lines else 0))
    line = min(line - 1, max(len(layout.lines) - 1, 0))
    col = (column or 1) - 1
    if syntax:
        return Located(line_span(layout, line, col))
    for entry in layout.entries:
        if entry.inline:
            continue
        if entry.value.line == line and entry.value.start <= col < max(entry.value.end, entry.value.start + 1):
            return Located(entry.value, entry)
        if entry.key.line == line and entry.key.start == col:
            return Located(entry.key, entry, on_key=True)
    for table in layout.tables:
        if table.header.line == line:
            return Located(table.name, table=table)
    return Located(line_span(layout, line, col))


def zone_of(layout: Layout, path: tuple[str, ...], default: ZoneInfo) -> ZoneInfo:
    """The zone named by the `timezone` key at `path`, when it is a known one."""
    entry = layout.entry(path + ("timezone",))
    zone = string_literal(entry.raw) if entry else None
    if zone:
        try:
            return ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return default


# -- schedules -------------------------------------------------------------------------

def schedule_message(exc: ScheduleError) -> str:
    text = str(exc)
    return f"{text} (e.g. {exc.example!r})" if exc.example else text


def schedule_fragment_span(entry: Entry | None, exc: ScheduleError) -> Span | None:
    """The characters of the schedule string that the schedule core could not read."""
    if entry is None:
        return None
    value = string_literal(entry.raw)
    if value is None or value != exc.spec or entry.raw[1:-1] != value or exc.position is None:
        return entry.value  # escapes or a multi-line string: point at the whole value
    start = entry.value.start + 1 + exc.position
    length = len(exc.fragment) if exc.fragment and value.startswith(exc.fragment, exc.position) else 0
    end = start + max(length, 1)
    end = min(end, entry.value.end - 1) if length else min(end, entry.value.end)
    if end <= start:  # something missing at the end: point at the closing quote
        start, end = entry.value.end - 1, entry.value.end
    return Span(entry.value.line, start, entry.value.line, end)


def schedule_error_span(entry: Entry, zone: ZoneInfo, now: datetime) -> Span | None:
    """Ask the schedule core again for the characters of `entry`'s schedule it cannot read."""
    spec = string_literal(entry.raw)
    if spec is None:
        return None
    try:
        parse_schedule(spec, now=now.astimezone(zone), tz=zone)
    except ScheduleError as exc:
        return schedule_fragment_span(entry, exc)
    return None


def rounded_note(entry: Entry, zone: ZoneInfo, now: datetime) -> Problem | None:
    """Information when a schedule was read as the nearest clean interval."""
    spec = string_literal(entry.raw)
    if spec is None:
        return None
    try:
        parsed = parse_schedule(spec, now=now.astimezone(zone), tz=zone)
    except ScheduleError:
        return None
    if not parsed.rounded_from:
        return None
    return Problem(entry.value, f"read as {parsed.human!r}" + (f" ({parsed.cron})" if parsed.cron else "")
                   + f": {parsed.rounded_from!r} does not divide evenly, so the nearest clean interval was picked",
                   "information", "schedule-rounded")


def schedule_markdown(spec: str, *, now: datetime, tz: ZoneInfo, count: int = 3, offset_s: int = 0,
                      notes: tuple[str, ...] = ()) -> str:
    """The hover text of a schedule: normalized cron, human form, next fire times (each `offset_s` late)."""
    try:
        info = explain(spec, now=now.astimezone(tz), tz=tz, count=count, loop_intervals=False)  # as files read it
    except ScheduleError as exc:
        return f"**schedule** `{spec}`\n\n⚠ {schedule_message(exc)}"
    lines = [f"**schedule** `{spec}`: {info['human']}", ""]
    if info.get("cron"):
        lines.append(f"- cron: `{info['cron']}`")
    lines.append(f"- kind: {info['kind']}")
    if info.get("rounded_from"):
        lines.append(f"- rounded from {info['rounded_from']!r}")
    lines.append(f"- time zone: {info['timezone']}")
    lines += [f"- {note}" for note in notes]
    if info["next"]:
        head = f"Next {len(info['next'])} fire times"
        if offset_s:
            head += f" (with this routine's offset of {_duration(offset_s)})"
        lines += ["", head + ":"]
        lines += [f"- {_friendly(t, offset_s)}" for t in info["next"]]
    else:
        lines += ["", "No fire times ahead" + (" (runs only when run by hand)" if info["kind"] == "manual" else "")]
    return "\n".join(lines)


def _duration(seconds: int) -> str:
    minutes, secs = divmod(seconds, 60)
    return " ".join(filter(None, [f"{minutes} min" if minutes else "", f"{secs} s" if secs or not minutes else ""]))


def _friendly(iso: str, offset_s: int = 0) -> str:
    dt = datetime.fromisoformat(iso) + timedelta(seconds=offset_s)
    shown = f"{dt:%a %Y-%m-%d %H:%M:%S}" if offset_s % 60 else f"{dt:%a %Y-%m-%d %H:%M}"
    return f"{shown} ({dt.isoformat()})"


def schedule_presets(presets: tuple[str, ...], replace: Span, *, now: datetime, tz: ZoneInfo,
                     offset_s: int = 0) -> list[Completion]:
    items = []
    for preset in presets:
        try:
            human = parse_schedule(preset, now=now.astimezone(tz), tz=tz).human
        except ScheduleError:
            continue
        items.append(Completion(preset, "schedule", human,
                                schedule_markdown(preset, now=now, tz=tz, offset_s=offset_s),
                                json.dumps(preset), replace))
    return items


# -- completion -------------------------------------------------------------------------

ASSIGN = re.compile(r"^\s*((?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'))*)"
                    r"\s*=\s*(.*)$")
PARTIAL_KEY = re.compile(r"^\s*([A-Za-z0-9_]*)$")


def key_of_assignment(m: re.Match) -> str:
    key = read_key(m.group(1), 0)
    return key[0][-1][0] if key else m.group(1)


def value_replace(typed: str, line: int, character: int, current: str) -> Span:
    """What a value completion replaces: what is typed so far, up to the closing quote inside a string."""
    start = character - len(typed)
    end = character
    if typed[:1] in ("\"", "'"):
        close = current.find(typed[0], character)
        end = close + 1 if close >= 0 else len(current.rstrip())
    return Span(line, start, line, max(end, character))


def key_replace(partial: str, line: int, character: int, current: str) -> Span:
    """What a field-name completion replaces: the partial key, and the rest of the word after the cursor."""
    start = character - len(partial)
    m = BARE_KEY.match(current, start)
    end = start + len(m.group()) if m else character
    return Span(line, start, line, max(end, character))


__all__ = ["ASSIGN", "BARE_KEY", "Completion", "EditorContext", "Entry", "FileKind", "Item", "Layout", "Located",
           "PARTIAL_KEY", "Problem", "Span", "Table", "contains", "key_of_assignment", "key_replace", "line_span",
           "literal_span", "locate", "read_key", "rounded_note", "scan", "schedule_error_span",
           "schedule_fragment_span", "schedule_markdown", "schedule_message", "schedule_presets", "string_literal",
           "value_of", "value_replace", "zone_of"]
