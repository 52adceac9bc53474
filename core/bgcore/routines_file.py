"""routines.toml (SPEC §8): read and validate it, and edit it without losing a person's layout.

Pure: `load_routines(text, path, now, tz)` is a function of the file's text (plus file checks that can
be injected), so the daemon, `bgctl` and the language server share one reading of it, and every
error has a line, a column and a reason.

One routine is a table with optional sub-tables:

    [routines.pr-review]
    description = "review pull requests"
    prompt = "Review the pull request below; push fixes to claude/review-<number>."  # or prompt_file
    repos = ["https://github.com/acme/api", { url = "~/src/shared", ref = "v2" }]   # cloned per run
    agent = "claude"
    model = "sonnet"
    push = ["claude/*"]             # branches a run may push (default)
    timeout = "4h"                  # default; also "30m", "90s" or seconds
    overlap = "allow"               # skip | buffer_one | replace | allow (default)
    enabled = true
    timezone = "Europe/Berlin"      # for schedule triggers; default: the machine's zone

    [routines.pr-review.environment]
    env_file = "~/.config/bgagents/env/pr-review.env"   # dotenv; values never logged or shown
    network = "full"

    [routines.pr-review.connectors]
    mcp_config = "~/.config/bgagents/mcp/review.json"   # MCP servers for the run; none unless given

    [[routines.pr-review.triggers]]
    schedule = "weekdays at 9am"    # at least an hour apart
    [[routines.pr-review.triggers]]
    api = true                      # POST /v1/routines/pr-review/fire; rate_limit = 60 (an hour)
    [[routines.pr-review.triggers]]
    github = ["pull_request.opened", "pull_request.synchronize"]   # hourly_cap = 20
    repository = "acme/api"
    base = "main"
    title = { matches = ".*hotfix.*" }
    labels = { include = ["needs-review"], exclude = ["wip"] }
    draft = false

Relative paths (prompt_file, env_file, mcp_config) are relative to the directory of routines.toml;
nothing is read from a repository's own files. Reading uses tomllib; writing splices the routine's
own sections, re-rendered by tomlkit, so the rest of the file stays byte for byte as it was.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .branch_guard import DEFAULT_PUSH, pattern_problem
from .cron import compile_cron
from .definitions import (ANY_HEADER_RE, LineIndex, decode_error, find_top_key, keys_in, section_span,
                          with_comments_above)
from .github import FIELDS as FILTER_FIELDS
from .github import Filter, FilterError, compile_filter, parse_event
from .schedule import Schedule, ScheduleError, parse_schedule

__all__ = ["ApiTrigger", "CONNECTOR_FIELDS", "ENV_FIELDS", "FIELDS", "GitHubTrigger", "NAME_RE", "NETWORKS",
           "OVERLAPS", "Repo", "Routine", "RoutineFileError", "ScheduleTrigger", "TRIGGER_KEYS", "add_routine_text",
           "edit_routine_text", "find_block", "has_routine", "load_routines", "parse_duration", "read_env_text",
           "remove_routine_text", "resolve_path", "set_trigger_enabled_text", "stagger_seconds", "validate_name"]

NAME_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
OVERLAPS = ("skip", "buffer_one", "replace", "allow")
NETWORKS = ("none", "trusted", "full")
FIELDS: dict[str, type | tuple[type, ...]] = {
    "description": str, "prompt": str, "prompt_file": str, "repos": list, "agent": str, "model": str,
    "push": (list, str), "timeout": (str, int, float), "overlap": str, "enabled": bool, "timezone": str,
    "environment": dict, "connectors": dict, "triggers": list,
}
ENV_FIELDS: dict[str, type | tuple[type, ...]] = {"env_file": str, "setup": str, "setup_file": str,
                                                  "network": (str, list)}
CONNECTOR_FIELDS: dict[str, type | tuple[type, ...]] = {"mcp_config": str}
TRIGGER_KEYS = ("schedule", "api", "github", "enabled", "rate_limit", "hourly_cap")
DEFAULT_TIMEOUT_S = 4 * 3600
DEFAULT_RATE_LIMIT = 60     # API fires an hour
DEFAULT_HOURLY_CAP = 20     # GitHub-started runs an hour
MAX_TIMEOUT_S = 7 * 86400
MAX_STAGGER_S = 300
# Fields of another issue's environment: refused until the daemon can honour them.
NOT_YET = {"setup": "the setup script", "setup_file": "the setup script"}
_KIND = {str: "a string", bool: "true or false", list: "a list", dict: "a table", (list, str): "a list of strings",
         (str, int, float): "a duration such as \"4h\" or a number of seconds", (str, list): "a string or a list"}
_RELATIVE_ONCE = ("in", "today", "tomorrow")
_NAME = r'(?:"([^"\n]*)"|\'([^\'\n]*)\'|([A-Za-z0-9_-]+))'
_HEADER_RE = re.compile(rf'^[ \t]*(\[\[?)[ \t]*routines[ \t]*\.[ \t]*{_NAME}[ \t]*((?:\.[^\]\n]*)?)\]', re.M)
_DURATION_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*")
_DURATION_UNITS = {**dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1),
                   **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60),
                   **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600),
                   **dict.fromkeys(("d", "day", "days"), 86400)}


@dataclass(frozen=True)
class RoutineFileError:
    """One problem in routines.toml; `routine` is None when it concerns the whole file."""

    path: str
    line: int | None
    column: int | None
    reason: str
    routine: str | None = None
    fatal: bool = False  # the file as a whole cannot be read: no routine in it is usable

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.reason}"

    def to_json(self) -> dict:
        return {"file": self.path, "line": self.line, "column": self.column, "reason": self.reason,
                "routine": self.routine, "message": str(self)}


@dataclass(frozen=True)
class Repo:
    url: str                  # as written (a git URL, or a path with ~ expanded at clone time)
    ref: str | None = None    # None: the remote's default branch

    def to_json(self) -> dict:
        return {"url": self.url, "ref": self.ref}


@dataclass(frozen=True)
class ScheduleTrigger:
    index: int
    schedule: Schedule
    enabled: bool = True
    line: int | None = None
    kind: str = "schedule"

    def to_json(self) -> dict:
        return {"index": self.index, "kind": self.kind, "enabled": self.enabled, "line": self.line,
                "schedule": self.schedule.spec, "schedule_kind": self.schedule.kind, "cron": self.schedule.cron,
                "human": self.schedule.human}

    def to_toml(self) -> dict:
        return {"schedule": self.schedule.spec, **({} if self.enabled else {"enabled": False})}


@dataclass(frozen=True)
class ApiTrigger:
    index: int
    rate_limit: int = DEFAULT_RATE_LIMIT
    enabled: bool = True
    line: int | None = None
    kind: str = "api"

    def to_json(self) -> dict:
        return {"index": self.index, "kind": self.kind, "enabled": self.enabled, "line": self.line,
                "rate_limit": self.rate_limit}

    def to_toml(self) -> dict:
        return {"api": True, **({} if self.rate_limit == DEFAULT_RATE_LIMIT else {"rate_limit": self.rate_limit}),
                **({} if self.enabled else {"enabled": False})}


@dataclass(frozen=True)
class GitHubTrigger:
    index: int
    events: tuple[tuple[str, str | None], ...]
    filters: tuple[Filter, ...] = ()
    hourly_cap: int = DEFAULT_HOURLY_CAP
    enabled: bool = True
    line: int | None = None
    raw_filters: dict = field(default_factory=dict, compare=False)
    kind: str = "github"

    @property
    def event_names(self) -> list[str]:
        return [e if a is None else f"{e}.{a}" for e, a in self.events]

    def to_json(self) -> dict:
        return {"index": self.index, "kind": self.kind, "enabled": self.enabled, "line": self.line,
                "github": self.event_names, "filters": dict(self.raw_filters), "hourly_cap": self.hourly_cap}

    def to_toml(self) -> dict:
        return {"github": self.event_names, **self.raw_filters,
                **({} if self.hourly_cap == DEFAULT_HOURLY_CAP else {"hourly_cap": self.hourly_cap}),
                **({} if self.enabled else {"enabled": False})}


Trigger = ScheduleTrigger | ApiTrigger | GitHubTrigger


@dataclass(frozen=True)
class Routine:
    name: str
    repos: tuple[Repo, ...]
    tz: ZoneInfo
    prompt: str | None = None
    prompt_file: str | None = None           # as written
    prompt_path: str | None = None           # resolved
    description: str | None = None
    agent: str | None = None
    model: str | None = None
    push: tuple[str, ...] = DEFAULT_PUSH
    timeout: str | int | float | None = None  # as written
    timeout_s: float = DEFAULT_TIMEOUT_S
    overlap: str = "allow"
    enabled: bool = True
    timezone: str | None = None
    env_file: str | None = None              # as written
    env_path: str | None = None              # resolved
    network: str | tuple[str, ...] = "full"
    mcp_config: str | None = None
    mcp_path: str | None = None
    triggers: tuple[Trigger, ...] = ()
    line: int | None = None
    raw: dict = field(default_factory=dict, compare=False)

    def trigger(self, kind: str) -> list[Trigger]:
        return [t for t in self.triggers if t.kind == kind and t.enabled]

    def to_json(self) -> dict:
        return {"name": self.name, "description": self.description, "prompt": self.prompt,
                "prompt_file": self.prompt_file, "repos": [r.to_json() for r in self.repos], "agent": self.agent,
                "model": self.model, "push": list(self.push), "timeout": self.timeout, "timeout_s": self.timeout_s,
                "overlap": self.overlap, "enabled": self.enabled,
                "timezone": self.timezone or getattr(self.tz, "key", str(self.tz)),
                "environment": {"env_file": self.env_file, "network": list(self.network)
                                if isinstance(self.network, tuple) else self.network},
                "connectors": {"mcp_config": self.mcp_config},
                "triggers": [t.to_json() for t in self.triggers], "line": self.line}


def validate_name(name: Any) -> str | None:
    """Why `name` cannot be a routine name, or None."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        return (f"routine name {name!r} is not kebab-case: use lowercase letters, digits and single dashes, "
                "such as 'pr-review'")
    if len(name) > 64:
        return f"routine name {name[:20]!r}… is longer than 64 characters"
    return None


