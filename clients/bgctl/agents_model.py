"""The agent view's logic, free of textual and of I/O (SPEC §9).

Everything the terminal view decides — which group a session falls in, what
is folded, what a row says, how long until a loop wakes, what a line typed at
the bottom means — is a plain function here, so it is tested without a
terminal and without a daemon.  `agents_view` only draws what this computes;
`bgcore.aio_link` only carries bytes.  Time is always a parameter (`now`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

from .render import OUTCOME_MARKS, STATE_MARKS, age, cost, one_line, transcript_entry

STATES = ("working", "needs_input", "sleeping", "completed", "failed", "stopped")
ENDED = ("completed", "failed", "stopped")

# Group keys in display order, and their titles (SPEC §9).
GROUPS = (("pinned", "Pinned"), ("needs_input", "Needs input"), ("working", "Working"), ("completed", "Completed"))
GROUP_OF_STATE = {"needs_input": "needs_input", "working": "working", "sleeping": "working",
                  "completed": "completed", "failed": "completed", "stopped": "completed"}

# Rich style names per state.  Colour is never the only signal: each state
# also has its own mark, so the view reads the same under NO_COLOR.
STATE_STYLES = {"working": "yellow", "needs_input": "bold magenta", "sleeping": "cyan",
                "completed": "green", "failed": "bold red", "stopped": "dim"}

FOLD_KEEP = 5           # ended rows shown per group before "… N more"
MIN_PROMPT = 4          # a dispatch prompt shorter than this is refused
DOUBLE_TAP_S = 2.0      # Ctrl+X twice within this removes
GROUP_BY = ("state", "dir")


# -- rows -----------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    """One line of the list: a group header, a session, or a fold marker."""

    kind: str                 # "header" | "session" | "fold"
    key: str                  # unique: "h:<group>", "s:<session id>", "f:<group>"
    group: str
    title: str = ""           # header and fold text
    session: dict | None = None

    @property
    def session_id(self) -> str | None:
        return self.session["id"] if self.session else None


def group_key(session: dict) -> str:
    if session.get("pinned"):
        return "pinned"
    return GROUP_OF_STATE.get(session.get("state", ""), "completed")


def _created(session: dict) -> str:
    return session.get("created_at") or ""


_STATE_ORDER = {"needs_input": 0, "working": 1, "sleeping": 2, "failed": 3, "completed": 4, "stopped": 5}


def build_rows(sessions: Iterable[dict], *, group_by: str = "state", states: frozenset[str] | None = None,
               expanded: frozenset[str] | set[str] = frozenset(), fold_keep: int = FOLD_KEEP) -> list[Row]:
    """The list, top to bottom.

    By state: Pinned, Needs input, Working, Completed (empty groups left out).
    By directory: Pinned, then one group per directory in path order, each
    sorted needs-input first.  In every group rows are newest first (by
    creation, so a busy session does not jump around); past `fold_keep`,
    completed and stopped rows fold into one "… N more" row unless the group
    is in `expanded`.  Failed rows are never folded.
    """
    chosen = [s for s in sessions if states is None or s.get("state") in states]
    chosen.sort(key=_created, reverse=True)
    groups: dict[str, list[dict]] = {}
    titles: dict[str, str] = {}
    if group_by == "dir":
        pinned = [s for s in chosen if s.get("pinned")]
        if pinned:
            groups["pinned"], titles["pinned"] = pinned, "Pinned"
        for s in sorted((s for s in chosen if not s.get("pinned")), key=lambda s: s.get("cwd") or ""):
            key = "d:" + (s.get("cwd") or "")
            groups.setdefault(key, []).append(s)
            titles[key] = short_dir(s.get("cwd") or "", 60)
        for key, members in groups.items():
            if key != "pinned":
                # stable: newest first within each state, as `chosen` was sorted
                members.sort(key=lambda s: _STATE_ORDER.get(s.get("state"), 9))
    else:
        for key, title in GROUPS:
            members = [s for s in chosen if group_key(s) == key]
            if members:
                groups[key], titles[key] = members, title

    rows: list[Row] = []
    for key, members in groups.items():
        rows.append(Row("header", "h:" + key, key, f"{titles[key]} ({len(members)})"))
        shown, folded = _fold(members, fold_keep if key not in expanded and key != "pinned" else None)
        rows.extend(Row("session", "s:" + s["id"], key, session=s) for s in shown)
        if folded:
            rows.append(Row("fold", "f:" + key, key, f"… {folded} more"))
        elif key in expanded and _fold(members, fold_keep)[1]:
            rows.append(Row("fold", "f:" + key, key, "… show fewer"))
    return rows


def _fold(members: list[dict], keep: int | None) -> tuple[list[dict], int]:
    if keep is None:
        return members, 0
    shown, kept, folded = [], 0, 0
    for s in members:
        if s.get("state") in ("completed", "stopped"):
            if kept >= keep:
                folded += 1
                continue
            kept += 1
        shown.append(s)
    return shown, folded


def first_selectable(rows: list[Row]) -> int | None:
    for i, row in enumerate(rows):
        if row.kind != "header":
            return i
    return None


def move(rows: list[Row], index: int | None, step: int) -> int | None:
    """The next selectable row from `index` in direction `step` (headers are skipped)."""
    if index is None:
        return first_selectable(rows)
    i = index + step
    while 0 <= i < len(rows):
        if rows[i].kind != "header":
            return i
        i += step
    return index


def reselect(rows: list[Row], key: str | None, old_index: int | None) -> int | None:
    """Keep the selection on the same row across a rebuild, else stay near where it was."""
    for i, row in enumerate(rows):
        if row.key == key:
            return i
    if not rows:
        return None
    near = min(old_index or 0, len(rows) - 1)
    found = move(rows, near - 1, 1) if near > 0 else first_selectable(rows)
    if found is None or rows[found].kind == "header":
        found = move(rows, near, -1)
    return found if found is not None and rows[found].kind != "header" else first_selectable(rows)


# -- the text of a row --------------------------------------------------------

def title_of(session: dict) -> str:
    """A session's name, else the start of its prompt."""
    return " ".join((session.get("name") or session.get("prompt") or session.get("id", "")).split())


