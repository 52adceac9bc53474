"""The pure loop core (daemon/bgd/loops.py): when loops fire, with `now` as a parameter."""

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from bgcore.jsonrpc import LIMIT_REACHED, RpcError
from bgcore.schedule import parse_interval, parse_when_and_what
from bgd.loops.book import (FALLBACK_WAKE_S, LIFETIME_S, MAX_LOOPS_PER_SESSION, Loop, LoopBook, clamp_delay, loop_jitter,
                       next_scheduled)

UTC = ZoneInfo("UTC")
T0 = datetime(2026, 3, 2, 10, 1, 30, tzinfo=timezone.utc).timestamp()
FREE = lambda session_id: False  # noqa: E731


def fixed(book, spec="5m", loop_id="aaaaaaaa", session="s1", now=T0, jitter=False):
    schedule = parse_interval(spec)
    loop = Loop(id=loop_id, session_id=session, kind="fixed", prompt="check", created_at=now,
                human=schedule.human, cron=schedule.cron, interval_s=schedule.interval_s,
                rounded_from=schedule.rounded_from)
    loop.jitter_s = loop_jitter(loop_id, schedule, recurring=True, enabled=jitter)
    loop.next_fire = now  # the first iteration runs at once
    return book.add(loop)


def dynamic(book, loop_id="dddddddd", session="s1", now=T0):
    return book.add(Loop(id=loop_id, session_id=session, kind="dynamic", prompt=None, created_at=now,
                         human="dynamic", next_fire=now))


def run(book, loop, now):
    """Fire `loop` at `now` and end its turn at once."""
    assert book.due(now, FREE) == [loop]
    book.fired(loop, now, UTC)
    return book.turn_ended(loop.session_id, now)


@pytest.mark.parametrize("spec, cron, human, rounded", [
    ("7m", "*/6 * * * *", "every 6 minutes", "7m"),
    ("90m", "0 */2 * * *", "every 2 hours", "90m"),
    ("45s", "* * * * *", "every minute", "45s"),
    ("5h", "0 */6 * * *", "every 6 hours", "5h"),
    ("every 2 hours", "0 */2 * * *", "every 2 hours", None),
    ("1d", "0 0 * * *", "every day at 00:00", None),
])
def test_intervals_become_clean_cron(spec, cron, human, rounded):
    schedule = parse_interval(spec)
    assert (schedule.cron, schedule.human, schedule.rounded_from) == (cron, human, rounded)


def test_first_fire_at_once_then_on_the_grid():
    book = LoopBook()
    loop = fixed(book)
    run(book, loop, T0)
    assert loop.runs == 1
    assert loop.next_fire == datetime(2026, 3, 2, 10, 5, tzinfo=timezone.utc).timestamp()
    assert book.due(loop.next_fire - 1, FREE) == []
    assert book.next_wake(FREE) == loop.next_fire


def test_a_week_of_a_five_minute_loop_then_one_last_fire_and_it_is_gone():
    book = LoopBook()
    loop = fixed(book)
    fires = []
    while loop.id in book.loops:
        now = book.next_wake(FREE)
        fires.append(now)
        run(book, loop, now)
    assert fires[0] == T0 and fires[-1] == T0 + LIFETIME_S  # the last fire is the expiry
    assert all(b - a <= 300 for a, b in zip(fires, fires[1:]))
    assert len(fires) == 7 * 24 * 12 + 2  # at once, every grid slot, and the expiry
    assert book.next_wake(FREE) is None


def test_a_due_fire_waits_while_busy_and_missed_fires_run_once():
    book = LoopBook()
    loop = fixed(book)
    run(book, loop, T0)
    busy = lambda session_id: True  # noqa: E731
    later = T0 + 3600  # twelve fires missed
    assert book.due(later, busy) == []
    assert book.next_wake(busy) is None  # the end of the turn pokes the shell instead
    run(book, loop, later)
    assert loop.runs == 2
    assert loop.next_fire == datetime(2026, 3, 2, 11, 5, tzinfo=timezone.utc).timestamp()


def test_one_fire_per_free_session_at_a_time():
    book = LoopBook()
    a = fixed(book, loop_id="aaaaaaaa")
    fixed(book, loop_id="bbbbbbbb")
    c = fixed(book, loop_id="cccccccc", session="s2")
    due = book.due(T0, FREE)
    assert [l.id for l in due] == [a.id, c.id]
    book.fired(a, T0, UTC)
    assert [l.id for l in book.due(T0, FREE)] == [c.id]  # s1's iteration is running


def test_jitter_is_deterministic_bounded_and_off_when_disabled():
    schedule = parse_interval("1h")
    values = {loop_jitter(f"id{i:06d}", schedule, recurring=True, enabled=True) for i in range(200)}
    assert all(0 <= v <= 360 for v in values) and len(values) > 50
    assert loop_jitter("abc", schedule, recurring=True, enabled=True) == loop_jitter("abc", schedule, recurring=True,
                                                                                        enabled=True)
    assert loop_jitter("abc", schedule, recurring=True, enabled=False) == 0
    book = LoopBook()
    loop = fixed(book, "1h", jitter=True, loop_id="jjjjjjjj")
    run(book, loop, T0)
    assert loop.next_fire == datetime(2026, 3, 2, 11, tzinfo=timezone.utc).timestamp() + loop.jitter_s


