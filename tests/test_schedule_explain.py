"""`bgctl schedule explain` (SPEC §3): its JSON, checked against dateutil's rrule, and its errors."""

from __future__ import annotations

import json
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from dateutil import rrule

NEW_YORK = ZoneInfo("America/New_York")


def explain(bgd, *args):
    result = bgd.ctl("schedule", "explain", "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_json_of_spec_3_matches_rrule_across_a_dst_change(running_bgd):
    # New York springs forward on 2026-03-08; --from without an offset is a wall time in --tz.
    out = explain(running_bgd, "--next", "10", "--tz", "America/New_York", "--from", "2026-03-05T12:00",
                  "weekdays", "at", "9:30")
    assert set(out) == {"spec", "kind", "cron", "human", "timezone", "rounded_from", "next"}
    assert (out["spec"], out["kind"], out["cron"], out["timezone"], out["rounded_from"]) == (
        "weekdays at 9:30", "cron", "30 9 * * 1-5", "America/New_York", None)
    start = datetime(2026, 3, 5, 12, tzinfo=NEW_YORK)
    expected = list(rrule.rrule(rrule.DAILY, dtstart=start.replace(hour=9, minute=30), byweekday=range(5),
                                count=11))[1:]  # the 5th at 09:30 is before --from
    assert [datetime.fromisoformat(t) for t in out["next"]] == expected
    assert out["next"][0] == "2026-03-06T09:30:00-05:00" and out["next"][2] == "2026-03-10T09:30:00-04:00"


def test_vixie_cron_and_rounding(running_bgd):
    out = explain(running_bgd, "--next", "6", "--tz", "UTC", "--from", "2026-06-01T00:00:00+00:00", "0 9 13 * 5")
    start = datetime.fromisoformat("2026-06-01T00:00:00+00:00")
    union = rrule.rruleset()
    union.rrule(rrule.rrule(rrule.MONTHLY, dtstart=start, bymonthday=13, byhour=9, byminute=0, bysecond=0))
    union.rrule(rrule.rrule(rrule.WEEKLY, dtstart=start, byweekday=rrule.FR, byhour=9, byminute=0, bysecond=0))
    assert [datetime.fromisoformat(t) for t in out["next"]] == list(union)[:6]
    rounded = explain(running_bgd, "--tz", "UTC", "every", "7", "minutes")
    assert (rounded["cron"], rounded["rounded_from"]) == ("*/6 * * * *", "every 7 minutes")
    manual = explain(running_bgd, "manual")
    assert (manual["kind"], manual["cron"], manual["next"]) == ("manual", None, [])


def test_explain_shows_the_cron_and_rounding_bgctl_loop_picks(running_bgd):
    bgd = running_bgd
    first = bgd.ctl_json("loop", "45s", "say hello")
    loops = [("45s", first)]
    for spec, words in (("7m", ["7m", "say", "hi"]), ("every 90 minutes", ["say", "hi", "every", "90", "minutes"]),
                        ("every 30 seconds", ["say", "hi", "every", "30", "seconds"])):
        loops.append((spec, bgd.ctl_json("loop", "--session", first["session"], *words)))
    for spec, loop in loops:
        out = explain(bgd, *spec.split())
        assert (out["spec"], out["kind"]) == (spec, "cron")
        assert (out["cron"], out["human"], out["rounded_from"]) == (loop["cron"], loop["human"], loop["rounded_from"])
    assert (first["cron"], first["rounded_from"]) == ("* * * * *", "45s")
    text = bgd.ctl("schedule", "explain", "45s")
    assert text.returncode == 0 and text.stdout.splitlines()[0] == "every minute"
    assert "  rounded from '45s'" in text.stdout.splitlines()


def test_a_task_schedule_under_a_minute_is_still_refused(running_bgd):
    result = running_bgd.ctl("task", "add", "too-often", "--schedule", "45s", "say", "hi")
    assert result.returncode == 2 and result.stdout == ""
    assert "more often than once a minute; the shortest interval is 1 minute" in result.stderr.splitlines()[0]
    assert result.stderr.splitlines()[-1] == "example: every minute"
    assert not (running_bgd.config_dir / "tasks.toml").exists() or "too-often" not in (
        running_bgd.config_dir / "tasks.toml").read_text()


@pytest.mark.parametrize("spec, caret, example", [
    ("every 7 parsecs", "          ^^^^^^^", "example: every 15 minutes"),
    ("0 9 * * 8", "          ^", "example: 30 9 * * 1-5"),
])
def test_a_bad_spec_exits_2_pointing_at_the_part_it_could_not_read(running_bgd, spec, caret, example):
    result = running_bgd.ctl("schedule", "explain", *spec.split())
    assert result.returncode == 2 and result.stdout == ""
    first, shown, pointer, hint = result.stderr.splitlines()
    assert first.startswith("bgctl: could not read") and shown == f"  {spec}"
    assert (pointer, hint) == (caret, example)


def test_text_output_and_usage_errors(running_bgd):
    out = running_bgd.ctl("schedule", "explain", "--tz", "Europe/Berlin", "-n", "2", "daily", "at", "9am").stdout
    assert out.splitlines()[0] == "at 09:00 every day" and "Europe/Berlin" in out
    bad_zone = running_bgd.ctl("schedule", "explain", "--tz", "Mars/Base", "hourly")
    assert bad_zone.returncode == 2 and "unknown time zone" in bad_zone.stderr
    assert running_bgd.ctl("schedule", "explain").returncode == 2


def test_options_may_follow_the_spec_words_as_spec_3_writes_them(running_bgd):
    got = running_bgd.ctl_json("schedule", "explain", "weekdays", "at", "9:30", "--next", "3", "--tz", "Europe/Berlin")
    assert got["spec"] == "weekdays at 9:30" and got["cron"] == "30 9 * * 1-5" and len(got["next"]) == 3
    assert got["timezone"] == "Europe/Berlin"