def short_dir(path: str, width: int = 20) -> str:
    """`~/src/web`; when too long, the last components that fit: `…/src/web`."""
    home = os.path.expanduser("~")
    if home and home != "/" and (path == home or path.startswith(home + "/")):
        path = "~" + path[len(home):]
    if len(path) <= width:
        return path
    tail = ""
    for part in reversed(path.split("/")):
        candidate = part + ("/" + tail if tail else "")
        if len(candidate) + 2 > width:
            break
        tail = candidate
    return "…/" + tail if tail else "…" + path[-(width - 1):]


def clip(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    if width <= 0:
        return ""
    return text if len(text) <= width else text[:width - 1] + "…"


def parse_time(iso: str | None) -> datetime | None:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso)
    except ValueError:
        return None


def countdown(next_wake_at: str | None, now: datetime) -> str:
    """'in 4m05s' until a loop's next wake; 'due' once it is past."""
    when = parse_time(next_wake_at)
    if when is None:
        return ""
    left = int((when - now).total_seconds() + 0.999)
    if left <= 0:
        return "due"
    if left < 60:
        return f"in {left}s"
    if left < 3600:
        return f"in {left // 60}m{left % 60:02d}s"
    if left < 86400:
        return f"in {left // 3600}h{left % 3600 // 60:02d}m"
    return f"in {left // 86400}d{left % 86400 // 3600:02d}h"


def is_loop(session: dict) -> bool:
    return bool(session.get("loop_runs") or session.get("next_wake_at") or session.get("origin") == "loop"
                or session.get("state") == "sleeping")


