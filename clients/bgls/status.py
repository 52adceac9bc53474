"""What the editor shows about sessions: counts, the summary line, prompts to ask.

Pure: no LSP, no sockets, no clock reads (`now` is a parameter).  The server
feeds daemon events into a `SessionBook` and asks it what to publish and
which needs-input prompts to raise or withdraw.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Iterable

STATES = ("needs_input", "working", "sleeping", "completed", "failed", "stopped")
BUSY = ("working", "needs_input")  # a work-done progress runs while any session is in one of these
ENDED = ("completed", "failed", "stopped")
RECENT = timedelta(hours=24)  # ended sessions older than this drop out, as `session.list` does
MAX_LISTED = 50  # sessions carried in one bgagents/status notification

_SUMMARY_PARTS = (
    ("needs_input", lambda n: f"{n} {'needs' if n == 1 else 'need'} input"),
    ("working", lambda n: f"{n} working"),
    ("sleeping", lambda n: f"{n} sleeping"),
)


def counts(sessions: Iterable[dict]) -> dict[str, int]:
    """Sessions per state; every state is present, zeros included."""
    result = dict.fromkeys(STATES, 0)
    for session in sessions:
        state = session.get("state")
        if state in result:
            result[state] += 1
    return result


def summary(state_counts: dict[str, int]) -> str:
    """`2 need input · 3 working` (sleeping loops too); `idle` when nothing runs."""
    parts = [fmt(state_counts.get(state, 0)) for state, fmt in _SUMMARY_PARTS if state_counts.get(state, 0)]
    return " · ".join(parts) if parts else "idle"


def busy(state_counts: dict[str, int]) -> int:
    return sum(state_counts.get(state, 0) for state in BUSY)


def title(session: dict, width: int = 40) -> str:
    """The session's name, else the start of its prompt, on one line."""
    text = " ".join(str(session.get("name") or session.get("prompt") or "").split())
    return text if len(text) <= width else text[:width - 1] + "…"


def one_line(text: Any, limit: int = 120) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def label(session: dict) -> str:
    """`k3v9q0ab (fix the flaky test)`: how a message names a session."""
    name = title(session)
    return f"{session['id']} ({name})" if name else session["id"]


# -- what a session waits for ---------------------------------------------------

_INPUT_FIELDS = ("command", "file_path", "notebook_path", "path", "url", "pattern", "query", "description")


def questions(pending: dict) -> list[dict]:
    items = (pending.get("input") or {}).get("questions") if isinstance(pending.get("input"), dict) else None
    return [q for q in items or [] if isinstance(q, dict)]


def waiting_text(pending: dict) -> str:
    """One line: what the agent asks.  `Bash: npm test`, or the question itself."""
    if pending.get("kind") == "question":
        texts = [str(q.get("question", "")) for q in questions(pending)]
        return one_line("; ".join(t for t in texts if t) or "a question", 200)
    tool = pending.get("tool_name") or "a tool"
    inp = pending.get("input")
    if isinstance(inp, dict):
        for key in _INPUT_FIELDS:
            if isinstance(inp.get(key), str) and inp[key].strip():
                return f"{tool}: {one_line(inp[key], 160)}"
        if inp:
            return f"{tool} {one_line(json.dumps(inp, ensure_ascii=False), 160)}"
    return str(tool)


APPROVE, DENY, OPEN, REPLY = "Approve", "Deny", "Open", "Reply"
MAX_OPTION_ACTIONS = 3


@dataclass(frozen=True)
class Prompt:
    """A needs-input prompt: the message and its action titles.

    `answers` maps an action title to the answer it sends (a question's
    offered options, so a client without a text box can still answer).
    """

    session_id: str
    request_id: str
    kind: str  # "permission" | "question"
    message: str
    actions: tuple[str, ...]
    answers: dict[str, str] = field(default_factory=dict)