def parse_duration(value: Any) -> float:
    """`"4h"`, `"30m"`, `"1h 30m"`, `"90 seconds"` or a number of seconds; raises ValueError."""
    if isinstance(value, bool):
        raise ValueError("a duration, not true/false")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        pos, seconds = 0, 0.0
        if not text:
            raise ValueError("an empty duration")
        while pos < len(text):
            m = _DURATION_RE.match(text, pos)
            if not m or m[2] not in _DURATION_UNITS:
                raise ValueError(f"cannot read {value!r} as a duration; write it as \"4h\", \"30m\" or \"90s\"")
            seconds += float(m[1]) * _DURATION_UNITS[m[2]]
            pos = m.end()
    else:
        raise ValueError(f"a duration such as \"4h\", not {type(value).__name__}")
    if not 1 <= seconds <= MAX_TIMEOUT_S:
        raise ValueError("a duration from 1 second to 7 days")
    return seconds


def stagger_seconds(name: str) -> int:
    """The routine's deterministic offset for schedule fires (SPEC §8: up to 5 minutes)."""
    unit = int.from_bytes(hashlib.sha256(f"routine:{name}".encode()).digest()[:8], "big") / 2**64
    return int(unit * MAX_STAGGER_S)


def resolve_path(value: str, base_dir: str | None) -> str:
    path = os.path.expanduser(value)
    if not os.path.isabs(path) and base_dir:
        path = os.path.join(base_dir, path)
    return os.path.normpath(path)


