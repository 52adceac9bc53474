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
    setup = "python -m venv .venv && .venv/bin/pip install -r requirements.txt"  # or setup_file; cached
    setup_timeout = "10m"           # default: [environment] setup_timeout_s of config.toml
    network = "trusted"             # "none" | "trusted" | "full" (default) | ["pypi.org", "*.github.com"]
    grant = ["~/.config/gh"]        # credential files a confined run may read (read-only)

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

Relative paths (prompt_file, env_file, setup_file, mcp_config) are relative to the directory of
routines.toml; nothing is read from a repository's own files. Reading uses tomllib (positions come from
routines_layout); edits are routines_edit's.
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
from .definitions import decode_error, find_top_key
from .routines_layout import Positions
from .github import FIELDS as FILTER_FIELDS
from .github import Filter, FilterError, compile_filter, parse_event
from .network_policy import parse_network
from .schedule import Schedule, ScheduleError, parse_schedule

__all__ = ["ApiTrigger", "CONNECTOR_FIELDS", "ENV_FIELDS", "FIELDS", "GitHubTrigger", "NAME_RE", "NETWORKS",
           "OVERLAPS", "Repo", "Routine", "RoutineFileError", "ScheduleTrigger", "TRIGGER_KEYS", "clone_name",
           "load_routines", "parse_duration", "read_env_text", "resolve_path", "stagger_seconds", "validate_name"]

NAME_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
OVERLAPS = ("skip", "buffer_one", "replace", "allow")
NETWORKS = ("none", "trusted", "full")
FIELDS: dict[str, type | tuple[type, ...]] = {
    "description": str, "prompt": str, "prompt_file": str, "repos": list, "agent": str, "model": str,
    "push": (list, str), "timeout": (str, int, float), "overlap": str, "enabled": bool, "timezone": str,
    "environment": dict, "connectors": dict, "triggers": list, "where": str,
}
WHERES = ("local", "cluster")   # where a routine's runs go (SPEC §14)
ENV_FIELDS: dict[str, type | tuple[type, ...]] = {"env_file": str, "setup": str, "setup_file": str,
                                                  "network": (str, list), "setup_timeout": (str, int, float),
                                                  "grant": list}
CONNECTOR_FIELDS: dict[str, type | tuple[type, ...]] = {"mcp_config": str}
TRIGGER_KEYS = ("schedule", "api", "github", "enabled", "rate_limit", "hourly_cap")
DEFAULT_TIMEOUT_S = 4 * 3600
DEFAULT_RATE_LIMIT = 60     # API fires an hour
DEFAULT_HOURLY_CAP = 20     # GitHub-started runs an hour
MAX_TIMEOUT_S = 7 * 86400
MAX_STAGGER_S = 300
MAX_SETUP_TIMEOUT_S = 6 * 3600
_KIND = {str: "a string", bool: "true or false", list: "a list", dict: "a table", (list, str): "a list of strings",
         (str, int, float): "a duration such as \"4h\" or a number of seconds", (str, list): "a string or a list"}
_RELATIVE_ONCE = ("in", "today", "tomorrow")
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
    setup: str | None = None                 # the script's text, when written inline
    setup_file: str | None = None            # as written
    setup_path: str | None = None            # resolved
    setup_timeout: str | int | float | None = None  # as written; None: [environment] setup_timeout_s
    setup_timeout_s: float | None = None
    grant: tuple[str, ...] = ()              # paths a confined run may read (as written; ~ allowed)
    mcp_config: str | None = None
    mcp_path: str | None = None
    triggers: tuple[Trigger, ...] = ()
    where: str = "local"
    line: int | None = None
    raw: dict = field(default_factory=dict, compare=False)

    def _environment_json(self) -> dict:
        env: dict[str, Any] = {"env_file": self.env_file,
                               "network": list(self.network) if isinstance(self.network, tuple) else self.network}
        for key in ("setup", "setup_file", "setup_timeout"):
            if getattr(self, key) is not None:
                env[key] = getattr(self, key)
        if self.grant:
            env["grant"] = list(self.grant)
        return env

    def trigger(self, kind: str) -> list[Trigger]:
        return [t for t in self.triggers if t.kind == kind and t.enabled]

    def to_json(self) -> dict:
        return {"name": self.name, "description": self.description, "prompt": self.prompt,
                "prompt_file": self.prompt_file, "repos": [r.to_json() for r in self.repos], "agent": self.agent,
                "model": self.model, "push": list(self.push), "timeout": self.timeout, "timeout_s": self.timeout_s,
                "overlap": self.overlap, "enabled": self.enabled,
                "timezone": self.timezone or getattr(self.tz, "key", str(self.tz)),
                "environment": self._environment_json(),
                "connectors": {"mcp_config": self.mcp_config},
                "triggers": [t.to_json() for t in self.triggers], "where": self.where, "line": self.line}


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
    pos = Positions(text)
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


def _relined(routine: Routine, line: int | None, pos: Positions) -> Routine:
    triggers = tuple(replace(t, line=pos.key(routine.name, None, "triggers", t.index)[0]) for t in routine.triggers)
    return replace(routine, line=line, triggers=triggers)