def loop_badge(session: dict, now: datetime) -> str:
    """'↻3 in 4m05s': iterations run so far and the countdown to the next wake."""
    if not is_loop(session):
        return ""
    text = f"↻{session.get('loop_runs') or 0}"
    wake = countdown(session.get("next_wake_at"), now)
    return f"{text} {wake}" if wake else text


def detail_of(session: dict) -> str:
    """The one-line message column: what it waits for, why it failed, or its last message."""
    pending = session.get("pending") or {}
    if session.get("state") == "needs_input":
        if session.get("waiting_for") == "question" or pending.get("kind") == "question":
            questions = question_texts(pending)
            return "asks: " + ("; ".join(questions) if questions else (session.get("last_message") or "a question"))
        if pending:
            return f"wants {pending.get('tool_name')}: {one_line(json.dumps(pending.get('input'), ensure_ascii=False), 200)}"
        return "waiting for permission"
    if session.get("state") == "failed" and session.get("error"):
        return session["error"]
    outcome = session.get("outcome")
    if outcome and session.get("state") not in ("working", "sleeping"):  # a routine's run: what it achieved first
        return f"[{outcome.replace('_', ' ')}] " + (session.get("last_message") or "")
    return session.get("last_message") or ""


def mark_of(session: dict) -> str:
    """The row's mark: a routine's completed run is marked by its outcome (✓ only when done)."""
    state = session.get("state", "")
    if state == "completed" and session.get("outcome"):
        return OUTCOME_MARKS.get(session["outcome"], "?")
    return STATE_MARKS.get(state, " ")


def cost_text(session: dict) -> str:
    return cost(session)


@dataclass(frozen=True)
class RowLayout:
    title: int
    dir: int
    detail: int