def read_env_text(text: str, path: str) -> dict[str, str]:
    """A dotenv file's values (python-dotenv's reading). Raises ValueError naming the line, never a value."""
    from dotenv.parser import parse_stream
    values: dict[str, str] = {}
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            raise ValueError(f"{path}:{binding.original.line}: cannot read this line; write KEY=VALUE")
        if binding.key is not None:
            values[binding.key] = binding.value if binding.value is not None else ""
    return values


# ---------------------------------------------------------------- positions

@dataclass
class _Section:
    offset: int
    sub: str            # "" for [routines.NAME], else the rest of the path ("environment", "triggers", ...)
    array: bool


class _Positions:
    """Where each routine's sections and keys are, found by one scan of the text."""

    def __init__(self, text: str):
        self.text = text
        self.index = LineIndex(text)
        self.sections: dict[str, list[_Section]] = {}
        for m in _HEADER_RE.finditer(text):
            name = next(g for g in m.group(2, 3, 4) if g is not None)
            sub = m.group(5).strip().lstrip(".").strip().strip('"')
            self.sections.setdefault(name, []).append(_Section(m.start(), sub, m.group(1) == "[["))

    def line_col(self, offset: int) -> tuple[int, int]:
        return self.index.line_col(offset)

    def mains(self, name: str) -> list[_Section]:
        return [s for s in self.sections.get(name, []) if s.sub == "" and not s.array]

    def header(self, name: str) -> tuple[int | None, int | None]:
        sections = self.mains(name) or self.sections.get(name, [])
        if sections:
            return self.line_col(sections[0].offset)
        return find_top_key(self.text, name) if name else (None, None)

    def section(self, name: str, sub: str, index: int | None = None) -> _Section | None:
        found = [s for s in self.sections.get(name, []) if s.sub == sub]
        if index is not None:
            found = [s for s in found if s.array]
            return found[index] if index < len(found) else None
        return found[0] if found else None

    def key(self, name: str, key: str | None, sub: str = "", index: int | None = None) -> tuple[int | None, int | None]:
        """The line and column of `key`'s value in the routine's section `sub` (its `index`-th, for
        triggers), else of that section's header, else of the routine's."""
        section = self.section(name, sub, index)
        if section is None and sub:
            # written inline (`triggers = [...]`, `environment = {...}`): point at that key
            main = self.section(name, "")
            if main is not None:
                start, end = section_span(self.text, main.offset)
                offset = keys_in(self.text, start, end).get(sub.split(".")[0])
                if offset is not None:
                    return self.line_col(offset)
            return self.header(name)
        if section is None:
            return self.header(name)
        if key is not None:
            start, end = section_span(self.text, section.offset)
            offset = keys_in(self.text, start, end).get(key)
            if offset is not None:
                return self.line_col(offset)
        return self.line_col(section.offset)


# ---------------------------------------------------------------- reading

def load_routines(text: str, path: str, now: datetime, tz: ZoneInfo, *,
                  isfile: Callable[[str], bool] = os.path.isfile, agents: set[str] | None = None,
                  previous: dict[str, Routine] | None = None,
                  base_dir: str | None = None) -> tuple[dict[str, Routine], list[RoutineFileError]]:
    """Read routines.toml text: (valid routines by name, errors). A file that is not TOML gives no
    routines and one error; otherwise each routine is valid or has errors of its own. `previous` lets
    a reload reuse the routines whose table did not change. `base_dir`: where relative paths start
    (default: the file's directory)."""
    base_dir = base_dir if base_dir is not None else os.path.dirname(os.path.abspath(path))
    pos = _Positions(text)
    errors: list[RoutineFileError] = []
    for name in pos.sections:
        mains = pos.mains(name)
        if len(mains) > 1:
            first, _ = pos.line_col(mains[0].offset)
            line, col = pos.line_col(mains[1].offset)
            errors.append(RoutineFileError(path, line, col, f"duplicate routine name {name!r} (first defined on "
                                                            f"line {first}); routine names must be unique", name,
                                           fatal=True))
    if errors:
        return {}, errors
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line, col, message = decode_error(exc, text)
        return {}, [RoutineFileError(path, line, col, f"not valid TOML: {message}", fatal=True)]
    for key in data:
        if key != "routines":
            line, col = find_top_key(text, key)
            hint = " (did you mean 'routines'?)" if difflib.get_close_matches(key, ["routines"], 1) else ""
            errors.append(RoutineFileError(path, line, col, f"unknown top-level key {key!r}{hint}; "
                                                            "define each routine as a [routines.NAME] table"))
    raw_routines = data.get("routines", {})
    if not isinstance(raw_routines, dict):
        line, col = find_top_key(text, "routines")
        return {}, errors + [RoutineFileError(path, line, col, "`routines` must be a table of [routines.NAME] tables",
                                              fatal=True)]
    routines: dict[str, Routine] = {}
    for name, raw in raw_routines.items():
        old = (previous or {}).get(name)
        if old is not None and old.raw == raw:
            line, _ = pos.header(name)
            routines[name] = old if old.line == line else _relined(old, line, pos)
            continue
        routine, routine_errors = _Reader(name, raw, path, pos, now, tz, isfile, agents, base_dir).read()
        errors.extend(routine_errors)
        if routine is not None:
            routines[name] = routine
    return routines, errors


