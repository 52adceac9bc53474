"""The schedule language of SPEC §6 and §7: parse it, explain it, compute its fire times.

Pure: no clock reads, no I/O, no trio. `now` and the zone are always parameters, so a week of
schedules is tested in milliseconds. docs/schedules.md is the user-facing description of these rules.

Fire times are computed on POSIX timestamps, never by comparing or subtracting aware datetimes:
Python compares two datetimes that share a tzinfo by wall clock and ignores `fold`, which is wrong
exactly in the repeated hour this module has to get right. The 5-field cron itself (compiling,
normalizing, describing) is bgcore/cron.py; this module turns its wall-clock minutes into instants.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import math
import re
from bisect import bisect_left
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from typing import Iterator, NamedTuple, NoReturn
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .cron import DAY_NAMES, Cron, CronError, compile_cron, describe

__all__ = [
    "Schedule", "ScheduleError", "explain", "jitter_seconds", "next_fire_time", "next_fire_times", "next_fire_ts",
    "parse_interval", "parse_schedule", "parse_when_and_what", "previous_fire_times", "split_loop_args",
]


class ScheduleError(ValueError):
    """A schedule the user wrote that cannot be read; `str()` is one line for `bgctl: ...`."""

    def __init__(self, message: str, *, spec: str, fragment: str, position: int | None, example: str):
        self.message = message
        self.spec = spec
        self.fragment = fragment
        self.position = position
        self.example = example
        super().__init__(str(self))

    def __str__(self) -> str:
        if not self.spec.strip():
            return f"could not read an empty schedule: {self.message}"
        return f"could not read {self.fragment!r} in {self.spec!r}: {self.message}"


@dataclass(frozen=True)
class Schedule:
    spec: str
    kind: str  # "cron" | "once" | "manual"
    cron: str | None
    at: datetime | None
    human: str
    rounded_from: str | None = None
    interval_s: int | None = None


_DAY = timedelta(days=1)
_UNITS = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), "s"),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), "m"),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), "h"),
    **dict.fromkeys(("d", "day", "days"), "d"),
    **dict.fromkeys(("w", "wk", "wks", "week", "weeks"), "w"),
}
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_MINUTE_STEPS = (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60)  # minutes that divide an hour
_HOUR_STEPS = (1, 2, 3, 4, 6, 8, 12, 24)  # hours that divide a day
_WEEKDAY_WORDS = {**{n[:3].lower(): i for i, n in enumerate(DAY_NAMES)},
                  **{n.lower(): i for i, n in enumerate(DAY_NAMES)},
                  "tues": 2, "weds": 3, "thur": 4, "thurs": 4}
_VOCABULARY = ("manual", "hourly", "daily", "weekdays", "weekends", "weekly", "every", "at", "in",
               "tomorrow", "today", "once")
_TIME_RE = re.compile(r"(\d{1,2})(?::(\d{2}))?(am|pm|a\.m\.|p\.m\.)?")
_AMOUNT_RE = re.compile(r"(-?\d+(?:\.\d+)?)([a-z]*)")
_LOOP_TOKEN_RE = re.compile(r"\d+(?:\.\d+)?([a-z]+)")

_EX_INTERVAL = "every 15 minutes"
_EX_ONCE = "tomorrow at 9am"
_EX_ANY = "daily at 09:00"


# ---------------------------------------------------------------- reading words

_WORD_RE = re.compile(r"\S+")


class _Word(NamedTuple):  # a tuple: made for every word of every spec read (10,000 tasks at start)
    text: str  # lower-cased
    raw: str
    pos: int


class _Reader:
    """The words of one spec, with errors that point into it."""

    def __init__(self, spec: str, words: list[_Word] | None = None):
        self.spec = spec
        self.words = words if words is not None else [
            _Word(m[0].lower(), m[0], m.start()) for m in _WORD_RE.finditer(spec)]
        self.i = 0

    def peek(self) -> _Word | None:
        return self.words[self.i] if self.i < len(self.words) else None

    def take(self, what: str, example: str) -> _Word:
        word = self.peek()
        if word is None:
            self.fail(f"expected {what} at the end", None, example)
        self.i += 1
        return word

    def accept(self, *texts: str) -> bool:
        if self.peek() is not None and self.peek().text in texts:
            self.i += 1
            return True
        return False

    def finish(self, example: str) -> None:
        if self.peek() is not None:
            self.fail("unexpected words after a complete schedule", self.peek(), example,
                      to_end=True)

    def fail(self, message: str, word: _Word | None, example: str, *, to_end: bool = False) -> NoReturn:
        if word is None:  # something is missing: point just past the end
            raise ScheduleError(message, spec=self.spec, fragment=self.spec.strip(),
                                position=len(self.spec.rstrip()), example=example)
        fragment = self.spec[word.pos:].rstrip() if to_end else word.raw
        raise ScheduleError(message, spec=self.spec, fragment=fragment, position=word.pos, example=example)


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _is_time_word(text: str) -> bool:
    m = _TIME_RE.fullmatch(text)
    return text in ("noon", "midday", "midnight") or bool(m and (m[2] or m[3]))


def _read_time(r: _Reader, example: str) -> time:
    word = r.take("a time such as 09:00 or 9am", example)
    if word.text in ("noon", "midday"):
        return time(12)
    if word.text == "midnight":
        return time(0)
    m = _TIME_RE.fullmatch(word.text)
    if not m:
        r.fail("not a time; write it as 09:00, 9:30 or 9am", word, example)
    hour, minute, meridiem = int(m[1]), int(m[2] or 0), m[3]
    if meridiem is None and r.peek() is not None and r.peek().text in ("am", "pm", "a.m.", "p.m."):
        meridiem = r.take("am or pm", example).text
    if meridiem:
        if not 1 <= hour <= 12:
            r.fail("with am or pm the hour must be 1-12", word, example)
        hour = hour % 12 + (12 if meridiem.startswith("p") else 0)
    elif hour > 23:
        r.fail("the hour must be 0-23", word, example)
    if minute > 59:
        r.fail("the minutes must be 0-59", word, example)
    return time(hour, minute)


def _weekday(text: str) -> int | None:
    return _WEEKDAY_WORDS.get(text, _WEEKDAY_WORDS.get(text[:-1]) if text.endswith("s") else None)


def _read_amount(r: _Reader, example: str, *, bare_unit: bool) -> tuple[float, str, _Word]:
    """`15 minutes`, `15m`, `an hour`, or (with bare_unit) `hour` -> (count, unit letter, count word)."""
    word = r.take("a number and a unit such as 15 minutes", example)
    if bare_unit and word.text in _UNITS:
        return 1.0, _UNITS[word.text], word
    if word.text in ("a", "an", "one"):
        count, unit_word = 1.0, None
    elif m := _AMOUNT_RE.fullmatch(word.text):
        count = float(m[1])
        # `5x`: point at the unit inside the word
        unit_word = _Word(m[2], word.raw[len(m[1]):], word.pos + len(m[1])) if m[2] else None
    else:
        r.fail("expected a number such as 15" + _suggest(word.text, _UNITS), word, example)
    if unit_word is None:
        unit_word = r.take("a unit (minutes, hours or days)", example)
    if unit_word.text not in _UNITS:
        why = "not a unit; use minutes, hours or days" + _suggest(unit_word.text, _UNITS)
        r.fail(why, unit_word, example)
    if count <= 0:
        r.fail("the interval must be positive", word, example)
    return count, _UNITS[unit_word.text], word


# ---------------------------------------------------------------- intervals

def _nearest(value: float, steps: tuple[int, ...]) -> int:
    return min(steps, key=lambda s: (abs(s - value), -s))  # a tie goes to the longer step


def _interval(spec: str, seconds: float) -> Schedule:
    """§6: an interval as cron, rounded to a clean one (minutes dividing 60, hours dividing 24)."""
    minutes = math.ceil(seconds / 60)
    if minutes < 60:
        minutes = _nearest(minutes, _MINUTE_STEPS)
    if minutes < 24 * 60:
        hours = 0 if minutes < 60 else _nearest(minutes / 60, _HOUR_STEPS)
        minutes = minutes if minutes < 60 else hours * 60
    days = round(minutes / 1440 + 1e-9) if minutes >= 24 * 60 else 0  # +1e-9: .5 goes up
    if days:
        period = days * 86400
        cron = "0 0 * * *" if days == 1 else f"0 0 */{days} * *"
        human = "every day at 00:00" if days == 1 else f"every {days} days at 00:00"
    elif minutes >= 60:
        period, n = minutes * 60, minutes // 60
        cron = "0 * * * *" if n == 1 else f"0 */{n} * * *"
        human = "every hour" if n == 1 else f"every {n} hours"
    else:
        period, n = minutes * 60, minutes
        cron = "* * * * *" if n == 1 else f"*/{n} * * * *"
        human = "every minute" if n == 1 else f"every {n} minutes"
    rounded = spec.strip() if period != seconds else None
    return Schedule(spec, "cron", cron, None, human, rounded, period)


def _read_interval(r: _Reader, *, loop: bool) -> Schedule:
    """After `every` (or a bare `5m`): the interval form of §6, shared by loops, tasks and explain;
    `loop` rounds an interval under a minute up to every minute, else it is an error (§7)."""
    count, unit, word = _read_amount(r, _EX_INTERVAL, bare_unit=True)
    if unit == "w":
        r.fail("weeks are not an interval; use 'weekly' or a number of days", word,
               "every 2 days" if loop else "weekly on monday at 09:00")
    seconds = count * _UNIT_SECONDS[unit]
    if seconds < 60 and not loop:
        r.fail("more often than once a minute; the shortest interval is 1 minute", word, "every minute")
    if seconds > 31 * 86400:
        r.fail("longer than 31 days cannot be a 5-field cron; use a cron such as '0 9 1 */2 *'",
               word, "0 9 1 */2 *")
    return _interval(r.spec, seconds)


def parse_interval(text: str) -> Schedule:
    """A loop interval (§6): `5m`, `45s`, `2h`, `1d`, `every 2 hours`, `every 90 minutes`.

    `explain` (parse_schedule with `loop_intervals`) reads every interval this way too."""
    r = _Reader(text)
    if not r.words:
        r.fail("expected an interval", None, "5m")
    r.accept("every")
    schedule = _read_interval(r, loop=True)
    r.finish("5m")
    return schedule


def split_loop_args(words: list[str]) -> tuple[str | None, str]:
    """`5m check ci` or `check ci every 2 hours` -> (interval text or None, prompt); never raises."""
    def is_amount(ws: list[str]) -> bool:
        text = " ".join(ws).lower()
        m = _LOOP_TOKEN_RE.fullmatch(text) or re.fullmatch(r"\d+(?:\.\d+)? ([a-z]+)", text)
        return bool(m and m[1] in _UNITS) or text in ("minute", "hour", "day")

    if words and (m := _LOOP_TOKEN_RE.fullmatch(words[0].lower())):
        # A typo such as `5x` is still taken as an interval so that parse_interval reports it.
        if m[1] in _UNITS or len(m[1]) == 1:
            return words[0], " ".join(words[1:])
    for size in (3, 2):  # `every 2 hours` / `every hour` / `every 5m`, leading or trailing
        for head in (True, False):
            part = words[:size] if head else words[-size:]
            if len(words) >= size and part[0].lower() == "every" and is_amount(part[1:]):
                rest = words[size:] if head else words[:-size]
                return " ".join(part), " ".join(rest)
    return None, " ".join(words)


# ---------------------------------------------------------------- cron (the cron itself: bgcore.cron)

_NICKNAMES = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
              "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
              "@hourly": "0 * * * *"}


def _compile(cron: str) -> Cron:
    """compile_cron, its errors as the ScheduleError every caller of this module expects."""
    try:
        return compile_cron(cron)
    except CronError as error:
        raise ScheduleError(error.message, spec=error.spec, fragment=error.fragment,
                            position=error.position, example=error.example) from None


def _cron_schedule(spec: str, cron: str, human: str | None = None) -> Schedule:
    c = _compile(cron)
    return Schedule(spec, "cron", c.text, None, human or describe(c))


# ---------------------------------------------------------------- the schedule language

def _once(spec: str, ts: int, tz: ZoneInfo) -> Schedule:
    at = datetime.fromtimestamp(ts, tz)
    clock = f"{at:%Y-%m-%d %H:%M}" + (f":{at:%S}" if at.second else "")
    if at.fold:  # the second 01:30 of a fall-back night needs its offset to be unambiguous
        clock += at.strftime("%z")[:3] + ":" + at.strftime("%z")[3:]
    return Schedule(spec, "once", None, at, f"once at {clock} ({_zone_name(tz)})")


def _read_day_time(r: _Reader, default_day: int | None, example: str) -> tuple[int | None, time]:
    """`[on] friday [at] 17:00` in either order, each part optional."""
    day, at = default_day, time(9)
    while (word := r.peek()) is not None:
        if default_day is not None and (r.accept("on") or _weekday(word.text) is not None):
            word = r.take("a day such as monday", example)
            if (day := _weekday(word.text)) is None:
                r.fail("not a day of the week" + _suggest(word.text, _WEEKDAY_WORDS), word, example)
        elif r.accept("at") or _is_time_word(word.text):
            at = _read_time(r, example)
        else:
            break
    return day, at


def _read_once(r: _Reader, now: datetime, tz: ZoneInfo, *, at_means_next: bool) -> int | None:
    """The one-shot forms; returns the fire timestamp, or None when the words are not one of them."""
    now_ts = math.floor(now.timestamp())
    today = datetime.fromtimestamp(now_ts, tz).date()
    word = r.peek()
    if word is None:
        return None
    if r.accept("in"):
        count, unit, _ = _read_amount(r, "in 45 minutes", bare_unit=False)
        if unit in "dw" and count == int(count):  # calendar days: same wall-clock time
            wall = datetime.fromtimestamp(now_ts, tz).replace(tzinfo=None, fold=0)
            return _resolve_wall(wall + int(count) * _UNIT_SECONDS[unit] // 86400 * _DAY, tz)
        return now_ts + math.ceil(count * _UNIT_SECONDS[unit])
    if word.text in ("tomorrow", "today"):
        r.i += 1
        at = _read_time(r, _EX_ONCE) if r.accept("at") or (
            r.peek() is not None and _is_time_word(r.peek().text)) else time(9)
        ts = _resolve_wall(datetime.combine(today + _DAY * (word.text == "tomorrow"), at), tz)
        if ts <= now_ts:
            r.fail(f"{at:%H:%M} today has already passed", word, _EX_ONCE)
        return ts
    if at_means_next and word.text == "at":
        r.i += 1
        at = _read_time(r, "at 15:00")
        ts = _resolve_wall(datetime.combine(today, at), tz)
        return ts if ts > now_ts else _resolve_wall(datetime.combine(today + _DAY, at), tz)
    return None


def _read_absolute(r: _Reader, tz: ZoneInfo) -> tuple[int, ZoneInfo]:
    """`[once] [at|on] 2026-11-25 [at] 09:00[-05:00] [(Europe/Berlin)]`, the form `human` prints."""
    example = "once at 2026-11-25 09:00"
    r.accept("once")
    r.accept("at", "on")
    word = r.take("a date such as 2026-11-25", example)
    text = word.raw
    if "t" not in word.text:  # the time is a separate word; 09:00 when there is none
        r.accept("at")
        clock = r.peek()
        if clock is not None and re.fullmatch(r"\d\d?:\d\d(:\d\d)?([+-]\d\d:?\d\d|z)?", clock.text):
            r.i += 1
            text += "T" + clock.raw
        elif clock is not None and not clock.raw.startswith("("):
            text += "T" + _read_time(r, example).isoformat()
    if (zone := r.peek()) is not None and zone.raw.startswith("("):
        r.i += 1
        try:
            tz = ZoneInfo(zone.raw.strip("()"))
        except (ZoneInfoNotFoundError, ValueError):
            r.fail("unknown time zone; use an IANA name such as Europe/Berlin", zone, example)
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        r.fail("not a date and time; write it as 2026-11-25 09:00", word, example)
    ts = _resolve_wall(at, tz) if at.tzinfo is None else math.floor(at.timestamp())
    return ts, tz


_DAY_PRESETS = {"daily": "*", "weekdays": "1-5", "weekends": "0,6"}
_EVERY_DAYS = {"day": "*", "weekday": "1-5", "weekdays": "1-5", "weekend": "0,6", "weekends": "0,6"}


def _day_preset(r: _Reader) -> str | None:
    """`daily`, `weekdays`, `every weekday`, `every day at ...` (a bare `every day` is an interval):
    consumes the preset words and returns the cron day-of-week field."""
    texts = [w.text for w in r.words]
    if texts[0] in _DAY_PRESETS:
        r.i = 1
        return _DAY_PRESETS[texts[0]]
    if texts[:1] == ["every"] and len(texts) > 1 and texts[1] in _EVERY_DAYS and (
            texts[1] != "day" or len(texts) > 2):
        r.i = 2
        return _EVERY_DAYS[texts[1]]
    return None


_PARSED: dict[tuple[str, bool], Schedule] = {}
_PARSED_MAX = 16384  # as many as compile_cron keeps


def parse_schedule(spec: str, *, now: datetime, tz: ZoneInfo, loop_intervals: bool = False) -> Schedule:
    """Read a schedule of the §7 language; raises ScheduleError pointing at what it could not read.

    An interval under a minute is an error, as a task schedule must be (§7). With `loop_intervals` every
    interval is read by the reading of parse_interval (§6: `45s` rounds up to every minute, with
    `rounded_from`), so `schedule explain` shows what `bgctl loop` would pick.

    Only a one-shot depends on `now` and `tz`; every other reading is kept (Schedule is immutable), so a
    tasks.toml of 10,000 tasks that repeats a few hundred schedules reads each once.
    """
    _require_aware(now)
    key = (spec, loop_intervals)
    known = _PARSED.get(key)
    if known is not None:
        return known
    result = _parse_schedule(spec, now, tz, loop_intervals)
    if result.kind != "once":
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        _PARSED[key] = result
    return result


def _parse_schedule(spec: str, now: datetime, tz: ZoneInfo, loop_intervals: bool) -> Schedule:
    r = _Reader(spec)
    word = r.peek()
    if word is None:
        r.fail("the schedule is empty", None, _EX_ANY)
    first = word.text
    if first == "manual":
        r.i += 1
        result = Schedule(spec, "manual", None, None, "manual: only when run by hand")
    elif first == "hourly":
        r.i += 1
        result = _interval(spec, 3600)
    elif (days := _day_preset(r)) is not None:
        _, at = _read_day_time(r, None, "daily at 18:30")
        result = _cron_schedule(spec, f"{at.minute} {at.hour} * * {days}")
    elif first == "weekly" or first == "every" and len(r.words) > 1 and (
            r.words[1].text == "week" or _weekday(r.words[1].text) is not None):
        r.i += 1 + (first == "every" and r.words[1].text == "week")
        day, at = _read_day_time(r, 1, "weekly on friday at 17:00")
        result = _cron_schedule(spec, f"{at.minute} {at.hour} * * {day}")
    elif first == "every":
        r.i += 1
        result = _read_interval(r, loop=loop_intervals)
    elif first == "at" or _is_time_word(first):
        r.accept("at")
        at = _read_time(r, "at 15:00")
        result = _cron_schedule(spec, f"{at.minute} {at.hour} * * *")
    elif first in ("tomorrow", "today", "in"):
        result = _once(spec, _read_once(r, now, tz, at_means_next=False), tz)
    elif first in ("once", "on") or re.match(r"\d{4}-\d\d-\d\d", first):
        ts, zone = _read_absolute(r, tz)
        result = _once(spec, ts, zone)
    elif first in _NICKNAMES:
        r.i += 1
        result = _cron_schedule(spec, _NICKNAMES[first])
    elif len(r.words) <= 2 and _AMOUNT_RE.fullmatch(first) and (
            _AMOUNT_RE.fullmatch(first)[2] or len(r.words) == 2 and r.words[1].text in _UNITS):
        result = _read_interval(r, loop=loop_intervals)
    elif re.fullmatch(r"[\d*][\w*,/\-]*", first):
        return _cron_schedule(spec, spec)
    else:
        r.fail("not a schedule: use a preset (manual, hourly, daily, weekdays, weekly), "
               "'every N minutes', 'at 15:00', 'in 45 minutes' or a 5-field cron"
               + _suggest(first, _VOCABULARY + tuple(_NICKNAMES)), word, _EX_ANY)
    r.finish(_EX_ANY)
    return result


def parse_when_and_what(text: str, *, now: datetime, tz: ZoneInfo) -> tuple[Schedule, str]:
    """`in 45 minutes push the release branch`, or the time at the end -> (one-shot, prompt)."""
    _require_aware(now)
    example = "in 45 minutes push the release branch"
    r = _Reader(text)
    if not r.words:
        r.fail("say when and what", None, example)
    lead_error = None
    try:
        ts = _read_once(r, now, tz, at_means_next=True)
    except ScheduleError as error:  # maybe the prompt starts with "in"; try the end before giving up
        ts, lead_error = None, error
    if ts is not None:
        when, prompt = r.words[:r.i], r.words[r.i:]
    else:
        for start in range(1, len(r.words)):  # the longest tail that is exactly a time
            tail = _Reader(text, r.words[start:])
            try:
                ts = _read_once(tail, now, tz, at_means_next=True)
            except ScheduleError:
                continue
            if ts is not None and tail.peek() is None:
                when, prompt = r.words[start:], r.words[:start]
                break
        else:
            if lead_error:
                lead_error.example = example
                raise lead_error
            r.fail("say when, as in 'in 45 minutes', 'at 15:00' or 'tomorrow at 9am'", r.words[0],
                   example)
    if not prompt:
        r.fail("nothing to be reminded of", None, example)

    def span(ws: list[_Word]) -> str:
        return text[ws[0].pos:ws[-1].pos + len(ws[-1].raw)]

    return _once(span(when), ts, tz), span(prompt)


# ---------------------------------------------------------------- fire times

def _require_aware(dt: datetime) -> None:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"a naive datetime ({dt.isoformat()}) where an aware one is needed")


def _zone_name(tz) -> str:
    return getattr(tz, "key", None) or str(tz)


def _wall(ts: float, tz) -> datetime:
    return datetime.fromtimestamp(ts, tz).replace(tzinfo=None, fold=0)


def _resolve_wall(wall: datetime, tz) -> int:
    """The instant a wall-clock time fires: its first occurrence, or the end of the gap it falls in."""
    wall = wall.replace(microsecond=0, fold=0)
    first = math.floor(wall.replace(tzinfo=tz).timestamp())
    if _wall(first, tz) == wall:
        return first
    # In a gap the two folds give the instants on both sides of the transition; the transition is
    # the first second whose wall time is past `wall`.
    lo, hi = sorted((first, math.floor(wall.replace(tzinfo=tz, fold=1).timestamp())))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _wall(mid, tz) > wall else (mid, hi)
    return hi


@lru_cache(maxsize=1024)
def _day_span(day: date, tz) -> tuple[int, bool] | None:
    """The instant `day` starts in `tz`, and whether it is steady (24 hours, one UTC offset
    throughout, so wall minutes map to instants by plain addition); None when the next day is past
    what datetime can hold. Cached: every fire time of a day asks for the same answer."""
    day_start = _resolve_wall(datetime.combine(day, time()), tz)
    try:
        day_end = _resolve_wall(datetime.combine(day + _DAY, time()), tz)
    except OverflowError:
        return None
    steady = day_end - day_start == 86400 and (
        datetime.fromtimestamp(day_start, tz).utcoffset() == datetime.fromtimestamp(day_end - 1, tz).utcoffset())
    return day_start, steady


def _cron_after(c: Cron, after_ts: float, tz) -> int | None:
    """The first fire of `c` strictly after `after_ts`; None past what datetime can hold."""
    start = _wall(after_ts, tz)
    day, first_minute = start.date(), start.hour * 60 + start.minute
    minutes = c.minutes_of_day
    while (match := c.next_day(day)) is not None:
        if match != day:
            first_minute = 0
        day = match
        span = _day_span(day, tz)
        if span is None:
            return None
        day_start, steady = span
        # A day without a transition maps wall minutes to instants by plain addition (fast path);
        # a transition day resolves every wall time on its own (several skipped wall times share
        # one instant, and a repeated hour fires once: the first instant past after_ts is the one).
        for i in range(bisect_left(minutes, first_minute), len(minutes)):  # by index: no copy, no skipping
            mod = minutes[i]
            ts = day_start + mod * 60 if steady else _resolve_wall(
                datetime.combine(day, time(mod // 60, mod % 60)), tz)
            if ts > after_ts:
                return ts
        day, first_minute = day + _DAY, 0
    return None


def _iter_cron(c: Cron, after_ts: float, tz) -> Iterator[int]:
    """Every fire after `after_ts`, in order: _cron_after's walk, kept going (a look-back over days of
    a minutely schedule must not start over at each fire)."""
    start = _wall(after_ts, tz).replace(second=0)
    day, first_minute = start.date(), start.hour * 60 + start.minute
    last = after_ts
    minutes = c.minutes_of_day
    while (match := c.next_day(day)) is not None:
        if match != day:
            first_minute = 0
        day = match
        span = _day_span(day, tz)
        if span is None:
            return
        day_start, steady = span
        for i in range(bisect_left(minutes, first_minute), len(minutes)):
            mod = minutes[i]
            ts = day_start + mod * 60 if steady else _resolve_wall(
                datetime.combine(day, time(mod // 60, mod % 60)), tz)
            if ts > last:  # several skipped wall times share one instant: fire it once
                last = ts
                yield ts
        day, first_minute = day + _DAY, 0


def _standard_offset(ts: float, tz) -> int:
    local = datetime.fromtimestamp(ts, tz)
    return int((local.utcoffset() - (local.dst() or timedelta(0))).total_seconds())


def _iter_grid(period: int, after_ts: float, tz) -> Iterator[int]:
    """Every `period` seconds of real time, on slots aligned to midnight of the zone's standard time
    (its UTC offset without daylight saving): DST moves the wall clock, never the slots."""
    def slot_after(ts: float, offset: int) -> int:
        return (int((ts + offset) // period) + 1) * period - offset

    while True:
        offset = _standard_offset(after_ts, tz)
        ts = slot_after(after_ts, offset)
        if (moved := _standard_offset(ts, tz)) != offset:  # a law changed the standard time: re-align
            ts = slot_after(after_ts, moved)
        yield ts
        after_ts = ts


def _iter_fires(schedule: Schedule, after: datetime, tz) -> Iterator[int]:
    _require_aware(after)
    return _iter_fires_ts(schedule, after.timestamp(), tz)


def _iter_fires_ts(schedule: Schedule, after_ts: float, tz) -> Iterator[int]:
    if schedule.kind == "once":
        if schedule.at.timestamp() > after_ts:
            yield math.floor(schedule.at.timestamp())
    elif schedule.kind == "cron" and schedule.interval_s is not None and schedule.interval_s < 86400:
        yield from _iter_grid(schedule.interval_s, after_ts, tz)
    elif schedule.kind == "cron":
        yield from _iter_cron(_compile(schedule.cron), after_ts, tz)


def next_fire_times(schedule: Schedule, after: datetime, tz: ZoneInfo, n: int) -> list[datetime]:
    """The next `n` fire times strictly after `after`, as aware datetimes in `tz`."""
    fires = itertools.islice(_iter_fires(schedule, after, tz), max(n, 0))
    return [datetime.fromtimestamp(ts, tz) for ts in fires]


def next_fire_time(schedule: Schedule, after: datetime, tz: ZoneInfo) -> datetime | None:
    fires = next_fire_times(schedule, after, tz, 1)
    return fires[0] if fires else None


def next_fire_ts(schedule: Schedule, after_ts: float, tz: ZoneInfo) -> int | None:
    """`next_fire_time` on POSIX timestamps: the first fire strictly after `after_ts` (the daemon's
    schedulers ask this once per fire, so it skips building datetimes and iterators). `after_ts` is taken
    as it is: a datetime would round it to the microsecond, which differs only within half a
    microsecond before a fire (then this one gives that fire, the datetime the next)."""
    if schedule.kind == "cron" and (schedule.interval_s is None or schedule.interval_s >= 86400):
        return _cron_after(_compile(schedule.cron), after_ts, tz)
    return next(_iter_fires_ts(schedule, after_ts, tz), None)


def previous_fire_times(schedule: Schedule, before: datetime, not_before: datetime,
                        tz: ZoneInfo) -> list[datetime]:
    """Fire times in (not_before, before], ascending: the missed-run look-back of §7."""
    _require_aware(before)
    end = before.timestamp()
    return [datetime.fromtimestamp(ts, tz)
            for ts in itertools.takewhile(lambda ts: ts <= end, _iter_fires(schedule, not_before, tz))]


@lru_cache(maxsize=4096)
def _shortest_gap(cron: str) -> int:
    """The shortest time between two fires, sampled in UTC from a fixed day: jitter stays below it."""
    fires = list(itertools.islice(_iter_cron(_compile(cron), 978307200, ZoneInfo("UTC")), 32))
    return min((b - a for a, b in zip(fires, fires[1:])), default=86400)


def jitter_seconds(task_id: str, schedule: Schedule, *, recurring: bool, max_fraction: float = 0.1,
                   max_late_s: int = 900, early_s: int = 90) -> int:
    """§6: recurring fires up to 10% of the period late (at most 15 min); a one-shot on :00 or :30 up
    to 90 s early. Deterministic from the task id; 0 when max_fraction is 0 (jitter disabled)."""
    if max_fraction <= 0 or schedule.kind == "manual":
        return 0
    unit = int.from_bytes(hashlib.sha256(task_id.encode()).digest()[:8], "big") / 2**64
    if recurring and schedule.kind == "cron":
        period = schedule.interval_s or _shortest_gap(schedule.cron)
        return int(unit * min(max_fraction * period, max_late_s))
    if schedule.kind == "once":
        pinned = schedule.at.second == 0 and schedule.at.minute in (0, 30)
    else:
        pinned = set(_compile(schedule.cron).minutes) <= {0, 30}
    return -int(unit * early_s) if pinned else 0


def explain(spec: str, *, now: datetime, tz: ZoneInfo, count: int = 5, loop_intervals: bool = True) -> dict:
    """The JSON of `bgctl schedule explain` (SPEC §3). Intervals read as loop intervals (§6), the same
    cron and `rounded_from` as `bgctl loop`; `loop_intervals=False` reads them as a task schedule, where
    one under a minute is an error (tasks.toml)."""
    schedule = parse_schedule(spec, now=now, tz=tz, loop_intervals=loop_intervals)
    return {
        "spec": spec,
        "kind": schedule.kind,
        "cron": schedule.cron,
        "human": schedule.human,
        "timezone": _zone_name(tz),
        "rounded_from": schedule.rounded_from,
        "next": [t.isoformat() for t in next_fire_times(schedule, now, tz, count)],
    }