def layout(width: int) -> RowLayout:
    """Column widths for a row `width` cells wide (80×24 and up).

    Fixed parts: mark 2, three gaps, age 4, a gap, cost 7.
    """
    spare = max(width - 2 - 3 - 4 - 1 - 7, 30)
    title = min(34, max(14, spare * 30 // 100))
    dir_ = min(28, max(10, spare * 18 // 100))
    return RowLayout(title, dir_, max(8, spare - title - dir_))


def row_cells(session: dict, now: datetime, width: int) -> list[tuple[str, str]]:
    """A session row as (text, style) cells, exactly `width` cells wide at most."""
    lay = layout(width)
    state = session.get("state", "")
    style = STATE_STYLES.get(state, "")
    badge = " ".join(b for b in (where_badge(session), loop_badge(session, now)) if b)
    detail_width = lay.detail - (len(badge) + 1 if badge else 0)
    cells = [
        (mark_of(session) + " ", style),
        (clip(title_of(session), lay.title).ljust(lay.title) + " ", "bold" if state == "needs_input" else ""),
        (short_dir(session.get("cwd") or "", lay.dir).ljust(lay.dir) + " ", "dim"),
    ]
    if badge:
        cells.append((badge + " ", "cyan"))
    cells.append((clip(detail_of(session), detail_width).ljust(max(detail_width, 0)) + " ",
                   "red" if state == "failed" else ""))
    cells.append((age(session.get("updated_at") or session.get("created_at"), now).rjust(4) + " ", "dim"))
    cells.append((cost_text(session).rjust(7), "dim"))
    return cells


def where_badge(session: dict) -> str:
    """Where a cluster session runs ("@worker", or "@cluster" before a worker took it); local: nothing."""
    if session.get("where", "local") == "local":
        return ""
    return "@" + (session.get("worker") or session["where"])


def row_text(session: dict, now: datetime, width: int) -> str:
    return "".join(text for text, _ in row_cells(session, now, width))


# -- pending requests ---------------------------------------------------------

@dataclass(frozen=True)
class Choice:
    """One numbered answer to a pending request, and the session.respond params it sends."""

    key: str
    label: str
    params: dict


def question_texts(pending: dict) -> list[str]:
    questions = (pending.get("input") or {}).get("questions") or []
    return [q["question"] for q in questions if isinstance(q, dict) and isinstance(q.get("question"), str)]


def choices(session: dict) -> list[Choice]:
    """Number keys for the pending request: 1 approve, 2 approve always, 3 deny;
    for a question, its options in order (up to 9)."""
    pending = session.get("pending")
    if session.get("state") != "needs_input" or not pending:
        return []
    base = {"request_id": pending["request_id"]} if pending.get("request_id") else {}
    if pending.get("kind") == "question":
        questions = (pending.get("input") or {}).get("questions") or []
        first = questions[0] if questions and isinstance(questions[0], dict) else {}
        out = []
        for i, option in enumerate(first.get("options") or []):
            label = option.get("label") if isinstance(option, dict) else option
            if isinstance(label, str) and label and i < 9:
                out.append(Choice(str(i + 1), label, {"decision": "allow", "answer": label, **base}))
        return out
    return [Choice("1", "approve", {"decision": "allow", **base}),
            Choice("2", "approve always", {"decision": "allow", "always": True, **base}),
            Choice("3", "deny", {"decision": "deny", **base})]


def pending_lines(session: dict) -> list[str]:
    """What a pending request asks, in a few lines, without the choices."""
    pending = session.get("pending")
    if session.get("state") != "needs_input" or not pending:
        return []
    if pending.get("kind") == "question":
        return ["? " + q for q in question_texts(pending)] or ["? (a question)"]
    text = json.dumps(pending.get("input"), ensure_ascii=False)
    return [f"⚑ {pending.get('tool_name')} wants to run: {one_line(text, 300)}"]


def choice_for(session: dict, key: str) -> Choice | None:
    for choice in choices(session):
        if choice.key == key:
            return choice
    return None


def transcript_lines(entries: Iterable[dict]) -> list[str]:
    """Readable lines of transcript entries (the same text as `bgctl logs`)."""
    out: list[str] = []
    for entry in entries:
        try:
            text = transcript_entry(entry)
        except (AttributeError, KeyError, TypeError, ValueError):
            # An entry of a shape this client does not know: show it, never fail on it.
            text = f"· {entry.get('kind', '?')}: {one_line(str(entry.get('data')), 200)}"
        if text:
            out.extend(text.splitlines() or [""])
    return out


# -- the dispatch line ----------------------------------------------------------

class LineError(ValueError):
    """A line typed at the bottom that cannot be acted on; the message is shown as is."""


@dataclass(frozen=True)
class Dispatch:
    prompt: str
    cwd: str


@dataclass(frozen=True)
class Filter:
    states: frozenset[str] | None   # None clears the filter


def parse_filter(spec: str) -> frozenset[str] | None:
    """`failed`, `needs`, `fail,stop`: states or unique prefixes; empty clears (None)."""
    words = [w for w in spec.replace(",", " ").split() if w]
    if not words:
        return None
    found = set()
    for word in words:
        norm = word.lower().replace("-", "_")
        if norm in ("done", "ended"):
            found.update(ENDED)
            continue
        matches = [s for s in STATES if s == norm] or [s for s in STATES if s.startswith(norm)]
        if len(matches) != 1:
            raise LineError(f"unknown state {word!r}: use one of {', '.join(STATES)}")
        found.add(matches[0])
    return frozenset(found)


def parse_line(text: str, cwd: str, isdir: Callable[[str], bool] = os.path.isdir) -> Dispatch | Filter:
    """What Enter on the dispatch line means.

    `s:<state>` filters the list (`s:` alone clears); anything else is a
    prompt for a new session in `cwd`.  A leading `@name` picks the directory
    `name` beside `cwd` (`@api fix it` in /src/web runs in /src/api); `@/path`
    and `@~/path` name a directory outright.
    """
    text = text.strip()
    if text.lower().startswith("s:"):
        return Filter(parse_filter(text[2:]))
    if text.startswith("@"):
        target, _, rest = text[1:].partition(" ")
        if not target:
            raise LineError("@ needs a directory name: @api fix the login test")
        if target.startswith(("/", "~")):
            path = os.path.expanduser(target)
        else:
            path = os.path.join(os.path.dirname(cwd.rstrip("/")) or "/", target)
        path = os.path.normpath(path)
        if not isdir(path):
            raise LineError(f"no directory {short_dir(path, 60)} beside {short_dir(cwd, 40)}")
        cwd, text = path, rest.strip()
    if len(text) < MIN_PROMPT:
        raise LineError("Too short")
    return Dispatch(text, cwd)


# -- small state ------------------------------------------------------------------

class DoubleTap:
    """Ctrl+X: the first press stops, a second on the same session within
    DOUBLE_TAP_S removes.  The clock is passed in."""

    def __init__(self, window: float = DOUBLE_TAP_S):
        self.window = window
        self._armed: tuple[str, float] | None = None

    def press(self, session_id: str, now: float) -> str:
        armed = self._armed
        if armed and armed[0] == session_id and now - armed[1] <= self.window:
            self._armed = None
            return "remove"
        self._armed = (session_id, now)
        return "stop"


@dataclass
class SessionTable:
    """The sessions the view knows, kept equal to the daemon's by events.

    `apply` takes one event (the params of an `event` notification) and
    returns the id of the session it touched, or None.
    """

    sessions: dict[str, dict] = field(default_factory=dict)

    def replace(self, sessions: Iterable[dict], since_subscribe: Iterable[dict] = ()) -> None:
        """Take the list from `session.list`, corrected by the events that came after subscribing.

        The daemon takes the list's snapshot, then writes it; an event about a
        later change can be written first.  So for every session an event
        touched since the subscription, the event's version wins unless the
        list's is newer (then the event for that newer change is still on its
        way, and will be applied when it comes).
        """
        fresh = {s["id"]: s for s in sessions}
        latest: dict[str, dict | None] = {}
        for event in since_subscribe:
            kind = event.get("type")
            if kind in ("session.created", "session.updated") and isinstance(event.get("session"), dict):
                latest[event["session"]["id"]] = event["session"]
            elif kind == "session.removed":
                latest[event.get("id")] = None
        for session_id, session in latest.items():
            if session is None:
                fresh.pop(session_id, None)
            elif session_id not in fresh or (session.get("updated_at") or "") >= (fresh[session_id].get("updated_at") or ""):
                fresh[session_id] = session
        self.sessions = fresh

    def apply(self, event: dict) -> str | None:
        kind = event.get("type")
        if kind in ("session.created", "session.updated") and isinstance(event.get("session"), dict):
            session = event["session"]
            self.sessions[session["id"]] = session
            return session["id"]
        if kind == "session.removed":
            self.sessions.pop(event.get("id"), None)
            return event.get("id")
        return None

    def offer(self, session: dict) -> bool:
        """Take a session from a call's answer, unless an event already brought a newer one.

        Answers and events share one connection, but an event about a later
        change can be handled before the code awaiting an answer resumes.
        """
        known = self.sessions.get(session["id"])
        if known is not None and (known.get("updated_at") or "") >= (session.get("updated_at") or ""):
            return False
        self.sessions[session["id"]] = session
        return True

    def values(self) -> list[dict]:
        return list(self.sessions.values())


# -- remembered settings ------------------------------------------------------------

SETTINGS_FILE = "agents-view.json"


def load_settings(path: Path) -> dict:
    """The view's remembered choices; a missing or unreadable file means defaults."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    group_by = data.get("group_by")
    return {"group_by": group_by if group_by in GROUP_BY else "state"}


def save_settings(path: Path, settings: dict) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(settings, indent=2) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only state dir costs the preference, never the view


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
