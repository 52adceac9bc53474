"""The schedule core (SPEC §6, §7, §3 `schedule explain`): the language, DST, rounding, jitter.

Fire times are compared as UTC instants or timestamps throughout: Python compares two datetimes that
share a tzinfo by wall clock and ignores `fold`, which would hide exactly the bugs tested here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

if importlib.util.find_spec("bgcore") is None:  # a bare checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))

from bgcore.schedule import (  # noqa: E402
    Schedule, ScheduleError, explain, jitter_seconds, next_fire_time, next_fire_times, next_fire_ts, parse_interval,
    parse_schedule, parse_when_and_what, previous_fire_times, split_loop_args,
)

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")
NOW = datetime(2026, 11, 24, 10, 7, 23, tzinfo=BERLIN)  # a Tuesday


def parse(spec: str, tz: ZoneInfo = BERLIN, now: datetime = NOW) -> Schedule:
    return parse_schedule(spec, now=now, tz=tz)


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def fires_utc(schedule: Schedule, after: datetime, tz: ZoneInfo, n: int) -> list[datetime]:
    return [t.astimezone(UTC) for t in next_fire_times(schedule, after, tz, n)]


def gaps(times: list[datetime]) -> set[float]:
    return {b.timestamp() - a.timestamp() for a, b in zip(times, times[1:])}


# ---------------------------------------------------------------- the language

@pytest.mark.parametrize("spec, cron, human, interval_s", [
    ("hourly", "0 * * * *", "every hour", 3600),
    ("daily", "0 9 * * *", "at 09:00 every day", None),
    ("daily at 18:30", "30 18 * * *", "at 18:30 every day", None),
    ("daily at 9am", "0 9 * * *", "at 09:00 every day", None),
    ("Daily at 6:05 PM", "5 18 * * *", "at 18:05 every day", None),
    ("daily at noon", "0 12 * * *", "at 12:00 every day", None),
    ("weekdays", "0 9 * * 1-5", "at 09:00 on weekdays", None),
    ("weekdays at 9:30", "30 9 * * 1-5", "at 09:30 on weekdays", None),
    ("weekends at 10am", "0 10 * * 0,6", "at 10:00 on weekends", None),
    ("weekly", "0 9 * * 1", "at 09:00 on Mondays", None),
    ("weekly on friday at 17:00", "0 17 * * 5", "at 17:00 on Fridays", None),
    ("weekly on monday at 10:00", "0 10 * * 1", "at 10:00 on Mondays", None),
    ("weekly at 8:00 on sun", "0 8 * * 0", "at 08:00 on Sundays", None),
    ("every monday at 10:00", "0 10 * * 1", "at 10:00 on Mondays", None),
    ("every week", "0 9 * * 1", "at 09:00 on Mondays", None),
    ("every weekday at 8am", "0 8 * * 1-5", "at 08:00 on weekdays", None),
    ("every day at 07:15", "15 7 * * *", "at 07:15 every day", None),
    ("every minute", "* * * * *", "every minute", 60),
    ("every 15 minutes", "*/15 * * * *", "every 15 minutes", 900),
    ("every 15 min", "*/15 * * * *", "every 15 minutes", 900),
    ("every 5m", "*/5 * * * *", "every 5 minutes", 300),
    ("every hour", "0 * * * *", "every hour", 3600),
    ("every 2 hours", "0 */2 * * *", "every 2 hours", 7200),
    ("every day", "0 0 * * *", "every day at 00:00", 86400),
    ("every 3 days", "0 0 */3 * *", "every 3 days at 00:00", 3 * 86400),
    ("5m", "*/5 * * * *", "every 5 minutes", 300),
    ("2 hours", "0 */2 * * *", "every 2 hours", 7200),
    ("at 15:00", "0 15 * * *", "at 15:00 every day", None),
    ("15:00", "0 15 * * *", "at 15:00 every day", None),
    ("at midnight", "0 0 * * *", "at 00:00 every day", None),
    ("0 9 * * 1-5", "0 9 * * 1-5", "at 09:00 on weekdays", None),
    ("0 9 * * MON-FRI", "0 9 * * 1-5", "at 09:00 on weekdays", None),
    ("5 4 * * sun", "5 4 * * 0", "at 04:05 on Sundays", None),
    ("0 12 * * 7", "0 12 * * 0", "at 12:00 on Sundays", None),
    ("0,15,30,45 * * * *", "*/15 * * * *", "every 15 minutes", None),
    ("*/20 9-17 * * 1-5", "*/20 9-17 * * 1-5",
     "cron */20 9-17 * * 1-5 (minute hour day month weekday)", None),
    ("0 0 13 * 5", "0 0 13 * 5", "at 00:00 on day 13 of the month or on Fridays", None),
    ("0 0 1 jan,jul *", "0 0 1 1,7 *", "at 00:00 on day 1 of the month in January and July", None),
    ("30 4 1,15 * *", "30 4 1,15 * *", "at 04:30 on days 1 and 15 of the month", None),
    ("0 */6 * * *", "0 */6 * * *", "every 6 hours", None),
    ("0 8,20 * * *", "0 8,20 * * *", "at 08:00 and 20:00 every day", None),
    ("  0   9 * *   1-5 ", "0 9 * * 1-5", "at 09:00 on weekdays", None),
    ("@daily", "0 0 * * *", "at 00:00 every day", None),
    ("@hourly", "0 * * * *", "every hour", None),
])
def test_recurring_forms(spec, cron, human, interval_s):
    s = parse(spec)
    assert (s.spec, s.kind, s.cron, s.human, s.interval_s) == (spec, "cron", cron, human, interval_s)
    assert s.at is None
    assert s.rounded_from is None


def test_manual():
    s = parse("manual")
    assert (s.kind, s.cron, s.at, s.interval_s) == ("manual", None, None, None)
    assert next_fire_times(s, NOW, BERLIN, 3) == [] and next_fire_time(s, NOW, BERLIN) is None


@pytest.mark.parametrize("spec, at, human", [
    ("tomorrow at 9am", datetime(2026, 11, 25, 9, 0), "once at 2026-11-25 09:00 (Europe/Berlin)"),
    ("tomorrow", datetime(2026, 11, 25, 9, 0), "once at 2026-11-25 09:00 (Europe/Berlin)"),
    ("today at 18:00", datetime(2026, 11, 24, 18, 0), "once at 2026-11-24 18:00 (Europe/Berlin)"),
    ("in 45 minutes", datetime(2026, 11, 24, 10, 52, 23), "once at 2026-11-24 10:52:23 (Europe/Berlin)"),
    ("in an hour", datetime(2026, 11, 24, 11, 7, 23), "once at 2026-11-24 11:07:23 (Europe/Berlin)"),
    ("in 2 weeks", datetime(2026, 12, 8, 10, 7, 23), "once at 2026-12-08 10:07:23 (Europe/Berlin)"),
    ("in 3 days", datetime(2026, 11, 27, 10, 7, 23), "once at 2026-11-27 10:07:23 (Europe/Berlin)"),
    ("once at 2026-11-25 09:00 (Europe/Berlin)", datetime(2026, 11, 25, 9, 0), None),
    ("2026-12-01 17:30", datetime(2026, 12, 1, 17, 30), "once at 2026-12-01 17:30 (Europe/Berlin)"),
    ("on 2026-12-01 at 5pm", datetime(2026, 12, 1, 17, 0), "once at 2026-12-01 17:00 (Europe/Berlin)"),
])
def test_one_shot_forms(spec, at, human):
    s = parse(spec)
    assert (s.kind, s.cron, s.interval_s) == ("once", None, None)
    assert s.at.astimezone(UTC) == at.replace(tzinfo=BERLIN).astimezone(UTC)
    assert s.human == (human or spec)
    assert next_fire_times(s, NOW, BERLIN, 5) == [s.at]
    assert next_fire_times(s, s.at, BERLIN, 5) == []


def test_one_shot_human_round_trips_including_another_zone_and_a_repeated_hour():
    s = parse("once at 2026-11-25 09:00 (America/New_York)")
    assert s.at.astimezone(UTC) == utc(2026, 11, 25, 14, 0)
    late = parse("in 45 minutes", tz=NEW_YORK, now=datetime(2026, 11, 1, 5, 0, tzinfo=UTC))  # 01:00 EDT
    assert late.human == "once at 2026-11-01 01:45 (America/New_York)"
    later = parse("in 105 minutes", tz=NEW_YORK, now=datetime(2026, 11, 1, 5, 0, tzinfo=UTC))
    assert later.at.astimezone(UTC) == utc(2026, 11, 1, 6, 45)  # the second 01:45
    assert later.human == "once at 2026-11-01 01:45-05:00 (America/New_York)"
    for s in (late, later, parse("in 45 minutes")):
        assert parse(s.human, tz=NEW_YORK).at.timestamp() == int(s.at.timestamp())


def test_absolute_time_with_offset_and_past_times_do_not_fire():
    s = parse("2026-11-25T09:00+00:00")
    assert s.at.astimezone(UTC) == utc(2026, 11, 25, 9, 0)
    past = parse("2020-01-01 09:00")  # readable; the caller decides whether a past one-shot is an error
    assert next_fire_time(past, NOW, BERLIN) is None


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("spec, fragment, position, why", [
    ("every 7 parsecs", "parsecs", 8, "not a unit"),
    ("every 5 mintues", "mintues", 8, "did you mean 'minutes'"),
    ("fortnightly", "fortnightly", 0, "not a schedule"),
    ("dialy at 9", "dialy", 0, "did you mean 'daily'"),
    ("0 25 * * *", "25", 2, "hour 25 is out of range 0-23"),
    ("61 * * * *", "61", 0, "minute 61 is out of range 0-59"),
    ("0 9 32 * *", "32", 4, "day of month 32 is out of range 1-31"),
    ("0 9 * 13 *", "13", 6, "month 13 is out of range 1-12"),
    ("0 9 * * 1-8", "8", 10, "day of week 8 is out of range 0-7"),
    ("0 9 * * 1,9", "9", 10, "day of week 9"),
    ("0 9 * * fun", "fun", 8, "day of week must be a number"),
    ("0 9 * foo *", "foo", 6, "month must be a number"),
    ("*/0 * * * *", "0", 2, "step in minute"),
    ("5-1 * * * *", "5-1", 0, "runs backwards"),
    ("0 0 30 2 *", "30", 4, "never"),
    ("*/30 * * * * *", "*", 13, "seconds are not supported"),
    ("0 0 9 * * 1-5", "1-5", 10, "this one has 6"),
    ("0 9 * *", "0 9 * *", 0, "this one has 4"),
    ("every 30 seconds", "30", 6, "more often than once a minute"),
    ("30s", "30s", 0, "more often than once a minute"),
    ("every second", "second", 6, "more often than once a minute"),
    ("every 0 minutes", "0", 6, "positive"),
    ("every -5 minutes", "-5", 6, "positive"),
    ("every 2 weeks", "2", 6, "weeks are not an interval"),
    ("every 45 days", "45", 6, "longer than 31 days"),
    ("every", "every", 5, "expected a number"),
    ("daily at 25:00", "25:00", 9, "the hour must be 0-23"),
    ("daily at 9:75", "9:75", 9, "minutes must be 0-59"),
    ("daily at 13pm", "13pm", 9, "with am or pm"),
    ("daily at teatime", "teatime", 9, "not a time"),
    ("daily at 9am please", "please", 13, "unexpected words"),
    ("weekly on funday", "funday", 10, "not a day of the week"),
    ("today at 09:00", "today", 0, "already passed"),
    ("in", "in", 2, "expected a number"),
    ("in 5 parsecs", "parsecs", 5, "not a unit"),
    ("once at 2026-13-45 09:00", "2026-13-45", 8, "not a date"),
    ("once at 2026-11-25 09:00 (Mars/Olympus)", "(Mars/Olympus)", 25, "unknown time zone"),
])
def test_errors_point_at_what_is_wrong(spec, fragment, position, why):
    with pytest.raises(ScheduleError) as info:
        parse(spec)
    err = info.value
    assert (err.fragment, err.position) == (fragment, position)
    assert why in err.message
    assert spec[position:].startswith(fragment) or position == len(spec.rstrip())
    assert str(err) == f"could not read {fragment!r} in {spec!r}: {err.message}"
    assert "\n" not in str(err)
    parse(err.example)  # the example shown to the user is itself valid


def test_error_message_format_and_type():
    with pytest.raises(ValueError) as info:  # ScheduleError is a ValueError
        parse("every 7 parsecs")
    assert str(info.value) == (
        "could not read 'parsecs' in 'every 7 parsecs': not a unit; use minutes, hours or days")
    with pytest.raises(ScheduleError) as info:
        parse("   ")
    assert str(info.value).startswith("could not read an empty schedule: ")
    with pytest.raises(ValueError):
        parse("daily", now=datetime(2026, 1, 1))  # a naive `now` is a programming error


# ---------------------------------------------------------------- loop intervals (§6)

@pytest.mark.parametrize("text, cron, human, rounded_from, interval_s", [
    ("7m", "*/6 * * * *", "every 6 minutes", "7m", 360),
    ("90m", "0 */2 * * *", "every 2 hours", "90m", 7200),
    ("45s", "* * * * *", "every minute", "45s", 60),
    ("5h", "0 */6 * * *", "every 6 hours", "5h", 21600),
    ("60m", "0 * * * *", "every hour", None, 3600),
    ("24h", "0 0 * * *", "every day at 00:00", None, 86400),
    ("30s", "* * * * *", "every minute", "30s", 60),
    ("2d", "0 0 */2 * *", "every 2 days at 00:00", None, 172800),
    ("15m", "*/15 * * * *", "every 15 minutes", None, 900),
    ("1h", "0 * * * *", "every hour", None, 3600),
    ("1d", "0 0 * * *", "every day at 00:00", None, 86400),
    ("60s", "* * * * *", "every minute", None, 60),
    ("90s", "*/2 * * * *", "every 2 minutes", "90s", 120),
    ("45m", "0 * * * *", "every hour", "45m", 3600),  # 30 and 60 tie: the longer
    ("40m", "*/30 * * * *", "every 30 minutes", "40m", 1800),
    ("59m", "0 * * * *", "every hour", "59m", 3600),
    ("7h", "0 */8 * * *", "every 8 hours", "7h", 28800),
    ("18h", "0 0 * * *", "every day at 00:00", "18h", 86400),
    ("36h", "0 0 */2 * *", "every 2 days at 00:00", "36h", 172800),
    ("1.5h", "0 */2 * * *", "every 2 hours", "1.5h", 7200),
    ("every 2 hours", "0 */2 * * *", "every 2 hours", None, 7200),
    ("every 90 minutes", "0 */2 * * *", "every 2 hours", "every 90 minutes", 7200),
    ("every minute", "* * * * *", "every minute", None, 60),
    ("10 min", "*/10 * * * *", "every 10 minutes", None, 600),
])
def test_loop_interval_rounding(text, cron, human, rounded_from, interval_s):
    s = parse_interval(text)
    assert (s.kind, s.cron, s.human) == ("cron", cron, human)
    assert (s.rounded_from, s.interval_s) == (rounded_from, interval_s)


def test_task_intervals_round_like_loops():
    s = parse("every 7 minutes")
    assert (s.cron, s.human, s.interval_s) == ("*/6 * * * *", "every 6 minutes", 360)
    assert s.rounded_from == "every 7 minutes"
    assert parse("5h").rounded_from == "5h"
    assert parse("every 90 seconds").cron == "*/2 * * * *"


@pytest.mark.parametrize("text, fragment, why", [
    ("5x", "x", "not a unit"), ("0m", "0m", "positive"), ("-5m", "-5m", "positive"), ("", "", "expected"),
    ("five minutes", "five", "expected a number"), ("5 parsecs", "parsecs", "not a unit"),
    ("2w", "2w", "weeks"),
    ("5m now", "now", "unexpected"),
])
def test_loop_interval_errors(text, fragment, why):
    with pytest.raises(ScheduleError) as info:
        parse_interval(text)
    assert info.value.fragment == fragment and why in info.value.message
    parse_interval(info.value.example)


@pytest.mark.parametrize("words, expected", [
    (["5m", "check", "ci"], ("5m", "check ci")),
    (["check", "ci", "every", "2", "hours"], ("every 2 hours", "check ci")),
    (["every", "2", "hours", "check", "ci"], ("every 2 hours", "check ci")),
    (["check", "the", "deploy", "every", "hour"], ("every hour", "check the deploy")),
    (["check", "every", "20m"], ("every 20m", "check")),
    (["45s"], ("45s", "")),
    (["check", "ci"], (None, "check ci")),
    ([], (None, "")),
    (["5x", "check"], ("5x", "check")),  # a typo is handed to parse_interval, which says what is wrong
    (["2fa", "setup"], (None, "2fa setup")),
    (["review", "every", "2", "prs"], (None, "review every 2 prs")),
    (["every", "day"], ("every day", "")),
])
def test_split_loop_args(words, expected):
    assert split_loop_args(words) == expected


# ---------------------------------------------------------------- explain reads intervals as loops do

@pytest.mark.parametrize("spec", [
    "45s", "30s", "every 45 seconds", "every 30 sec", "0.5m", "90s", "7m", "every 7 minutes", "90m",
    "every 90 minutes", "5h", "every 2 hours", "every hour", "every minute", "every day", "36h", "10 min", "60s",
])
def test_explain_gives_the_cron_and_rounded_from_bgctl_loop_picks(spec):
    loop = parse_interval(spec)
    out = explain(spec, now=NOW, tz=BERLIN, count=3)
    assert (out["kind"], out["cron"], out["human"], out["rounded_from"]) == (
        "cron", loop.cron, loop.human, loop.rounded_from)
    assert out["next"] == [t.isoformat() for t in next_fire_times(loop, NOW, BERLIN, 3)]


def test_explain_rounds_seconds_up_to_every_minute_and_says_so():
    out = explain("45s", now=NOW, tz=BERLIN, count=2)
    assert out == {"spec": "45s", "kind": "cron", "cron": "* * * * *", "human": "every minute",
                   "timezone": "Europe/Berlin", "rounded_from": "45s",
                   "next": ["2026-11-24T10:08:00+01:00", "2026-11-24T10:09:00+01:00"]}
    assert explain("every 30 seconds", now=NOW, tz=BERLIN)["rounded_from"] == "every 30 seconds"


@pytest.mark.parametrize("spec", ["45s", "every 30 seconds", "30 sec", "0.5m", "every second"])
def test_task_schedules_still_refuse_sub_minute_intervals(spec):
    with pytest.raises(ScheduleError) as info:
        parse(spec)
    assert "more often than once a minute; the shortest interval is 1 minute" in str(info.value)
    with pytest.raises(ScheduleError) as hover:  # tasks.toml's reading, as bgls shows it
        explain(spec, now=NOW, tz=BERLIN, loop_intervals=False)
    assert str(hover.value) == str(info.value)
    assert parse_schedule(spec, now=NOW, tz=BERLIN, loop_intervals=True).cron == "* * * * *"


def test_explain_still_reads_everything_else_as_the_schedule_language():
    for spec in ("hourly", "daily at 9am", "every weekday at 8am", "every monday at 10:00", "weekly",
                 "0 9 * * 1-5", "tomorrow at 9am", "manual"):
        parsed_ = parse(spec)
        out = explain(spec, now=NOW, tz=BERLIN)
        assert (out["kind"], out["cron"], out["human"]) == (parsed_.kind, parsed_.cron, parsed_.human)
    for spec in ("every 2 weeks", "every 0 minutes", "5x", "every 45 days"):  # loop's errors too
        with pytest.raises(ScheduleError) as loop_error:
            parse_interval(spec)
        with pytest.raises(ScheduleError) as explain_error:
            explain(spec, now=NOW, tz=BERLIN)
        assert str(explain_error.value) == str(loop_error.value)


# ---------------------------------------------------------------- fixed calendar facts

def test_weekday_cron_from_friday_evening_is_monday_morning():
    friday = datetime(2026, 11, 27, 18, 0, tzinfo=BERLIN)
    assert next_fire_time(parse("0 9 * * 1-5"), friday, BERLIN) == datetime(2026, 11, 30, 9, 0, tzinfo=BERLIN)


def test_leap_day_cron_skips_2100():
    s = parse("0 0 29 2 *")
    assert [t.date().isoformat() for t in next_fire_times(s, NOW, BERLIN, 2)] == ["2028-02-29", "2032-02-29"]
    after_2096 = datetime(2096, 3, 1, tzinfo=BERLIN)
    assert next_fire_time(s, after_2096, BERLIN).date().isoformat() == "2104-02-29"


def test_vixie_or_when_both_day_fields_are_restricted():
    start = datetime(2026, 11, 1, tzinfo=BERLIN)
    days = [t.day for t in next_fire_times(parse("0 0 13 * 5"), start, BERLIN, 7)]
    assert days == [6, 13, 20, 27, 4, 11, 13]  # Fridays, and the 13th (a Sunday in December)


def test_vixie_and_when_a_day_field_starts_with_a_star():
    fires = next_fire_times(parse("0 0 */2 * 1"), datetime(2026, 11, 1, tzinfo=BERLIN), BERLIN, 4)
    assert all(t.weekday() == 0 and t.day % 2 == 1 for t in fires)
    assert [t.day for t in fires] == [9, 23, 7, 21]


def test_month_and_day_names():
    fires = next_fire_times(parse("0 0 1 jan,jul *"), NOW, BERLIN, 3)
    assert [(t.year, t.month) for t in fires] == [(2027, 1), (2027, 7), (2028, 1)]
    assert {t.weekday() for t in next_fire_times(parse("0 8 * * sat,sun"), NOW, BERLIN, 6)} == {5, 6}


def test_steps_ranges_and_lists():
    midnight = datetime(2026, 11, 24, 0, 0, tzinfo=BERLIN)
    fires = next_fire_times(parse("10-50/20 8,17 * * *"), midnight, BERLIN, 6)
    assert [(t.hour, t.minute) for t in fires] == [(8, 10), (8, 30), (8, 50), (17, 10), (17, 30), (17, 50)]
    assert [t.minute for t in next_fire_times(parse("5/20 * * * *"), NOW, BERLIN, 3)] == [25, 45, 5]


def test_fires_are_strictly_after_and_in_the_zone():
    s = parse("0 9 * * *")
    at_nine = datetime(2026, 11, 24, 9, 0, tzinfo=BERLIN)
    assert next_fire_time(s, at_nine, BERLIN) == datetime(2026, 11, 25, 9, 0, tzinfo=BERLIN)
    assert next_fire_time(s, at_nine - timedelta(microseconds=1), BERLIN) == at_nine
    got = next_fire_time(s, at_nine.astimezone(UTC), NEW_YORK)
    assert got.tzinfo is NEW_YORK and (got.hour, got.minute) == (9, 0)
    with pytest.raises(ValueError):
        next_fire_time(s, datetime(2026, 1, 1), BERLIN)


def test_previous_fire_times_window_is_half_open():
    s = parse("daily at 09:00")
    before = datetime(2026, 11, 24, 9, 0, tzinfo=BERLIN)
    missed = previous_fire_times(s, before, before - timedelta(days=7), BERLIN)
    assert [t.day for t in missed] == [18, 19, 20, 21, 22, 23, 24]  # the 17th 09:00 is not_before itself
    assert previous_fire_times(parse("manual"), before, before - timedelta(days=7), BERLIN) == []
    once = parse("tomorrow at 9am")
    assert previous_fire_times(once, once.at, NOW, BERLIN) == [once.at]
    assert previous_fire_times(once, once.at - timedelta(seconds=1), NOW, BERLIN) == []
    every_minute = previous_fire_times(parse("* * * * *"), before, before - timedelta(days=7), BERLIN)
    assert len(every_minute) == 7 * 24 * 60


# ---------------------------------------------------------------- daylight saving

def test_daily_0230_on_spring_forward_fires_right_after_the_gap_berlin():
    fires = next_fire_times(parse("daily at 02:30"), datetime(2026, 3, 27, 12, tzinfo=BERLIN), BERLIN, 3)
    assert [t.isoformat() for t in fires] == [
        "2026-03-28T02:30:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]


def test_daily_0230_on_fall_back_fires_once_at_the_first_occurrence_berlin():
    fires = fires_utc(parse("daily at 02:30"), datetime(2026, 10, 24, 12, tzinfo=BERLIN), BERLIN, 3)
    assert fires == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30), utc(2026, 10, 27, 1, 30)]


def test_0130_in_new_york_on_fall_back_fires_once():
    fires = fires_utc(parse("30 1 * * *", NEW_YORK), datetime(2026, 10, 31, 12, tzinfo=NEW_YORK), NEW_YORK, 3)
    assert fires == [utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30), utc(2026, 11, 3, 6, 30)]


def test_new_york_spring_forward_0230():
    eve = datetime(2026, 3, 7, 12, tzinfo=NEW_YORK)
    fires = next_fire_times(parse("30 2 * * *", NEW_YORK), eve, NEW_YORK, 2)
    assert [t.isoformat() for t in fires] == ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"]


@pytest.mark.parametrize("tz, start", [
    (BERLIN, datetime(2026, 3, 29, 0, 30, tzinfo=UTC)),  # spring forward at 01:00 UTC
    (BERLIN, datetime(2026, 10, 25, 0, 0, tzinfo=UTC)),  # fall back at 01:00 UTC
    (NEW_YORK, datetime(2026, 3, 8, 6, 0, tzinfo=UTC)),
    (NEW_YORK, datetime(2026, 11, 1, 5, 0, tzinfo=UTC)),
])
def test_every_15_minutes_keeps_real_spacing_across_dst(tz, start):
    fires = next_fire_times(parse("every 15 minutes", tz), start, tz, 12)
    assert gaps(fires) == {900.0}
    assert all(t.minute % 15 == 0 and t.second == 0 for t in fires)


def test_hourly_across_dst_in_new_york():
    hourly = parse("hourly", NEW_YORK)
    fall = fires_utc(hourly, datetime(2026, 11, 1, 3, 30, tzinfo=UTC), NEW_YORK, 4)  # 23:30 EDT
    assert fall == [utc(2026, 11, 1, 4), utc(2026, 11, 1, 5), utc(2026, 11, 1, 6), utc(2026, 11, 1, 7)]
    assert [t.astimezone(NEW_YORK).strftime("%H:%M%z") for t in fall] == [
        "00:00-0400", "01:00-0400", "01:00-0500", "02:00-0500"]
    spring = next_fire_times(hourly, datetime(2026, 3, 8, 5, 30, tzinfo=UTC), NEW_YORK, 3)  # 00:30 EST
    assert [t.strftime("%H:%M%z") for t in spring] == ["01:00-0500", "03:00-0400", "04:00-0400"]


def test_plain_hourly_cron_is_wall_clock_and_skips_the_repeated_hour():
    # `0 * * * *` written as cron follows the wall clock; `hourly` is an interval (test above).
    fires = fires_utc(parse("0 * * * *", NEW_YORK), datetime(2026, 11, 1, 4, 30, tzinfo=UTC), NEW_YORK, 2)
    assert fires == [utc(2026, 11, 1, 5), utc(2026, 11, 1, 7)]


def test_cron_every_15_minutes_collapses_the_skipped_hour_into_one_fire():
    fires = next_fire_times(parse("*/15 * * * *"), datetime(2026, 3, 29, 1, 40, tzinfo=BERLIN), BERLIN, 3)
    assert [t.isoformat() for t in fires] == [
        "2026-03-29T01:45:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T03:15:00+02:00"]


def test_every_2_hours_is_always_7200_seconds_apart():
    fires = next_fire_times(parse("every 2 hours"), datetime(2026, 3, 28, 12, tzinfo=BERLIN), BERLIN, 30)
    assert gaps(fires) == {7200.0}
    winter, summer = fires[0], fires[-1]
    assert winter.hour % 2 == 0 and summer.hour % 2 == 1  # the slots stay put; the wall clock moves


def test_lord_howe_half_hour_shift():
    eve = datetime(2026, 10, 3, 12, tzinfo=LORD_HOWE)
    spring = next_fire_time(parse("15 2 * * *", LORD_HOWE), eve, LORD_HOWE)
    assert spring.isoformat() == "2026-10-04T02:30:00+11:00"
    fall = fires_utc(parse("45 1 * * *", LORD_HOWE), datetime(2026, 4, 4, 12, tzinfo=LORD_HOWE), LORD_HOWE, 2)
    assert fall == [utc(2026, 4, 4, 14, 45), utc(2026, 4, 5, 15, 15)]


def test_midnight_gap_in_sao_paulo_2018():
    sp = ZoneInfo("America/Sao_Paulo")
    fire = next_fire_time(parse("0 0 * * *", sp), datetime(2018, 11, 3, 12, tzinfo=sp), sp)
    assert fire.isoformat() == "2018-11-04T01:00:00-02:00"


def test_one_shots_across_dst():
    eve = datetime(2026, 3, 28, 20, 0, tzinfo=BERLIN)
    assert parse("tomorrow at 02:30", now=eve).at.isoformat() == "2026-03-29T03:00:00+02:00"
    late = parse("in 2 hours", now=datetime(2026, 10, 25, 1, 30, tzinfo=BERLIN))
    assert late.at.timestamp() - datetime(2026, 10, 25, 1, 30, tzinfo=BERLIN).timestamp() == 7200


# ---------------------------------------------------------------- jitter (§6)

def test_jitter_is_deterministic_and_bounded():
    daily, quarter, weekly = parse("daily"), parse("every 15 minutes"), parse("*/5 * * * *")
    ids = [f"task{i:04d}" for i in range(200)]
    late = [jitter_seconds(i, daily, recurring=True) for i in ids]
    assert late == [jitter_seconds(i, daily, recurring=True) for i in ids]
    assert all(0 <= j <= 900 for j in late) and len(set(late)) > 100
    assert all(0 <= jitter_seconds(i, quarter, recurring=True) <= 90 for i in ids)
    assert all(0 <= jitter_seconds(i, weekly, recurring=True) <= 30 for i in ids)
    assert max(jitter_seconds(i, parse("0 9,10 * * *"), recurring=True) for i in ids) <= 360


def test_jitter_for_one_shots_is_early_only_on_the_hour_or_half_hour():
    ids = [f"r{i}" for i in range(100)]
    pinned = parse("tomorrow at 9am")
    early = [jitter_seconds(i, pinned, recurring=False) for i in ids]
    assert all(-90 <= j <= 0 for j in early) and min(early) < -45
    assert {jitter_seconds(i, parse("tomorrow at 9:07"), recurring=False) for i in ids} == {0}
    assert {jitter_seconds(i, parse("in 45 minutes"), recurring=False) for i in ids} == {0}
    assert all(-90 <= jitter_seconds(i, parse("30 14 * * *"), recurring=False) <= 0 for i in ids)
    assert {jitter_seconds(i, parse("17 14 * * *"), recurring=False) for i in ids} == {0}


def test_jitter_disabled():
    for s in (parse("daily"), parse("tomorrow at 9am"), parse("manual")):
        assert jitter_seconds("abc", s, recurring=s.kind == "cron", max_fraction=0) == 0
    assert jitter_seconds("abc", parse("manual"), recurring=True) == 0
    assert jitter_seconds("abc", parse("tomorrow at 9am"), recurring=False, early_s=0) == 0


# ---------------------------------------------------------------- explain (§3) and remind

def test_explain_is_exactly_the_spec_json():
    out = explain("every 7 minutes", now=NOW, tz=BERLIN, count=3)
    assert list(out) == ["spec", "kind", "cron", "human", "timezone", "rounded_from", "next"]
    assert out == {
        "spec": "every 7 minutes", "kind": "cron", "cron": "*/6 * * * *", "human": "every 6 minutes",
        "timezone": "Europe/Berlin", "rounded_from": "every 7 minutes",
        "next": ["2026-11-24T10:12:00+01:00", "2026-11-24T10:18:00+01:00", "2026-11-24T10:24:00+01:00"],
    }
    assert json.loads(json.dumps(out)) == out
    once = explain("tomorrow at 9am", now=NOW, tz=NEW_YORK)
    assert (once["kind"], once["cron"], once["next"]) == ("once", None, ["2026-11-25T09:00:00-05:00"])
    assert explain("manual", now=NOW, tz=BERLIN)["next"] == []
    assert len(explain("0 9 * * 1-5", now=NOW, tz=BERLIN)["next"]) == 5
    with pytest.raises(ScheduleError):
        explain("every 7 parsecs", now=NOW, tz=BERLIN)


@pytest.mark.parametrize("text, when, what, at", [
    ("in 45 minutes push the release branch", "in 45 minutes", "push the release branch",
     datetime(2026, 11, 24, 10, 52, 23)),
    ("at 15:00 deploy the docs", "at 15:00", "deploy the docs", datetime(2026, 11, 24, 15, 0)),
    ("at 9am write the standup", "at 9am", "write the standup", datetime(2026, 11, 25, 9, 0)),
    ("tomorrow at 9am look at  CI", "tomorrow at 9am", "look at  CI", datetime(2026, 11, 25, 9, 0)),
    ("push the branch in 2 hours", "in 2 hours", "push the branch", datetime(2026, 11, 24, 12, 7, 23)),
    ("check in on the deploy at 3pm", "at 3pm", "check in on the deploy", datetime(2026, 11, 24, 15, 0)),
    ("in the repo, run tests tomorrow", "tomorrow", "in the repo, run tests", datetime(2026, 11, 25, 9, 0)),
])
def test_parse_when_and_what(text, when, what, at):
    s, prompt = parse_when_and_what(text, now=NOW, tz=BERLIN)
    assert (s.kind, s.spec, prompt) == ("once", when, what)
    assert s.at.astimezone(UTC) == at.replace(tzinfo=BERLIN).astimezone(UTC)


@pytest.mark.parametrize("text, why", [
    ("push the release branch", "say when"), ("in 45 minutes", "nothing to be reminded of"),
    ("in 5 parsecs do it", "not a unit"), ("", "say when"),
])
def test_parse_when_and_what_errors(text, why):
    with pytest.raises(ScheduleError) as info:
        parse_when_and_what(text, now=NOW, tz=BERLIN)
    assert why in info.value.message
    parse_when_and_what(info.value.example, now=NOW, tz=BERLIN)


# ---------------------------------------------------------------- speed

# The speed of next_fire_time (well under a millisecond) is measured by bench/bench_schedule.py.


# ---------------------------------------------------------------- properties against an independent oracle

EXAMPLES = int(os.environ.get("SCHEDULE_EXAMPLES", "100"))  # raise it for a long soak
ZONES = [ZoneInfo(z) for z in ("Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "UTC",
                               "Asia/Kolkata", "America/Sao_Paulo", "Pacific/Chatham", "Europe/Dublin",
                               "Asia/Kathmandu")]
NAMES = {n: i for i, n in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
NAMES |= {n: i + 1 for i, n in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep",
                                         "oct", "nov", "dec"))}


def _transitions(tz: ZoneInfo) -> list[int]:
    """UTC timestamps where the zone's offset changes, 2016-2030, found by day steps and bisection."""
    found, t, end = [], int(utc(2016, 1, 1).timestamp()), int(utc(2030, 1, 1).timestamp())
    offset = lambda ts: datetime.fromtimestamp(ts, tz).utcoffset()  # noqa: E731
    while t < end:
        if offset(t) != offset(t + 86400):
            lo, hi = t, t + 86400
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if offset(mid) == offset(lo) else (lo, mid)
            found.append(hi)
        t += 86400
    return found


