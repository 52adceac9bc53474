"""What the index page shows (SPEC §13): groups, filters, and the words of a row.

Pure: sessions are the JSON objects of `session.list`, time is a parameter.
The groups are the agent view's (SPEC §9): Pinned, Needs input, Working
(sleeping loop sessions included), Completed (failed and stopped included).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import SimpleNamespace
from datetime import datetime, timedelta

GROUPS = (("pinned", "Pinned"), ("needs_input", "Needs input"), ("working", "Working"), ("completed", "Completed"))
GROUP_OF_STATE = {"needs_input": "needs_input", "working": "working", "sleeping": "working",
                  "completed": "completed", "failed": "completed", "stopped": "completed"}
STATES = ("working", "needs_input", "sleeping", "completed", "failed", "stopped")
ENDED = ("completed", "failed", "stopped")
RECENT = timedelta(hours=24)   # ended sessions older than this are left out unless asked for (as `bgctl ls`)
STATE_WORDS = {"working": "working", "needs_input": "needs input", "sleeping": "sleeping",
               "completed": "completed", "failed": "failed", "stopped": "stopped"}


@dataclass(frozen=True)
class Filters:
    """The index page's query: `?state=&cwd=&all=1`."""

    state: str | None = None
    cwd: str | None = None
    show_all: bool = False

    @classmethod
    def parse(cls, query) -> "Filters":
        state = query.get("state") or None
        cwd = (query.get("cwd") or "").strip() or None
        return cls(state if state in STATES else None, cwd.rstrip("/") or "/" if cwd else None,
                   query.get("all") in ("1", "true", "on"))

    def query(self) -> str:
        """The query string that gives these filters back (for the event stream's URL)."""
        from urllib.parse import urlencode
        pairs = [(k, v) for k, v in (("state", self.state), ("cwd", self.cwd), ("all", "1" if self.show_all else None))
                 if v]
        return urlencode(pairs)

    @property
    def active(self) -> bool:
        return bool(self.state or self.cwd or self.show_all)


def group_of(session: dict) -> str:
    if session.get("pinned"):
        return "pinned"
    return GROUP_OF_STATE.get(session.get("state", ""), "completed")


def shown(session: dict, filters: Filters, cutoff: str) -> bool:
    """Whether the index lists `session`; `cutoff`: the ISO time before which ended sessions hide."""
    if filters.state is not None and session.get("state") != filters.state:
        return False
    if filters.cwd is not None and session.get("cwd") != filters.cwd:
        return False
    if filters.show_all or filters.state or session.get("pinned") or session.get("state") not in ENDED:
        return True
    return (session.get("updated_at") or "") >= cutoff


def cutoff_for(now: datetime) -> str:
    from bgd import clock
    return clock.iso(now - RECENT)  # type: ignore[return-value]


def membership(sessions, filters: Filters, cutoff: str) -> dict[str, str]:
    """Session id -> group, for every session the index lists."""
    return {s["id"]: group_of(s) for s in sessions if shown(s, filters, cutoff)}


def grouped(sessions, filters: Filters, cutoff: str) -> dict[str, list[dict]]:
    """Group key -> its sessions, newest first (by creation, so a busy row does not jump)."""
    groups: dict[str, list[dict]] = {key: [] for key, _ in GROUPS}
    for s in sessions:
        if shown(s, filters, cutoff):
            groups[group_of(s)].append(s)
    for members in groups.values():
        members.sort(key=lambda s: s.get("created_at") or "", reverse=True)
    return groups


def hidden_count(sessions, filters: Filters, cutoff: str) -> int:
    """How many ended sessions the default view leaves out (what `all=1` would add)."""
    if filters.show_all or filters.state:
        return 0
    wider = Filters(filters.state, filters.cwd, True)
    return sum(1 for s in sessions if shown(s, wider, cutoff) and not shown(s, filters, cutoff))


def directories(sessions) -> list[str]:
    """Every directory a session ran in, for the filter and the dispatch box, most used first."""
    counts: dict[str, int] = {}
    for s in sessions:
        counts[s.get("cwd") or ""] = counts.get(s.get("cwd") or "", 0) + 1
    return sorted((d for d in counts if d), key=lambda d: (-counts[d], d))


# -- the words of a row ---------------------------------------------------------------------------

def title(session: dict, limit: int = 120) -> str:
    return session.get("name") or one_line(session.get("prompt") or "", limit) or session.get("id", "")


def one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


_HOME = os.path.expanduser("~")


def short_dir(path: str, home: str | None = None) -> str:
    home = home if home is not None else _HOME
    if home and home != "/" and (path == home or path.startswith(home + "/")):
        return "~" + path[len(home):]
    return path


