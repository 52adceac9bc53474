"""Which task worktrees to remove (SPEC §7, `[tasks] keep_worktrees_days`): a pure plan.

A run's worktree is kept while its session is live (working, waiting for a person or
sleeping between loop iterations) and for `keep` after the session last changed once
it ended (completed, failed, stopped); a worktree whose session was removed counts
from the run's start.  The shell (`runner.TaskService`) removes what the plan says.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Callable, Iterable

LIVE = ("working", "needs_input", "sleeping")


def prune_plan(runs: Iterable[dict], session_info: Callable[[str], tuple[str, str] | None],
               now: datetime, keep: timedelta) -> tuple[list[dict], datetime | None]:
    """(runs whose worktree is due for removal now, when the next one falls due or None).

    `runs` are task-run records with a `worktree`; `session_info(id)` gives a session's
    (state, updated_at ISO time), or None when the session no longer exists."""
    due: list[dict] = []
    next_at: datetime | None = None
    for run in runs:
        session_id = run.get("session_id")
        info = session_info(session_id) if session_id else None
        if info is None:
            since = run.get("started_at") or run.get("created_at")
        else:
            state, since = info
            if state in LIVE:
                continue
        try:
            ended = datetime.fromisoformat(since)
        except (TypeError, ValueError):
            ended = now - keep   # no usable time: treat it as due now
        at = ended + keep
        if at <= now:
            due.append(run)
        elif next_at is None or at < next_at:
            next_at = at
    return due, next_at