TRANSITIONS = {tz.key: _transitions(tz) for tz in ZONES}


def oracle_field(text: str, lo: int, hi: int) -> set[int]:
    out: set[int] = set()
    for item in text.split(","):
        rng, _, step = item.partition("/")
        if rng == "*":
            a, b = lo, hi
        elif "-" in rng:
            a, b = (NAMES[x] if x in NAMES else int(x) for x in rng.split("-"))
        else:
            a = NAMES[rng] if rng in NAMES else int(rng)
            b = hi if step else a
        out |= set(range(a, b + 1, int(step or 1)))
    return out


def oracle_matcher(cron: str):
    f = cron.split()
    mins, hours, doms, months = (oracle_field(f[i], lo, hi)
                                 for i, lo, hi in ((0, 0, 59), (1, 0, 23), (2, 1, 31), (3, 1, 12)))
    dows = {d % 7 for d in oracle_field(f[4], 0, 6 if f[4].startswith("*") else 7)}
    either = not f[2].startswith("*") and not f[4].startswith("*")

    def matches(w: datetime) -> bool:
        dom, dow = w.day in doms, (w.weekday() + 1) % 7 in dows
        day = (dom or dow) if either else (dom and dow)
        return w.minute in mins and w.hour in hours and w.month in months and day

    return matches