def prompt_for(session: dict) -> Prompt | None:
    pending = session.get("pending")
    if session.get("state") != "needs_input" or not isinstance(pending, dict) or not pending.get("request_id"):
        return None
    kind = "question" if pending.get("kind") == "question" or session.get("waiting_for") == "question" else "permission"
    if kind == "question":
        answers: dict[str, str] = {}
        qs = questions(pending)
        if len(qs) == 1:  # options only make sense as buttons when there is one question
            for option in qs[0].get("options") or []:
                text = option.get("label") if isinstance(option, dict) else None
                if isinstance(text, str) and text.strip() and text not in (REPLY, OPEN) and text not in answers:
                    answers[text] = text
                if len(answers) == MAX_OPTION_ACTIONS:
                    break
        message = f"bgagents: session {label(session)} asks: {waiting_text(pending)}"
        return Prompt(session["id"], pending["request_id"], kind, message, (*answers, REPLY, OPEN), answers)
    message = f"bgagents: session {label(session)} wants to use {waiting_text(pending)}"
    return Prompt(session["id"], pending["request_id"], kind, message, (APPROVE, DENY, OPEN))


# -- the book of sessions ------------------------------------------------------

def session_view(session: dict) -> dict:
    """The part of a session a status item needs (no prompt text, no tool input)."""
    pending = session.get("pending")
    view = {key: session.get(key) for key in (
        "id", "name", "state", "waiting_for", "cwd", "agent", "origin", "last_message", "error",
        "created_at", "updated_at", "pinned", "next_wake_at", "cost_usd", "outcome")}
    view["title"] = title(session, 60)
    view["pending"] = ({"request_id": pending.get("request_id"), "kind": pending.get("kind"),
                        "tool_name": pending.get("tool_name"), "text": waiting_text(pending)}
                       if isinstance(pending, dict) else None)
    return view


def _rank(session: dict) -> int:
    """Needs input, then working, then sleeping, then the ended ones."""
    state = session.get("state")
    return STATES.index(state) if state in STATES[:3] else 3


class SessionBook:
    """The sessions as the daemon last described them, kept current by events."""

    def __init__(self) -> None:
        self.sessions: dict[str, dict] = {}

    def reset(self, sessions: Iterable[dict]) -> None:
        self.sessions = {s["id"]: s for s in sessions if isinstance(s, dict) and "id" in s}

    def apply(self, event: dict) -> bool:
        """Apply one daemon event; say whether the book changed."""
        kind = event.get("type")
        if kind in ("session.created", "session.updated"):
            session = event.get("session")
            if not isinstance(session, dict) or "id" not in session:
                return False
            if self.sessions.get(session["id"]) == session:
                return False
            self.sessions[session["id"]] = session
            return True
        if kind == "session.removed":
            return self.sessions.pop(event.get("id"), None) is not None
        return False

    def get(self, session_id: str) -> dict | None:
        return self.sessions.get(session_id)

    def visible(self, now: datetime) -> list[dict]:
        """Sessions worth showing: all but those that ended over a day ago (pinned stay)."""
        cutoff = now - RECENT
        result = []
        for s in self.sessions.values():
            if s.get("state") in ENDED and not s.get("pinned"):
                try:
                    if datetime.fromisoformat(s.get("updated_at") or "") < cutoff:
                        continue
                except ValueError:
                    pass
            result.append(s)
        result.sort(key=lambda s: str(s.get("updated_at") or ""), reverse=True)
        result.sort(key=_rank)  # stable: newest first within each group
        return result

    def status(self, now: datetime, connected: bool = True, detail: str | None = None) -> dict:
        """The params of a `bgagents/status` notification."""
        shown = self.visible(now) if connected else []
        state_counts = counts(shown)
        text = summary(state_counts) if connected else "bgd not running"
        return {
            "connected": connected,
            "text": text,
            "counts": state_counts,
            "busy": busy(state_counts),
            "total": len(shown),
            "sessions": [session_view(s) for s in shown[:MAX_LISTED]],
            "detail": detail,
        }

    def prompts(self) -> dict[str, Prompt]:
        """The prompt each session needing input should show, by session id."""
        result = {}
        for session in self.sessions.values():
            prompt = prompt_for(session)
            if prompt is not None:
                result[session["id"]] = prompt
        return result


def prompt_changes(asked: dict[str, str], wanted: dict[str, Prompt]) -> tuple[list[Prompt], list[str]]:
    """Given the request ids already asked about (by session) and the prompts now wanted,
    return (prompts to raise, session ids whose prompt is to be withdrawn).

    A request is asked about once: a resync that shows the same request again raises nothing.
    """
    raise_now = [p for sid, p in wanted.items() if asked.get(sid) != p.request_id]
    withdraw = [sid for sid, rid in asked.items() if sid not in wanted or wanted[sid].request_id != rid]
    return raise_now, withdraw
