"""The pure scheduler core (SPEC §7): a week of fires checked against dateutil's rrule, the missed-run
rule, and the overlap policies and concurrency cap of RunGate. Plain timestamps, no trio, no sleeping."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from dateutil import rrule

from bgcore.schedule import parse_schedule
from bgcore.scheduler import (Fire, Queued, RunGate, Scheduler, Skipped, Start, Stop)

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
START = datetime(2026, 6, 1, 0, 0, 30, tzinfo=BERLIN)  # a Monday, in summer time all week


def sched(spec: str, tz=BERLIN, now=START):
    return parse_schedule(spec, now=now, tz=tz)


def run_week(spec: str, tz=BERLIN, days: int = 7) -> list[datetime]:
    """Drive the scheduler as the shell does: jump to each deadline, take what is due."""
    s = Scheduler()
    s.set_task("t", sched(spec, tz), tz, last_seen=START.timestamp())
    end = (START + timedelta(days=days)).timestamp()
    fired = []
    while (deadline := s.next_deadline()) is not None and deadline <= end:
        fires, skips = s.due(deadline)
        assert skips == [] and all(not f.catch_up for f in fires)
        fired += [f.due_at for f in fires]
    return fired


def utc(times) -> list[datetime]:
    return [t.astimezone(UTC) for t in times]


@pytest.mark.parametrize("spec, rule", [
    ("every 15 minutes", dict(freq=rrule.MINUTELY, interval=15)),
    ("hourly", dict(freq=rrule.HOURLY)),
    ("every 6 hours", dict(freq=rrule.HOURLY, interval=6)),
    ("weekdays at 9:30", dict(freq=rrule.DAILY, byweekday=range(5), byhour=9, byminute=30)),
    ("daily at 18:00", dict(freq=rrule.DAILY, byhour=18, byminute=0)),
    ("weekly on wednesday at 10:00", dict(freq=rrule.WEEKLY, byweekday=rrule.WE, byhour=10, byminute=0)),
    ("*/20 8-17 * * 1-5", dict(freq=rrule.MINUTELY, byminute=(0, 20, 40), byhour=range(8, 18), byweekday=range(5))),
])
def test_a_week_of_fires_matches_rrule(spec, rule):
    base = START.replace(second=0, minute=0, hour=0)
    if spec.startswith("every") and "hours" in spec:
        # Interval slots are aligned to midnight of the zone's standard time (CET, UTC+1), so that
        # daylight saving never changes their real spacing (docs/schedules.md).
        base = base.replace(tzinfo=timezone(timedelta(hours=1)))
    expected = [t for t in rrule.rrule(dtstart=base, until=START + timedelta(days=7), bysecond=0, **rule)
                if t > START]
    assert utc(run_week(spec)) == utc(expected)


def test_vixie_day_rule_matches_the_union_of_two_rrules():
    # 09:00 on the 1st of the month OR on Mondays (both day fields restricted), over two months.
    base = START.replace(hour=0, minute=0, second=0)
    until = START + timedelta(days=60)
    by_day = rrule.rruleset()
    by_day.rrule(rrule.rrule(rrule.MONTHLY, dtstart=base, until=until, bymonthday=1, byhour=9, byminute=0, bysecond=0))
    by_day.rrule(rrule.rrule(rrule.WEEKLY, dtstart=base, until=until, byweekday=rrule.MO, byhour=9, byminute=0, bysecond=0))
    expected = [t for t in by_day if t > START]
    assert utc(run_week("0 9 1 * 1", days=60)) == utc(expected)


def test_dst_week_fires_each_wall_time_once():
    # Berlin springs forward on 2026-03-29 (02:00 -> 03:00): "daily at 02:30" fires right after the gap.
    tz, start = BERLIN, datetime(2026, 3, 27, 12, tzinfo=BERLIN)
    s = Scheduler()
    s.set_task("t", sched("daily at 02:30", tz, start), tz, last_seen=start.timestamp())
    fired = []
    while len(fired) < 4:
        fires, _ = s.due(s.next_deadline())
        fired += [f.due_at.astimezone(tz).strftime("%m-%d %H:%M") for f in fires]
    assert fired == ["03-28 02:30", "03-29 03:00", "03-30 02:30", "03-31 02:30"]


def at(hour: int, minute: int = 0, day: int = 1) -> float:
    return datetime(2026, 6, day, hour, minute, tzinfo=BERLIN).timestamp()


def test_daemon_down_three_hours_fires_once_and_skips_the_older_slots():
    s = Scheduler()
    s.set_task("hourly", sched("hourly"), BERLIN, last_seen=at(10))  # it fired at 10:00, then bgd stopped
    assert s.next_deadline() == at(11)
    fires, skips = s.due(at(13, 30), "daemon_down")
    assert fires == [Fire("hourly", datetime.fromtimestamp(at(13), BERLIN), catch_up=True)]
    assert [(k.due_at.timestamp(), k.reason) for k in skips] == [(at(11), "daemon_down"), (at(12), "daemon_down")]
    assert s.last_seen("hourly") == at(13, 30) and s.next_deadline() == at(14)
    assert s.due(at(13, 59)) == ([], [])


def test_an_on_time_fire_is_not_a_catch_up_but_a_late_one_is():
    s = Scheduler()
    s.set_task("a", sched("hourly"), BERLIN, last_seen=at(10, 30))
    s.set_task("b", sched("daily at 11:00"), BERLIN, last_seen=at(10, 30))
    fires, _ = s.due(at(11) + 0.004)
    assert [(f.task, f.catch_up) for f in fires] == [("a", False), ("b", False)]
    s.set_task("c", sched("hourly"), BERLIN, last_seen=at(11, 30))
    fires, skips = s.due(at(12, 5), "asleep")  # the machine slept through 12:00
    assert {(f.task, f.catch_up) for f in fires} == {("a", True), ("c", True)} and skips == []


def test_the_look_back_is_seven_days_and_old_one_time_tasks_expire():
    s = Scheduler()
    s.set_task("daily", sched("daily at 09:00"), BERLIN, last_seen=at(10, day=1))
    once = parse_schedule("once at 2026-06-02 09:00", now=START, tz=BERLIN)
    s.set_task("once", once, BERLIN, last_seen=at(8, day=1))
    s.set_task("soon", parse_schedule("once at 2026-06-14 09:00", now=START, tz=BERLIN), BERLIN, last_seen=at(8, day=1))
    fires, skips = s.due(at(12, day=14), "daemon_down")
    assert [(f.task, f.due_at.day, f.catch_up) for f in fires] == [("daily", 14, True), ("soon", 14, True)]
    daily_skips = [k for k in skips if k.task == "daily"]
    assert [k.due_at.day for k in daily_skips] == [8, 9, 10, 11, 12, 13]  # 7 days back, not the 2nd..7th
    assert [(k.task, k.reason) for k in skips if k.task == "once"] == [("once", "expired")]
    assert s.next_fire("once") is None and s.next_fire("soon") is None


def test_a_week_of_missed_minutes_is_recorded_compactly():
    s = Scheduler()
    s.set_task("m", sched("every minute"), BERLIN, last_seen=at(0, day=1))
    fires, skips = s.due(at(0, day=8) + 1, "daemon_down")
    assert len(fires) == 1 and sum(k.count for k in skips) == 7 * 24 * 60 - 1
    assert len(skips) <= 1000 and skips[0].count > 1


def test_jitter_delays_the_deadline_but_not_the_due_time():
    s = Scheduler()
    s.set_task("j", sched("hourly"), BERLIN, last_seen=at(10, 30), jitter_s=90)
    assert s.next_deadline() == at(11) + 90
    assert s.due(at(11) + 89) == ([], [])
    fires, _ = s.due(at(11) + 90)
    assert fires[0].due_at.timestamp() == at(11) and not fires[0].catch_up


def test_removed_and_replaced_tasks_leave_no_stale_deadlines():
    s = Scheduler()
    s.set_task("a", sched("hourly"), BERLIN, last_seen=at(10, 30))
    s.set_task("a", sched("daily at 15:00"), BERLIN, last_seen=at(10, 30))
    assert s.next_deadline() == at(15)
    s.remove("a")
    assert s.next_deadline() is None and s.due(at(16)) == ([], [])


def test_ten_thousand_tasks_cost_only_what_is_due():
    s = Scheduler()
    for i in range(10_000):
        s.set_task(f"t{i}", sched("daily at 09:00" if i else "hourly"), BERLIN, last_seen=at(10, 30))
    fires, _ = s.due(at(11))
    assert [f.task for f in fires] == ["t0"] and s.next_deadline() == at(12)


# ---------------------------------------------------------------- RunGate

def test_skip_is_the_default_and_is_recorded():
    g = RunGate(max_concurrent=4)
    assert g.offer(1, "a", "skip") == [Start(1, "a")]
    assert g.offer(2, "a", "skip") == [Skipped(2, "a", "previous_run_active")]
    assert g.finished(1) == []
    assert g.offer(3, "a", "skip") == [Start(3, "a")]


def test_buffer_one_queues_one_and_skips_the_rest():
    g = RunGate(max_concurrent=4)
    g.offer(1, "a", "buffer_one")
    assert g.offer(2, "a", "buffer_one") == [Queued(2, "a", "buffer_one")]
    assert g.offer(3, "a", "buffer_one") == [Skipped(3, "a", "previous_run_active")]
    assert g.finished(1) == [Start(2, "a")]
    assert g.finished(2) == []


def test_replace_stops_the_running_one_and_allow_overlaps():
    g = RunGate(max_concurrent=4)
    g.offer(1, "a", "replace")
    assert g.offer(2, "a", "replace") == [Stop(1, "a"), Start(2, "a")]
    assert g.finished(1) == []  # the stopped run's end is already accounted for
    g.offer(3, "b", "allow")
    assert g.offer(4, "b", "allow") == [Start(4, "b")]
    assert sorted(g.active) == [2, 3, 4]


def test_a_resumed_run_holds_its_slot_and_its_task_until_it_finishes():
    g = RunGate(max_concurrent=1)
    g.resume(1, "a")
    g.resume(1, "a")  # once only
    assert g.offer(2, "a", "skip") == [Skipped(2, "a", "previous_run_active")]
    assert g.offer(3, "b", "skip") == [Queued(3, "b", "concurrency_limit")]
    g.resume(4, "c")  # over the cap: it is running already
    assert sorted(g.active) == [1, 4]
    assert g.finished(1) == []
    assert g.finished(4) == [Start(3, "b")]
    assert g.offer(5, "a", "skip") == [Queued(5, "a", "concurrency_limit")]


def test_the_cap_queues_in_order_and_starts_when_a_slot_frees():
    g = RunGate(max_concurrent=2)
    assert g.offer(1, "a", "skip") == [Start(1, "a")]
    assert g.offer(2, "b", "skip") == [Start(2, "b")]
    assert g.offer(3, "c", "skip") == [Queued(3, "c", "concurrency_limit")]
    assert g.offer(4, "d", "skip") == [Queued(4, "d", "concurrency_limit")]
    assert g.offer(5, "c", "skip") == [Skipped(5, "c", "previous_run_active")]  # c already waits
    assert g.finished(2) == [Start(3, "c")]
    assert g.set_max(3) == [Start(4, "d")]
    assert g.forget("d") == []  # running ones are not the gate's to drop
    g.offer(6, "e", "skip")
    assert g.forget("e") == [Skipped(6, "e", "removed")]


def test_a_manual_run_ignores_the_overlap_policy():
    g = RunGate(max_concurrent=4)
    g.offer(1, "a", "skip")
    assert g.offer(2, "a", "allow") == [Start(2, "a")]