def oracle_fires(cron: str, after: float, end: float, tz: ZoneInfo) -> list[int]:
    """Walk UTC minute by minute: a minute fires if its wall time matches and is not the second
    occurrence of a repeated time, or if the wall clock just jumped over a matching time."""
    matches = oracle_matcher(cron)
    t = (int(after) // 60 + 1) * 60
    prev = datetime.fromtimestamp(t - 60, tz).replace(tzinfo=None)
    out = []
    while t <= end:
        local = datetime.fromtimestamp(t, tz)
        wall = local.replace(tzinfo=None)
        fire = matches(wall) and local.fold == 0
        skipped = prev + timedelta(minutes=1)
        while not fire and skipped < wall:
            fire = matches(skipped)
            skipped += timedelta(minutes=1)
        if fire:
            out.append(t)
        prev, t = wall, t + 60
    return out


def field(lo: int, hi: int, names: list[str] = ()) -> st.SearchStrategy[str]:
    value = st.integers(lo, hi).map(str)
    if names:
        value = value | st.sampled_from(names)
    pair = st.tuples(st.integers(lo, hi), st.integers(lo, hi)).map(sorted)
    return st.one_of(
        st.just("*"),
        st.integers(1, hi - lo).map(lambda n: f"*/{n}"),
        value,
        pair.map(lambda p: f"{p[0]}-{p[1]}"),
        st.tuples(pair, st.integers(1, 9)).map(lambda p: f"{p[0][0]}-{p[0][1]}/{p[1]}"),
        st.lists(st.integers(lo, hi).map(str), min_size=2, max_size=4).map(",".join),
    )


CRONS = st.tuples(
    field(0, 59), field(0, 23), st.just("*") | field(1, 31),
    st.just("*") | field(1, 12, ["jan", "mar", "oct", "nov"]),
    st.just("*") | field(0, 7, ["mon", "sun", "fri"]) | st.just("mon-fri"),
).map(" ".join)


@st.composite
def zone_and_instant(draw):
    tz = draw(st.sampled_from(ZONES))
    near = TRANSITIONS[tz.key]
    if near and draw(st.booleans()):
        ts = draw(st.sampled_from(near)) + draw(st.integers(-2 * 86400, 3600))
    else:
        ts = draw(st.integers(int(utc(2000, 1, 1).timestamp()), int(utc(2040, 1, 1).timestamp())))
    return tz, datetime.fromtimestamp(ts + draw(st.integers(0, 59)) / 60, tz)


def parsed(cron: str) -> Schedule:
    try:
        return parse(cron)
    except ScheduleError:
        assume(False)


@settings(max_examples=EXAMPLES * 4, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(cron=CRONS, where=zone_and_instant())
def test_fire_times_match_a_brute_force_oracle(cron, where):
    tz, after = where
    schedule = parsed(cron)
    window_end = after.timestamp() + 2 * 86400
    expected = oracle_fires(cron, after.timestamp(), window_end, tz)
    got = [int(t.timestamp()) for t in next_fire_times(schedule, after, tz, len(expected) + 1)]
    assert got[:len(expected)] == expected
    assert len(got) == len(expected) + 1 and got[-1] > window_end


@settings(max_examples=EXAMPLES * 3, deadline=None, database=None)
@given(cron=CRONS, where=zone_and_instant())
def test_cron_fire_time_properties(cron, where):
    tz, after = where
    schedule = parsed(cron)
    matches = oracle_matcher(cron)
    fires = next_fire_times(schedule, after, tz, 40)
    stamps = [t.timestamp() for t in fires]
    assert stamps == sorted(set(stamps)) and (not stamps or stamps[0] > after.timestamp())
    for t in fires:
        assert t.tzinfo is tz and t.fold == 0 and t.second == 0  # never the second pass of a repeated hour
        just_before = datetime.fromtimestamp(t.timestamp() - 60, tz)
        jumped = just_before.utcoffset() < t.utcoffset()
        assert matches(t.replace(tzinfo=None)) or jumped  # else the first instant after a skipped gap
    renormalized = parse(schedule.cron)  # the normalized cron means the same thing
    assert renormalized.cron == schedule.cron
    assert [t.timestamp() for t in next_fire_times(renormalized, after, tz, 40)] == stamps
    # chaining one fire at a time gives the same list: what the daemon does
    chained, cursor = [], after
    for _ in range(min(len(fires), 10)):
        cursor = next_fire_time(schedule, cursor, tz)
        chained.append(cursor.timestamp())
    assert chained == stamps[:len(chained)]
    if len(fires) >= 3:
        window = previous_fire_times(schedule, fires[2], fires[0], tz)
        assert [t.timestamp() for t in window] == stamps[1:3]


@settings(max_examples=EXAMPLES * 2, deadline=None, database=None)
@given(interval=st.sampled_from(["1m", "5m", "15m", "30m", "1h", "2h", "3h", "6h", "12h"]),
       where=zone_and_instant())
def test_interval_schedules_keep_real_spacing(interval, where):
    tz, after = where
    schedule = parse_interval(interval)
    fires = next_fire_times(schedule, after, tz, 30)
    assert gaps(fires) == {float(schedule.interval_s)}
    assert fires[0].timestamp() > after.timestamp()
    assert fires[0].timestamp() - after.timestamp() <= schedule.interval_s
    for t in fires:
        standard = t.utcoffset() - t.dst()
        assert (t.timestamp() + standard.total_seconds()) % schedule.interval_s == 0


_AMOUNT_WORDS = st.one_of(
    st.integers(-1, 50000).map(str), st.sampled_from(["0.5", "1.5", "0.01", "2.25", "59.9"]))
_UNIT_WORDS = st.sampled_from(["s", "sec", "seconds", "second", "m", "min", "mins", "minute", "minutes", "h",
                               "hr", "hours", "hour", "d", "day", "days", "w", "weeks", "x", "parsecs", "mon"])


@st.composite
def loop_command_lines(draw) -> list[str]:
    """The words after `bgctl loop`: an interval (well or badly written) leading or trailing a prompt."""
    amount, unit = draw(_AMOUNT_WORDS), draw(_UNIT_WORDS)
    interval = draw(st.sampled_from([[amount + unit], [amount, unit], [unit]]))
    if draw(st.booleans()):
        interval = ["every", *interval]
    prompt = draw(st.sampled_from([[], ["check", "ci"], ["say", "hi"]]))
    return interval + prompt if draw(st.booleans()) else prompt + interval


@settings(max_examples=EXAMPLES * 4, deadline=None, database=None)
@given(words=loop_command_lines())
def test_any_interval_bgctl_loop_reads_explain_reads_the_same(words):
    interval, _ = split_loop_args(words)
    assume(interval is not None)
    try:
        loop = parse_interval(interval)
    except ScheduleError as error:
        with pytest.raises(ScheduleError) as explained:
            parse_schedule(interval, now=NOW, tz=BERLIN, loop_intervals=True)
        got = explained.value
        assert (got.message, got.fragment, got.position, got.example) == (
            error.message, error.fragment, error.position, error.example)
    else:
        assert parse_schedule(interval, now=NOW, tz=BERLIN, loop_intervals=True) == loop
        out = explain(interval, now=NOW, tz=BERLIN, count=1)
        assert (out["cron"], out["rounded_from"]) == (loop.cron, loop.rounded_from)


# -- the daemon's fast paths give the same answers -------------------------------------------------

FAST_ZONES = [UTC, BERLIN, NEW_YORK, LORD_HOWE, ZoneInfo("Asia/Kolkata"), ZoneInfo("Pacific/Chatham")]
FAST_CRONS = ["* * * * *", "*/7 * * * *", "30 1 * * *", "30 2 * * *", "0 0 29 2 *", "15 3 * * 0", "0 9 * * 1-5",
         "*/20 1-3 * * *", "0 2 * 3,10 0", "45 1 * * *", "every 5 minutes", "every 90 minutes", "hourly"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=st.sampled_from(FAST_CRONS), tz=st.sampled_from(FAST_ZONES),
       after=st.floats(min_value=1.7e9, max_value=1.95e9, allow_nan=False))
def test_next_fire_ts_is_the_first_of_next_fire_times(spec, tz, after):
    # An instant a datetime holds (whole microseconds): next_fire_ts takes `after` exactly, where a
    # datetime would round 1949999999.9999998 up to the minute and skip that fire.
    after = datetime.fromtimestamp(after, UTC).timestamp()
    schedule = parse(spec, tz)
    expected = next_fire_times(schedule, datetime.fromtimestamp(after, UTC), tz, 1)
    got = next_fire_ts(schedule, after, tz)
    assert got == (expected[0].timestamp() if expected else None)


def test_next_fire_ts_across_the_transitions():
    # Spring forward and fall back in Berlin and New York, Lord Howe's half hour, every minute around them.
    for tz, start in ((BERLIN, utc(2026, 3, 29, 0, 30)), (BERLIN, utc(2026, 10, 25, 0, 0)),
                      (NEW_YORK, utc(2026, 3, 8, 6, 30)), (NEW_YORK, utc(2026, 11, 1, 5, 0)),
                      (LORD_HOWE, utc(2026, 4, 4, 14, 0))):
        for spec in ("* * * * *", "30 2 * * *", "30 1 * * *", "*/20 1-3 * * *"):
            schedule = parse(spec, tz)
            for minute in range(0, 240, 7):
                after = start.timestamp() + minute * 60 + 13
                expected = next_fire_times(schedule, datetime.fromtimestamp(after, UTC), tz, 1)
                assert next_fire_ts(schedule, after, tz) == expected[0].timestamp()


def test_a_reading_that_does_not_depend_on_now_is_kept():
    assert parse("0 9 * * 1-5") is parse("0 9 * * 1-5", NEW_YORK, NOW + timedelta(days=3))
    assert parse("every 5 minutes") is parse("every 5 minutes")
    # A one-shot depends on now and the zone: read each time.
    first = parse("in 45 minutes")
    later = parse("in 45 minutes", now=NOW + timedelta(hours=1))
    assert first is not later and later.at - first.at == timedelta(hours=1)
    assert parse("tomorrow at 9:00", NEW_YORK).at != parse("tomorrow at 9:00", BERLIN).at
    # Errors are raised each time, with their words.
    for _ in range(2):
        with pytest.raises(ScheduleError):
            parse("every 0 minutes")