def _relined(routine: Routine, line: int | None, pos: _Positions) -> Routine:
    triggers = tuple(replace(t, line=pos.key(routine.name, None, "triggers", t.index)[0]) for t in routine.triggers)
    return replace(routine, line=line, triggers=triggers)


class _Reader:
    """Reads one routine's table, collecting every error with its position."""

    def __init__(self, name: str, raw: Any, path: str, pos: _Positions, now: datetime, tz: ZoneInfo,
                 isfile: Callable[[str], bool], agents: set[str] | None, base_dir: str):
        self.name, self.raw, self.path, self.pos = name, raw, path, pos
        self.now, self.tz, self.isfile, self.agents, self.base_dir = now, tz, isfile, agents, base_dir
        self.errors: list[RoutineFileError] = []

    def fail(self, reason: str, key: str | None = None, sub: str = "", index: int | None = None,
             column_offset: int = 0) -> None:
        line, col = self.pos.key(self.name, key, sub, index) if (key or sub) else self.pos.header(self.name)
        self.errors.append(RoutineFileError(self.path, line, col + column_offset if col else col, reason, self.name))

    def _types(self, table: dict, fields: dict, what: str, sub: str = "") -> bool:
        ok = True
        for key, value in table.items():
            if key not in fields:
                close = difflib.get_close_matches(key, list(fields), 1)
                self.fail(f"unknown field {key!r} in {what}" + (f" (did you mean {close[0]!r}?)" if close else "")
                          + f"; fields: {', '.join(fields)}", key, sub)
                ok = False
            elif not isinstance(value, fields[key]) or (isinstance(value, bool) and fields[key] != bool):
                self.fail(f"{key} of {what} must be {_KIND.get(fields[key], 'something else')}, "
                          f"not {type(value).__name__}", key, sub)
                ok = False
        return ok

    def read(self) -> tuple[Routine | None, list[RoutineFileError]]:
        name, raw = self.name, self.raw
        what = f"routine {name!r}"
        if (why := validate_name(name)) is not None:
            self.fail(why)
        if not isinstance(raw, dict):
            self.fail(f"{what} must be a table: write it as [routines.{name}]")
            return None, self.errors
        if not self._types(raw, FIELDS, what):
            return None, self.errors

        prompt, prompt_file = raw.get("prompt"), raw.get("prompt_file")
        prompt_path = None
        if prompt is not None and prompt_file is not None:
            self.fail(f"{what} has both prompt and prompt_file; keep one", "prompt_file")
        elif prompt is None and prompt_file is None:
            self.fail(f"{what} needs a prompt: add prompt = \"...\" or prompt_file = \"prompts/{name}.md\"")
        elif prompt is not None and not prompt.strip():
            self.fail(f"the prompt of {what} is empty", "prompt")
        elif prompt_file is not None:
            prompt_path = resolve_path(prompt_file, self.base_dir)
            if not self.isfile(prompt_path):
                self.fail(f"prompt_file {prompt_file!r} of {what} does not exist ({prompt_path})", "prompt_file")

        repos = self._repos(raw.get("repos"), what)
        zone = self.tz
        if (zone_name := raw.get("timezone")) is not None:
            try:
                zone = ZoneInfo(zone_name)
            except (ZoneInfoNotFoundError, ValueError):
                self.fail(f"unknown timezone {zone_name!r} in {what}; use an IANA name such as Europe/Berlin",
                          "timezone")
        agent = raw.get("agent")
        if agent is not None and self.agents is not None and agent not in self.agents:
            self.fail(f"unknown agent {agent!r} in {what}; known agents: {', '.join(sorted(self.agents))}", "agent")
        push = raw.get("push", list(DEFAULT_PUSH))
        if isinstance(push, str):
            push = [push]
        for pattern in push:
            if (why := pattern_problem(pattern)) is not None:
                self.fail(f"{why} (in push of {what})", "push")
                break
        timeout = raw.get("timeout")
        timeout_s = DEFAULT_TIMEOUT_S
        if timeout is not None:
            try:
                timeout_s = parse_duration(timeout)
            except ValueError as exc:
                self.fail(f"timeout of {what} must be {exc}", "timeout")
        overlap = raw.get("overlap", "allow")
        if overlap not in OVERLAPS:
            self.fail(f"overlap of {what} must be one of {', '.join(OVERLAPS)}", "overlap")
        env_file, env_path, network = self._environment(raw.get("environment"), what)
        mcp_config, mcp_path = self._connectors(raw.get("connectors"), what)
        triggers = self._triggers(raw.get("triggers", []), what, zone)
        if self.errors:
            return None, self.errors
        line, _ = self.pos.header(name)
        return Routine(
            name=name, repos=repos, tz=zone, prompt=prompt, prompt_file=prompt_file, prompt_path=prompt_path,
            description=raw.get("description"), agent=agent, model=raw.get("model"), push=tuple(push),
            timeout=timeout, timeout_s=timeout_s, overlap=overlap, enabled=raw.get("enabled", True),
            timezone=zone_name, env_file=env_file, env_path=env_path, network=network, mcp_config=mcp_config,
            mcp_path=mcp_path, triggers=triggers, line=line, raw=raw), []

    def _repos(self, value: Any, what: str) -> tuple[Repo, ...]:
        if value is None:
            self.fail(f"{what} needs repos = [\"https://github.com/owner/repo\"] (cloned for every run; "
                      "the first is the working directory)")
            return ()
        if not value:
            self.fail(f"repos of {what} is empty: give at least one git URL or path", "repos")
            return ()
        repos = []
        for i, item in enumerate(value):
            if isinstance(item, str):
                item = {"url": item}
            if not isinstance(item, dict):
                self.fail(f"repos[{i}] of {what} must be a URL string or {{ url = \"...\", ref = \"...\" }}", "repos")
                continue
            unknown = [k for k in item if k not in ("url", "ref")]
            if unknown:
                self.fail(f"unknown key {unknown[0]!r} in repos[{i}] of {what}; use url and ref", "repos")
                continue
            url, ref = item.get("url"), item.get("ref")
            if not isinstance(url, str) or not url.strip():
                self.fail(f"repos[{i}] of {what} needs url = \"...\" (a git URL or a path)", "repos")
                continue
            if ref is not None and (not isinstance(ref, str) or not ref.strip() or ref.startswith("-")):
                self.fail(f"ref of repos[{i}] of {what} must be a branch, tag or commit name", "repos")
                continue
            if url.startswith("-"):
                self.fail(f"repos[{i}] of {what} is not a URL or a path: {url!r}", "repos")
                continue
            if not _looks_like_url(url) and not os.path.isabs(os.path.expanduser(url)):
                self.fail(f"repos[{i}] of {what} must be a git URL (https://, ssh://, file://, git@host:path) or "
                          f"an absolute path (or ~/...), not {url!r}", "repos")
                continue
            repos.append(Repo(url.strip(), ref.strip() if ref else None))
        names = [_clone_name(r.url) for r in repos]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            self.fail(f"repos of {what} has two repositories named {dupes[0]!r}; each is cloned into a folder "
                      "of its name, so they must differ", "repos")
        return tuple(repos)

    def _environment(self, env: Any, what: str) -> tuple[str | None, str | None, str | tuple[str, ...]]:
        sub = "environment"
        if env is None:
            return None, None, "full"
        if not self._types(env, ENV_FIELDS, f"the environment of {what}", sub):
            return None, None, "full"
        env_file, env_path = env.get("env_file"), None
        if env_file is not None:
            env_path = resolve_path(env_file, self.base_dir)
            if not self.isfile(env_path):
                self.fail(f"env_file {env_file!r} of {what} does not exist ({env_path}); create it (KEY=VALUE lines) "
                          "or fix the path", "env_file", sub)
        network: Any = env.get("network", "full")
        if isinstance(network, list):
            if not network or not all(isinstance(d, str) and _DOMAIN_RE.fullmatch(d) for d in network):
                self.fail(f"network of {what} must be \"none\", \"trusted\", \"full\" or a list of host names "
                          "such as [\"pypi.org\", \"*.github.com\"]", "network", sub)
                return env_file, env_path, "full"
            network = tuple(network)
        elif network not in NETWORKS:
            self.fail(f"network of {what} must be \"none\", \"trusted\", \"full\" or a list of host names", "network", sub)
            return env_file, env_path, "full"
        for key, label in NOT_YET.items():
            if key in env:
                self.fail(f"{key} in the environment of {what}: {label} is not available in this version of bgd; "
                          f"remove {key} (or run it as part of the prompt)", key, sub)
        if network != "full":
            self.fail(f"network = {_toml_value(network)} in the environment of {what}: this version of bgd cannot "
                      "enforce a network policy, and a routine is never run open when one is asked for; "
                      "remove network (or set network = \"full\")", "network", sub)
        return env_file, env_path, network

    def _connectors(self, connectors: Any, what: str) -> tuple[str | None, str | None]:
        sub = "connectors"
        if connectors is None or not self._types(connectors, CONNECTOR_FIELDS, f"the connectors of {what}", sub):
            return None, None
        mcp_config = connectors.get("mcp_config")
        if mcp_config is None:
            return None, None
        mcp_path = resolve_path(mcp_config, self.base_dir)
        if not self.isfile(mcp_path):
            self.fail(f"mcp_config {mcp_config!r} of {what} does not exist ({mcp_path})", "mcp_config", sub)
        return mcp_config, mcp_path

    def _triggers(self, value: list, what: str, zone: ZoneInfo) -> tuple[Trigger, ...]:
        triggers: list[Trigger] = []
        kinds_seen: set[str] = set()
        for index, raw in enumerate(value):
            where = f"trigger {index + 1} of {what}"
            if not isinstance(raw, dict):
                self.fail(f"{where} must be a table: write it as [[routines.{self.name}.triggers]]", None,
                          "triggers", index)
                continue
            kinds = [k for k in ("schedule", "api", "github") if k in raw]
            if len(kinds) != 1:
                self.fail(f"{where} needs exactly one of schedule = \"...\", api = true or github = [\"...\"]"
                          + (f" (it has {', '.join(kinds)})" if kinds else ""), None, "triggers", index)
                continue
            kind = kinds[0]
            enabled = raw.get("enabled", True)
            if not isinstance(enabled, bool):
                self.fail(f"enabled of {where} must be true or false", "enabled", "triggers", index)
                continue
            if kind in ("api",) and kind in kinds_seen:
                self.fail(f"{what} has two api triggers; one is enough", "api", "triggers", index)
                continue
            kinds_seen.add(kind)
            if kind == "schedule":
                trigger = self._schedule_trigger(raw, index, where, zone, enabled)
            elif kind == "api":
                trigger = self._api_trigger(raw, index, where, enabled)
            else:
                trigger = self._github_trigger(raw, index, where, enabled)
            if trigger is not None:
                triggers.append(trigger)
        return tuple(triggers)

    def _only(self, raw: dict, allowed: tuple[str, ...], index: int, where: str) -> bool:
        extra = [k for k in raw if k not in allowed]
        for key in extra:
            close = difflib.get_close_matches(key, list(allowed), 1)
            self.fail(f"unknown field {key!r} in {where}" + (f" (did you mean {close[0]!r}?)" if close else "")
                      + f"; fields: {', '.join(allowed)}", key, "triggers", index)
        return not extra

    def _limit(self, raw: dict, key: str, default: int, index: int, where: str) -> int | None:
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self.fail(f"{key} of {where} must be a positive whole number (runs an hour)", key, "triggers", index)
            return None
        return value

    def _schedule_trigger(self, raw: dict, index: int, where: str, zone: ZoneInfo, enabled: bool):
        if not self._only(raw, ("schedule", "enabled"), index, where):
            return None
        spec = raw["schedule"]
        if not isinstance(spec, str):
            self.fail(f"schedule of {where} must be a string such as \"weekdays at 9am\"", "schedule", "triggers", index)
            return None
        try:
            schedule = parse_schedule(spec, now=self.now, tz=zone)
        except ScheduleError as exc:
            self.fail(f"schedule of {where}: {exc.message} ({exc.fragment!r}); example: {exc.example}",
                      "schedule", "triggers", index, 1 + (exc.position or 0))
            return None
        if schedule.kind == "manual":
            self.fail(f"schedule {spec!r} of {where}: a routine can always be fired with `bgctl routine run "
                      f"{self.name}`; remove this trigger instead", "schedule", "triggers", index, 1)
            return None
        if (why := _too_frequent(schedule)) is not None:
            self.fail(f"schedule {spec!r} of {where} {why}; routines fire at most once an hour: use \"hourly\", "
                      "\"every 2 hours\" or a cron with one minute value such as \"0 9 * * 1-5\"",
                      "schedule", "triggers", index, 1)
            return None
        if schedule.kind == "once" and spec.split()[0].lower() in _RELATIVE_ONCE:
            self.fail(f"schedule {spec!r} of {where} means another time each time the file is read; write the "
                      f"time itself; example: {schedule.human.split(' (')[0]!r}", "schedule", "triggers", index, 1)
            return None
        line, _ = self.pos.key(self.name, None, "triggers", index)
        return ScheduleTrigger(index, schedule, enabled, line)

    def _api_trigger(self, raw: dict, index: int, where: str, enabled: bool):
        if not self._only(raw, ("api", "rate_limit", "enabled"), index, where):
            return None
        if raw["api"] is not True:
            self.fail(f"api of {where} must be true (remove the trigger, or set enabled = false, to turn it off)",
                      "api", "triggers", index)
            return None
        limit = self._limit(raw, "rate_limit", DEFAULT_RATE_LIMIT, index, where)
        if limit is None:
            return None
        line, _ = self.pos.key(self.name, None, "triggers", index)
        return ApiTrigger(index, limit, enabled, line)

    def _github_trigger(self, raw: dict, index: int, where: str, enabled: bool):
        specs = raw["github"]
        if isinstance(specs, str):
            specs = [specs]
        if not isinstance(specs, list) or not specs:
            self.fail(f"github of {where} must be a list of events such as [\"pull_request.opened\"]",
                      "github", "triggers", index)
            return None
        events = []
        for spec in specs:
            try:
                events.append(parse_event(spec))
            except FilterError as exc:
                self.fail(f"{exc.message} (in {where})", "github", "triggers", index)
                return None
        names = {e for e, _ in events}
        limit = self._limit(raw, "hourly_cap", DEFAULT_HOURLY_CAP, index, where)
        filters, raw_filters, ok = [], {}, limit is not None
        for key, value in raw.items():
            if key in ("github", "enabled", "hourly_cap"):
                continue
            try:
                flt = compile_filter(key, value)
            except FilterError as exc:
                known = key in FILTER_FIELDS or key in TRIGGER_KEYS
                hint = "" if known else f"; a GitHub trigger also takes {', '.join(('enabled', 'hourly_cap'))}"
                offset = 0
                if exc.position is not None:
                    offset = self._regex_offset(index, key, exc.key, exc.position)
                self.fail(f"{exc.message}{hint} (in {where})", key, "triggers", index, offset)
                ok = False
                continue
            applies = FILTER_FIELDS[key][1]
            if not names & set(applies):
                self.fail(f"filter {key} applies only to {' and '.join(applies)} events, and {where} listens to "
                          f"{', '.join(sorted(names))}", key, "triggers", index)
                ok = False
                continue
            filters.append(flt)
            raw_filters[key] = value
        if not ok:
            return None
        line, _ = self.pos.key(self.name, None, "triggers", index)
        return GitHubTrigger(index, tuple(events), tuple(filters), limit, enabled, line, raw_filters)

    def _regex_offset(self, index: int, key: str, op: str | None, position: int) -> int:
        """Columns from the filter's value to the bad spot of its regex (best effort: same line)."""
        line, col = self.pos.key(self.name, key, "triggers", index)
        if line is None or col is None:
            return 0
        text_line = self.pos.text.splitlines()[line - 1] if line - 1 < len(self.pos.text.splitlines()) else ""
        m = re.search(rf'{re.escape(op or "matches")}[ \t]*=[ \t]*["\']', text_line[col - 1:])
        return (m.end() + position) if m else 0


