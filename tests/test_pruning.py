"""The pure plan of which task worktrees to remove (bgd.tasks.pruning)."""

from datetime import datetime, timedelta, timezone

from bgd.tasks.pruning import prune_plan

NOW = datetime(2026, 6, 10, 12, 0, tzinfo=timezone.utc)
KEEP = timedelta(days=7)


def iso(dt: datetime) -> str:
    return dt.isoformat()


def plan(runs, sessions):
    return prune_plan(runs, sessions.get, NOW, KEEP)


def test_due_only_keep_after_the_session_ended():
    runs = [{"id": 1, "session_id": "old", "worktree": "/w/1"}, {"id": 2, "session_id": "new", "worktree": "/w/2"}]
    sessions = {"old": ("completed", iso(NOW - timedelta(days=7, seconds=1))),
                "new": ("failed", iso(NOW - timedelta(days=6)))}
    due, next_at = plan(runs, sessions)
    assert [r["id"] for r in due] == [1]
    assert next_at == NOW + timedelta(days=1)


def test_a_live_session_keeps_its_worktree_however_old():
    runs = [{"id": state, "session_id": state, "worktree": "/w"} for state in ("working", "needs_input", "sleeping")]
    sessions = {state: (state, iso(NOW - timedelta(days=300))) for state in ("working", "needs_input", "sleeping")}
    assert plan(runs, sessions) == ([], None)


def test_a_removed_session_counts_from_the_run_start_and_a_failed_start_from_its_record():
    runs = [{"id": 1, "session_id": "gone", "started_at": iso(NOW - timedelta(days=8)), "worktree": "/w/1"},
            {"id": 2, "session_id": None, "created_at": iso(NOW - timedelta(days=2)), "worktree": "/w/2"}]
    due, next_at = plan(runs, {})
    assert [r["id"] for r in due] == [1]
    assert next_at == NOW + timedelta(days=5)


def test_zero_days_prunes_as_soon_as_the_session_ends():
    runs = [{"id": 1, "session_id": "s", "worktree": "/w/1"}]
    assert plan(runs, {"s": ("stopped", iso(NOW))})[0] == []  # keep = 7 days
    assert prune_plan(runs, {"s": ("stopped", iso(NOW))}.get, NOW, timedelta(0))[0] == runs