def test_the_fifty_first_loop_is_refused():
    book = LoopBook()
    for i in range(MAX_LOOPS_PER_SESSION):
        fixed(book, loop_id=f"l{i:07d}")
    with pytest.raises(RpcError) as err:
        fixed(book, loop_id="overflow")
    assert err.value.code == LIMIT_REACHED and "50" in err.value.message
    fixed(book, loop_id="other000", session="s2")  # the cap is per session


def test_a_one_shot_fires_once_and_deletes_itself():
    now = datetime.fromtimestamp(T0, timezone.utc)
    schedule, prompt = parse_when_and_what("in 45 minutes push the release branch", now=now, tz=UTC)
    book = LoopBook()
    loop = book.add(Loop(id="oooooooo", session_id="s1", kind="once", prompt=prompt, created_at=T0,
                         human=schedule.human, at=schedule.at.timestamp(), next_fire=schedule.at.timestamp()))
    assert loop.next_fire == T0 + 45 * 60 and prompt == "push the release branch"
    assert book.due(T0 + 60, FREE) == []
    out = book.fired(loop, T0 + 45 * 60, UTC)
    assert out.ended == [(loop, "fired")] and book.loops == {}


def test_dynamic_loop_wakeup_is_clamped_and_a_silent_iteration_gets_one_fallback():
    assert (clamp_delay(5), clamp_delay(120), clamp_delay(99999)) == (60, 120, 3600)
    book = LoopBook()
    loop = dynamic(book)
    book.fired(loop, T0, UTC)
    assert loop.next_fire is None and book.due(T0 + 9999, FREE) == []
    assert book.wakeup(loop, T0 + 10, 120, "waiting for CI", None) == 120
    book.turn_ended("s1", T0 + 20)
    assert loop.next_fire == T0 + 130 and loop.reason == "waiting for CI"
    # An iteration that does not reschedule: one fallback wake 20 minutes after it ends...
    run(book, loop, T0 + 130)
    assert loop.fallback and loop.next_fire == T0 + 130 + FALLBACK_WAKE_S
    # ...and when that one does not reschedule either, the loop ends.
    out = run(book, loop, loop.next_fire)
    assert out.ended == [(loop, "not_rescheduled")] and book.loops == {}


def test_a_fallback_iteration_that_reschedules_keeps_the_loop():
    book = LoopBook()
    loop = dynamic(book)
    run(book, loop, T0)
    assert loop.fallback
    book.fired(loop, loop.next_fire, UTC)
    book.wakeup(loop, loop.last_fire + 5, 600, "again", "new prompt")
    book.turn_ended("s1", loop.last_fire + 10)
    assert not loop.fallback and loop.prompt == "new prompt" and loop.id in book.loops


def test_dynamic_loops_expire_after_seven_days():
    book = LoopBook()
    loop = dynamic(book)
    now = T0
    while loop.id in book.loops:
        book.fired(loop, now, UTC)
        if loop.id in book.loops:
            book.wakeup(loop, now, 3600, "hourly", None)
            book.turn_ended("s1", now)
            now = loop.next_fire
    assert loop.last_fire == T0 + LIFETIME_S and loop.runs == 7 * 24 + 1


def test_stop_suspends_and_resume_restores_only_unexpired_loops():
    book = LoopBook()
    young = fixed(book, loop_id="young000")
    old = fixed(book, loop_id="old00000", now=T0 - LIFETIME_S + 60)
    soon = book.add(Loop(id="once0000", session_id="s1", kind="once", prompt="x", created_at=T0, human="once",
                         at=T0 + 3600, next_fire=T0 + 3600))
    past = book.add(Loop(id="once0001", session_id="s1", kind="once", prompt="x", created_at=T0, human="once",
                         at=T0 + 60, next_fire=T0 + 60))
    assert {l.id for l in book.suspend_session("s1")} == {young.id, old.id, soon.id, past.id}
    assert book.due(T0 + 10**6, FREE) == [] and book.live_count("s1") == 0
    out = book.restore_session("s1", T0 + 120, UTC)
    assert {l.id for l, _ in out.ended} == {old.id, past.id}
    assert {l.id for l in book.of_session("s1")} == {young.id, soon.id}
    assert young.next_fire == next_scheduled(young, T0 + 120, UTC) and soon.next_fire == T0 + 3600


def test_records_round_trip():
    book = LoopBook()
    loop = fixed(book, "7m")
    again = Loop.from_record(loop.to_record())
    assert again == loop
    data = loop.to_json()
    assert data["cron"] == "*/6 * * * *" and data["rounded_from"] == "7m" and data["recurring"]