_DOMAIN_RE = re.compile(r"(?:\*\.)?[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*")


def _too_frequent(schedule: Schedule) -> str | None:
    if schedule.kind != "cron":
        return None
    if schedule.interval_s is not None:
        return None if schedule.interval_s >= 3600 else f"fires every {schedule.interval_s // 60} minutes"
    minutes = compile_cron(schedule.cron).minutes
    if len(minutes) > 1:
        return f"fires {len(minutes)} times an hour ({schedule.human})"
    return None


def _looks_like_url(url: str) -> bool:
    return bool(re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", url) or re.match(r"[^/@:\s]+@[^/:\s]+:", url))


def _clone_name(url: str) -> str:
    """The folder a repository is cloned into: the last part of its URL or path, without .git."""
    tail = re.split(r"[/:]", url.rstrip("/"))[-1] or "repo"
    return tail[:-4] if tail.endswith(".git") and len(tail) > 4 else tail


def clone_name(url: str) -> str:
    return _clone_name(url)


def _toml_value(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(f'"{v}"' for v in value) + "]"
    return f'"{value}"'


# ---------------------------------------------------------------- writing

_TOP_ORDER = ("description", "prompt", "prompt_file", "repos", "agent", "model", "push", "timeout", "overlap",
              "enabled", "timezone")


def _item(value: Any):
    """A TOML value for tomlkit: tables inside values (filters, repos) written inline."""
    import tomlkit
    if isinstance(value, dict):
        table = tomlkit.inline_table()
        for k, v in value.items():
            table[k] = _item(v)
        return table
    if isinstance(value, (list, tuple)):
        array = tomlkit.array()
        for v in value:
            array.append(_item(v))
        return array
    return value


def _trigger_table(trigger: dict, appended: bool = False):
    import tomlkit
    table = tomlkit.table()
    if appended:  # a blank line above it, as between the others
        table.trivia.indent = "\n"
    for key, value in trigger.items():
        if value is not None:
            table[key] = _item(value)
    return table


def _render(name: str, fields: dict[str, Any]) -> str:
    import tomlkit
    table = tomlkit.table()
    for key in _TOP_ORDER:
        if fields.get(key) is not None:
            table.add(key, _item(fields[key]))
    for sub in ("environment", "connectors"):
        values = {k: v for k, v in (fields.get(sub) or {}).items() if v is not None}
        if values:
            inner = tomlkit.table()
            for k, v in values.items():
                inner.add(k, _item(v))
            table.add(sub, inner)
    if fields.get("triggers"):
        aot = tomlkit.aot()
        for trigger in fields["triggers"]:
            aot.append(_trigger_table(trigger))
        table.add("triggers", aot)
    routines = tomlkit.table(is_super_table=True)
    routines.add(name, table)
    doc = tomlkit.document()
    doc.add("routines", routines)
    return tomlkit.dumps(doc)


def find_block(text: str, name: str) -> tuple[int, int] | None:
    """The span of routine `name`'s sections when they stand together (the usual layout), else None."""
    pos = _Positions(text)
    sections = pos.sections.get(name)
    if not sections:
        return None
    start = sections[0].offset
    last = sections[-1].offset
    mine = {s.offset for s in sections}
    for m in ANY_HEADER_RE.finditer(text, start, last + 1):
        if m.start() not in mine:
            return None  # another table stands among this routine's sections
    _, end = section_span(text, last)
    return start, end


def has_routine(text: str, name: str) -> bool:
    if name in _Positions(text).sections:
        return True
    try:
        return name in tomllib.loads(text).get("routines", {})
    except (tomllib.TOMLDecodeError, AttributeError):
        return False


def add_routine_text(text: str, name: str, fields: dict[str, Any]) -> str:
    """`text` with a new routine at the end; the rest of the file untouched."""
    block = _render(name, fields)
    if not text.strip():
        return block
    return text.rstrip("\n") + "\n\n" + block


def _edit(text: str, name: str, apply: Callable[[Any], None]) -> str:
    """Apply `apply` to the routine's table, parsing only its block when it stands together."""
    import tomlkit
    span = find_block(text, name)
    if span is None:
        doc = tomlkit.parse(text)  # an unusual layout: the slow, general way
        apply(doc["routines"][name])
        return tomlkit.dumps(doc)
    start, end = span
    doc = tomlkit.parse(text[start:end])
    apply(doc["routines"][name])
    block = tomlkit.dumps(doc)
    if end < len(text) and not block.endswith("\n"):
        block += "\n"
    return text[:start] + block + text[end:]


def _edit_section(text: str, name: str, sub: str, index: int | None, apply: Callable[[Any], None]) -> str | None:
    """Apply `apply` to one section of the routine (its main table, a sub-table, or its `index`-th
    trigger), parsing that section alone so that the comments and blank lines after it stay where
    they are. None when the section is not written as its own table."""
    import tomlkit
    section = _Positions(text).section(name, sub, index)
    if section is None or (index is None and section.array):
        return None
    start, end = section_span(text, section.offset)
    doc = tomlkit.parse(text[start:end])
    table = doc["routines"][name]
    for part in sub.split(".") if sub else ():
        table = table[part]
    if index is not None:
        table = table[0]
    apply(table)
    piece = tomlkit.dumps(doc)
    if end < len(text) and not piece.endswith("\n"):
        piece += "\n"
    return text[:start] + piece + text[end:]


def edit_routine_text(text: str, name: str, changes: dict[str, Any]) -> str:
    """Set (or, for None, delete) fields of routine `name`, keeping its comments and layout.

    `changes` has the file's shape: top-level fields, `environment` and `connectors` as tables of
    changes, `triggers` as the whole new list (triggers that stay are left as written; a trigger that
    goes takes the comment lines right above it along). Each table is edited in its own section, so
    what follows it (blank lines, the comment above the next table) stays put."""
    import tomlkit

    changes = dict(changes)
    new_triggers = changes.pop("triggers") if "triggers" in changes else _UNCHANGED
    if new_triggers is not _UNCHANGED:
        text, new_triggers = _drop_triggers(text, name, list(new_triggers or []))
    top = {k: v for k, v in changes.items() if k not in ("environment", "connectors")}

    def set_keys(values: dict) -> Callable[[Any], None]:
        def apply(table) -> None:
            for key, value in values.items():
                if value is None:
                    if key in table:
                        del table[key]
                else:
                    table[key] = _item(value)
        return apply

    if top:
        edited = _edit_section(text, name, "", None, set_keys(top))
        text = edited if edited is not None else _edit(text, name, set_keys(top))
    for sub in ("environment", "connectors"):
        if sub not in changes:
            continue
        values = changes[sub]
        section = _Positions(text).section(name, sub)
        current = _current_table(text, name, sub)
        remaining = {k: v for k, v in (current or {}).items() if not (values is None or (k in values and values[k] is None))}
        remaining.update({k: v for k, v in (values or {}).items() if v is not None})
        if not remaining:
            if current is not None:
                text = _remove_sub(text, name, sub, section)
            continue
        if section is not None:
            edited = _edit_section(text, name, sub, None, set_keys(values or {}))
            if edited is not None:
                text = edited
                continue

        def add(table, sub=sub, remaining=remaining) -> None:
            if sub in table:
                del table[sub]
            inner = tomlkit.table()
            for k, v in remaining.items():
                inner.add(k, _item(v))
            table[sub] = inner

        text = _edit(text, name, add)
    if new_triggers is not _UNCHANGED:
        text = _edit(text, name, lambda table: _replace_triggers(table, new_triggers))
    return text


def _current_table(text: str, name: str, sub: str) -> dict | None:
    try:
        value = tomllib.loads(text)["routines"][name].get(sub)
    except (tomllib.TOMLDecodeError, KeyError, AttributeError):
        return None
    return value if isinstance(value, dict) else None


def _remove_sub(text: str, name: str, sub: str, section: "_Section | None") -> str:
    """Remove a sub-table that has nothing left (its section with the comments above it)."""
    if section is None:
        return _edit(text, name, lambda table: table.pop(sub, None))
    start, end = section_span(text, section.offset)
    start = with_comments_above(text, start)
    if start > 0 and text[start - 2:start] == "\n\n" and (text[end:end + 1] == "\n" or end == len(text)):
        start -= 1
    return text[:start] + text[end:]


_UNCHANGED = object()


def _drop_triggers(text: str, name: str, new: list[dict]) -> tuple[str, Any]:
    """Cut the trigger sections that `new` no longer has out of the text (with their comments); return
    the text and what is left to do: the triggers to add, or the whole list when the layout is unusual."""
    span = find_block(text, name)
    if span is None:
        return text, new
    start, end = span
    block = text[start:end]
    try:
        old = tomllib.loads(block)["routines"][name].get("triggers", [])
    except (tomllib.TOMLDecodeError, KeyError, AttributeError):
        return text, new
    pos = _Positions(block)
    arrays = [s for s in pos.sections.get(name, []) if s.sub == "triggers" and s.array]
    if len(arrays) != len(old):  # written inline (`triggers = [...]`): rewrite the list
        return text, new
    remaining = list(new)
    drop = []
    for i, trigger in enumerate(old):
        if trigger in remaining:
            remaining.remove(trigger)
        else:
            drop.append(i)
    sections = pos.sections[name]
    for i in reversed(drop):
        section = arrays[i]
        k = sections.index(section)
        cut_start = with_comments_above(block, section.offset)
        last = section
        for later in sections[k + 1:]:  # sub-tables of this trigger ([routines.x.triggers.title])
            if later.sub.startswith("triggers.") and not later.array:
                last = later
            else:
                break
        _, cut_end = section_span(block, last.offset)
        if cut_start > 0 and block[cut_start - 2:cut_start] == "\n\n" and (
                block[cut_end:cut_end + 1] == "\n" or cut_end == len(block)):
            cut_start -= 1
        block = block[:cut_start] + block[cut_end:]
    return text[:start] + block + text[end:], _Append(remaining)


@dataclass
class _Append:
    triggers: list[dict]


def _replace_triggers(table, new: "list[dict] | _Append") -> None:
    import tomlkit
    if isinstance(new, _Append):
        if not new.triggers:
            return
        old = table.get("triggers")
        if old is None:
            aot = tomlkit.aot()
            for trigger in new.triggers:
                aot.append(_trigger_table(trigger))
            table["triggers"] = aot
        else:
            for trigger in new.triggers:
                old.append(_trigger_table(trigger, appended=len(old) > 0))
        return
    if "triggers" in table:
        del table["triggers"]
    if new:
        aot = tomlkit.aot()
        for trigger in new:
            aot.append(_trigger_table(trigger))
        table["triggers"] = aot


def set_trigger_enabled_text(text: str, name: str, index: int, enabled: bool) -> str:
    """Write `enabled = false` (or remove it, for true) in the routine's `index`-th trigger."""
    def apply(trigger) -> None:
        if enabled:
            if "enabled" in trigger:
                del trigger["enabled"]
        else:
            trigger["enabled"] = False

    edited = _edit_section(text, name, "triggers", index, apply)
    if edited is not None:
        return edited
    return _edit(text, name, lambda table: apply(table["triggers"][index]))


def remove_routine_text(text: str, name: str) -> str:
    import tomlkit
    span = find_block(text, name)
    if span is None:
        doc = tomlkit.parse(text)
        del doc["routines"][name]
        return tomlkit.dumps(doc)
    start, end = span
    start = with_comments_above(text, start)
    rest = text[end:]
    head = text[:start]
    if head.endswith("\n\n") and (rest.startswith("\n") or not rest):
        head = head[:-1]
    return head + rest