def age(iso: str | None, now: datetime) -> str:
    """'just now', '4 min ago', '3 h ago', '2 d ago'."""
    if not iso:
        return ""
    try:
        then = datetime.fromisoformat(iso)
    except ValueError:
        return ""
    seconds = (now - then).total_seconds()
    if seconds < 45:
        return "just now"
    if seconds < 3600:
        return f"{max(1, round(seconds / 60))} min ago"
    if seconds < 86400 * 2:
        return f"{round(seconds / 3600)} h ago"
    return f"{round(seconds / 86400)} d ago"


def countdown(iso: str | None, now: datetime) -> str:
    """Time until `iso`: 'in 4m 10s', 'in 2h 5m', 'now'."""
    if not iso:
        return ""
    try:
        seconds = int((datetime.fromisoformat(iso) - now).total_seconds())
    except ValueError:
        return ""
    if seconds <= 0:
        return "now"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"in {hours}h {minutes}m"
    if minutes:
        return f"in {minutes}m {secs}s"
    return f"in {secs}s"


def cost(value) -> str:
    if value is None:
        return "cost unknown"   # the agent has not reported one (ACP and command agents may never)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        return "—"
    return f"${value:.4f}" if value < 1 else f"${value:.2f}"


def row(session: dict, now: datetime, runs: dict[str, dict]) -> SimpleNamespace:
    """Everything one row of the index says, worked out once (the template only places it).

    Attributes rather than keys: Jinja reads `r.id` with getattr first, and a
    thousand rows of failed getattrs on dicts were a third of the index's time."""
    state = session.get("state", "")
    pending = session.get("pending") or None
    run = runs.get(session.get("id", "")) if runs else None
    routine = routine_name(session)
    if routine and run is None and session.get("outcome"):
        run = {"status": "?", "outcome": session["outcome"]}   # the session says what its run reported
    wake = session.get("next_wake_at") if state == "sleeping" else None
    view = {
        "id": session.get("id", ""), "state": state, "state_word": STATE_WORDS.get(state, state),
        "waiting_for": session.get("waiting_for"), "title": title(session), "cwd": session.get("cwd") or "",
        "dir": short_dir(session.get("cwd") or ""), "agent": session.get("agent") or "",
        "updated_at": session.get("updated_at") or "", "age": age(session.get("updated_at"), now),
        "cost": cost(session.get("cost_usd")), "wake_at": wake, "wake": countdown(wake, now) if wake else "",
        "loop_runs": session.get("loop_runs") or 0, "task": task_name(session), "routine": routine,
        "error": session.get("error") if state == "failed" else None, "last": session.get("last_message") or "",
        "run": None, "ask": None,
    }
    if routine and run:
        view["run"] = SimpleNamespace(status=str(run.get("status") or "?"), outcome=outcome_of(run))
    if pending:
        view["ask"] = SimpleNamespace(kind=pending.get("kind"), tool=pending.get("tool_name") or "",
                                      request_id=pending.get("request_id") or "",
                                      input=_input_line(pending.get("input")))
    return SimpleNamespace(**view)


def row_shape(view: SimpleNamespace) -> tuple:
    """What a row shows besides its last message, age and cost: while it stays, only those change."""
    return tuple((k, v) for k, v in vars(view).items() if k not in ("last", "updated_at", "age", "cost")) + (
        ("has_last", bool(view.last)),)


def _input_line(value) -> str:
    import json
    try:
        return one_line(json.dumps(value, ensure_ascii=False), 80)
    except (TypeError, ValueError):
        return one_line(str(value), 80)


# -- routine runs (SPEC §8: status is not outcome) ------------------------------------------------

def routine_name(session: dict) -> str | None:
    origin = session.get("origin") or ""
    return origin.split(":", 1)[1] if origin.startswith("routine:") else None


def task_name(session: dict) -> str | None:
    origin = session.get("origin") or ""
    return origin.split(":", 1)[1] if origin.startswith("task:") else None


def runs_by_session(runs) -> dict[str, dict]:
    """Session id -> its run record, from what `routine.runs` returns (a list, or {"runs": [...]})."""
    if isinstance(runs, dict):
        runs = runs.get("runs") or []
    found: dict[str, dict] = {}
    for run in runs if isinstance(runs, list) else []:
        if isinstance(run, dict):
            session_id = run.get("session_id") or run.get("session")
            if isinstance(session_id, str) and session_id not in found:
                found[session_id] = run
    return found


def outcome_of(run: dict) -> tuple[str, str]:
    """A run's outcome as (status, summary); `unreported` when the agent said nothing."""
    outcome = run.get("outcome")
    if isinstance(outcome, dict):
        return str(outcome.get("status") or "unreported"), str(outcome.get("summary") or "")
    if isinstance(outcome, str) and outcome:
        return outcome, str(run.get("outcome_summary") or run.get("summary") or "")
    return "unreported", ""