class _Reader:
    """Reads one routine's table, collecting every error with its position."""

    def __init__(self, name: str, raw: Any, path: str, pos: Positions, now: datetime, tz: ZoneInfo,
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
        environment = self._environment(raw.get("environment"), what)
        mcp_config, mcp_path = self._connectors(raw.get("connectors"), what)
        triggers = self._triggers(raw.get("triggers", []), what, zone)
        where = raw.get("where", "local")
        if where not in WHERES:
            self.fail(f"where of {what} must be \"local\" or \"cluster\", not {where!r}", "where")
        elif where == "cluster":
            self._cluster_environment(raw.get("environment"), environment, what)
        if self.errors:
            return None, self.errors
        line, _ = self.pos.header(name)
        return Routine(
            name=name, repos=repos, tz=zone, prompt=prompt, prompt_file=prompt_file, prompt_path=prompt_path,
            description=raw.get("description"), agent=agent, model=raw.get("model"), push=tuple(push),
            timeout=timeout, timeout_s=timeout_s, overlap=overlap, enabled=raw.get("enabled", True),
            timezone=zone_name, **environment, mcp_config=mcp_config,
            mcp_path=mcp_path, triggers=triggers, where=where, line=line, raw=raw), []

    def _cluster_environment(self, env: Any, parsed: dict[str, Any], what: str) -> None:
        """A run on the cluster is prepared by its worker, which runs no setup script and confines
        nothing (docs/cluster.md): a routine that asks for either is refused, never run open."""
        if not isinstance(env, dict):
            return
        for key in ("setup", "setup_file"):
            if key in env:
                self.fail(f"{key} of {what} cannot run on the cluster (its workers clone the repositories but run no "
                          "setup script); remove it or set where = \"local\"", key, "environment")
        if parsed.get("network", "full") != "full":
            self.fail(f"network of {what} cannot be enforced on the cluster (its workers do not confine their "
                      "runs), and a run is never run open; set network = \"full\" or where = \"local\"",
                      "network", "environment")

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
        names = [clone_name(r.url) for r in repos]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            self.fail(f"repos of {what} has two repositories named {dupes[0]!r}; each is cloned into a folder "
                      "of its name, so they must differ", "repos")
        return tuple(repos)

    def _environment(self, env: Any, what: str) -> dict[str, Any]:
        """The environment's fields of a Routine (SPEC §8: env_file, setup or setup_file, network),
        plus setup_timeout and grant (docs/routines.md)."""
        sub = "environment"
        out: dict[str, Any] = {}
        if env is None:
            return out
        if not self._types(env, ENV_FIELDS, f"the environment of {what}", sub):
            return out
        env_file = env.get("env_file")
        if env_file is not None:
            env_path = resolve_path(env_file, self.base_dir)
            out.update(env_file=env_file, env_path=env_path)
            if not self.isfile(env_path):
                self.fail(f"env_file {env_file!r} of {what} does not exist ({env_path}); create it (KEY=VALUE lines) "
                          "or fix the path", "env_file", sub)
        network, problem = parse_network(env.get("network", "full"))
        if problem:
            self.fail(f"{problem} (in the environment of {what})", "network", sub)
        else:
            out["network"] = network
        setup, setup_file = env.get("setup"), env.get("setup_file")
        if setup is not None and setup_file is not None:
            self.fail(f"the environment of {what} has both setup and setup_file; keep one", "setup_file", sub)
        elif setup is not None:
            if not setup.strip():
                self.fail(f"setup of {what} is empty; remove it or give the commands to run", "setup", sub)
            out["setup"] = setup
        elif setup_file is not None:
            setup_path = resolve_path(setup_file, self.base_dir)
            out.update(setup_file=setup_file, setup_path=setup_path)
            if not self.isfile(setup_path):
                self.fail(f"setup_file {setup_file!r} of {what} does not exist ({setup_path}); create it or fix "
                          "the path", "setup_file", sub)
        timeout = env.get("setup_timeout")
        if timeout is not None:
            if setup is None and setup_file is None:
                self.fail(f"setup_timeout of {what} has no setup script to limit; add setup or remove it",
                          "setup_timeout", sub)
            try:
                seconds = parse_duration(timeout)
            except ValueError as exc:
                self.fail(f"setup_timeout of {what} must be {exc}", "setup_timeout", sub)
            else:
                if seconds > MAX_SETUP_TIMEOUT_S:
                    self.fail(f"setup_timeout of {what} is over {MAX_SETUP_TIMEOUT_S // 3600} hours; a setup "
                              "that long belongs in the routine's prompt", "setup_timeout", sub)
                out.update(setup_timeout=timeout, setup_timeout_s=seconds)
        grant = env.get("grant")
        if grant is not None:
            bad = next((g for g in grant if not isinstance(g, str) or not g.strip()
                        or not os.path.isabs(os.path.expanduser(g))), None) if grant else None
            if bad is not None or not all(isinstance(g, str) for g in grant):
                self.fail(f"grant of {what} must be a list of absolute paths (or ~/...) a confined run may read, "
                          f"not {bad!r}", "grant", sub)
            else:
                out["grant"] = tuple(grant)
        return out

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


def clone_name(url: str) -> str:
    """The folder a repository is cloned into: the last part of its URL or path, without .git."""
    tail = re.split(r"[/:]", url.rstrip("/"))[-1] or "repo"
    return tail[:-4] if tail.endswith(".git") and len(tail) > 4 else tail


def _toml_value(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(f'"{v}"' for v in value) + "]"
    return f'"{value}"'
