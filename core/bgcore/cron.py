"""The 5-field cron of SPEC §7: compile a cron to its sets of values, normalize it, read it as English.

Pure and zone-free: a `Cron` knows which wall-clock days and minutes fire, not when they happen.
Turning those into instants (time zones, DST gaps and repeated hours) is bgcore.schedule's job, and
so is the schedule language around cron (presets, `@daily` nicknames, intervals).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache

__all__ = ["DAY_NAMES", "Cron", "CronError", "compile_cron", "describe"]

DAY_NAMES = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")  # cron's 0-6
_MONTH_NAMES = ("January", "February", "March", "April", "May", "June", "July", "August",
                "September", "October", "November", "December")
_CRON_DOW = {name[:3].lower(): i for i, name in enumerate(DAY_NAMES)}
_CRON_MONTH = {name[:3].lower(): i + 1 for i, name in enumerate(_MONTH_NAMES)}
_DAY = timedelta(days=1)
_EX_CRON = "30 9 * * 1-5"


class CronError(ValueError):
    """A cron that cannot be compiled, pointing into it; bgcore.schedule re-raises it as ScheduleError."""

    def __init__(self, message: str, *, spec: str, fragment: str, position: int, example: str):
        self.message = message
        self.spec = spec
        self.fragment = fragment
        self.position = position
        self.example = example
        super().__init__(message)


_FIELDS = (("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}),
           ("month", 1, 12, _CRON_MONTH), ("day of week", 0, 7, _CRON_DOW))
_MAX_DAY = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


@dataclass(frozen=True)
class Cron:
    text: str  # normalized
    minutes_of_day: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    doms: frozenset[int]
    months: frozenset[int]
    dows: frozenset[int]  # 0 is Sunday
    dom_star: bool  # vixie: a field that starts with `*` does not restrict the day
    dow_star: bool

    def day_matches(self, d: date) -> bool:
        dom, dow = d.day in self.doms, d.isoweekday() % 7 in self.dows
        return (dom and dow) if self.dom_star or self.dow_star else (dom or dow)

    def next_day(self, d: date) -> date | None:
        """The first day >= d that fires; None past year 9999."""
        try:
            while True:
                if d.month not in self.months:
                    y, m = d.year, d.month
                    while True:
                        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
                        if m in self.months:
                            break
                    d = date(y, m, 1)
                elif self.day_matches(d):
                    return d
                else:
                    d += _DAY
        except (OverflowError, ValueError):
            return None


def _cron_error(message: str, spec: str, pos: int, length: int, example: str = _EX_CRON) -> CronError:
    return CronError(message, spec=spec, fragment=spec[pos:pos + length], position=pos, example=example)


def _cron_value(text: str, pos: int, field: int, spec: str) -> int:
    name, lo, hi, names = _FIELDS[field]
    if text in names:
        return names[text]
    if not text.isdigit():
        also = f" or a name such as {next(iter(names))}" if names else ""
        raise _cron_error(f"{name} must be a number {lo}-{hi}{also}", spec, pos, len(text))
    if not lo <= int(text) <= hi:
        note = " (0 and 7 are Sunday)" if field == 4 else ""
        raise _cron_error(f"{name} {int(text)} is out of range {lo}-{hi}{note}", spec, pos, len(text))
    return int(text)


def _cron_field(text: str, pos: int, field: int, spec: str) -> set[int]:
    name, lo, hi, _ = _FIELDS[field]
    hi = 6 if field == 4 else hi  # `*` in day-of-week is 0-6: `*/2` must not add a second Sunday
    values: set[int] = set()
    for item in text.split(","):
        base, slash, step_text = item.partition("/")
        if slash and not (step_text.isdigit() and int(step_text) > 0):
            raise _cron_error(f"the step in {name} must be a whole number of at least 1", spec,
                              pos + len(base) + 1, len(step_text))
        if base == "*":
            start, end = lo, hi
        elif "-" in base:
            a, b = base.split("-", 1)
            start = _cron_value(a, pos, field, spec)
            end = _cron_value(b, pos + len(a) + 1, field, spec)
            if start > end:
                raise _cron_error(f"the {name} range {base} runs backwards", spec, pos, len(base))
        else:
            start = _cron_value(base, pos, field, spec)
            end = hi if slash else start  # `5/15` means 5-59/15, as in croniter
        values.update(range(start, end + 1, int(step_text) if slash else 1))
        pos += len(item) + 1
    return {v % 7 for v in values} if field == 4 else values


def _cron_text(values: set[int], field: int, written: str) -> str:
    """Canonical field text. A `*`-led day field stays `*`-led: vixie's OR/AND rule depends on it."""
    if len(values) == 1 and not written.startswith("*"):  # the common `30 9 ...`: what the rest would give
        return str(next(iter(values)))
    _, lo, hi, _ = _FIELDS[field]
    hi = 6 if field == 4 else hi
    s = sorted(values)
    step = s[1] - s[0] if len(s) > 1 else hi - lo + 1
    star = written.startswith("*")
    if s == list(range(lo, hi + 1, step)) and (star or field not in (2, 4) and len(s) > 2):
        return "*" if step == 1 else f"*/{step}"
    if star and field in (2, 4):
        return written
    if len(s) > 2 and step > 1 and s == list(range(s[0], s[-1] + 1, step)):
        return f"{s[0]}-{s[-1]}/{step}"
    runs: list[str] = []
    for _, group in itertools.groupby(enumerate(s), lambda iv: iv[1] - iv[0]):
        g = [v for _, v in group]
        runs.extend([f"{g[0]}-{g[-1]}"] if len(g) > 2 else map(str, g))
    return ",".join(runs)


@lru_cache(maxsize=16384)  # a tasks.toml of 10,000 tasks may hold as many distinct schedules
def compile_cron(spec: str) -> Cron:
    words = [(m.group().lower(), m.start()) for m in re.finditer(r"\S+", spec)]
    if len(words) != 5:
        why = f"a cron has 5 fields (minute hour day month weekday); this one has {len(words)}"
        if len(words) == 6:
            raise _cron_error(why + ": seconds are not supported, a schedule fires at most once a minute",
                              spec, words[5][1], len(spec.rstrip()) - words[5][1])
        start = words[0][1] if words else 0
        raise _cron_error(why, spec, start, len(spec.rstrip()) - start)
    sets = [_cron_field(text, pos, i, spec) for i, (text, pos) in enumerate(words)]
    stars = [text.startswith("*") for text, _ in words]
    if not stars[2] and not any(d <= _MAX_DAY[m - 1] for m in sets[3] for d in sets[2]):
        raise _cron_error("that day never comes in the months given, so this would never fire", spec,
                          words[2][1], len(words[2][0]), "0 0 29 2 *")
    minutes, hours = sorted(sets[0]), sorted(sets[1])
    return Cron(" ".join(_cron_text(v, i, words[i][0]) for i, v in enumerate(sets)),
                 tuple(h * 60 + m for h in hours for m in minutes), tuple(minutes), tuple(hours),
                 frozenset(sets[2]), frozenset(sets[3]), frozenset(sets[4]), stars[2], stars[4])


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _clean_step(values: tuple[int, ...], span: int) -> int:
    """N when values are exactly `*/N` with N dividing the span, else 0."""
    step = values[1] if len(values) > 1 else 0
    return step if step and span % step == 0 and values == tuple(range(0, span, step)) else 0


@lru_cache(maxsize=16384)  # like compile_cron
def describe(c: Cron) -> str:
    """A short English reading of common cron shapes; anything else is shown as the cron itself."""
    fallback = f"cron {c.text} (minute hour day month weekday)"
    mins, hours, all_hours = c.minutes, c.hours, len(c.hours) == 24
    step_m = _clean_step(mins, 60)
    step_h = _clean_step(hours, 24)
    past = "" if len(mins) != 1 or mins[0] == 0 else f" at :{mins[0]:02d}"
    if len(mins) == 60 and all_hours:
        when = "every minute"
    elif step_m and all_hours:
        when = f"every {step_m} minutes"
    elif len(mins) == 1 and all_hours:
        when = "every hour" + past
    elif len(mins) == 1 and step_h:
        when = f"every {step_h} hours" + past
    elif len(mins) * len(hours) <= 4:
        when = "at " + _join([f"{h:02d}:{m:02d}" for h in hours for m in mins])
    else:
        return fallback
    dow_names = _join([DAY_NAMES[d] + "s" for d in (1, 2, 3, 4, 5, 6, 0) if d in c.dows])
    dows = {frozenset(range(1, 6)): "on weekdays", frozenset({0, 6}): "on weekends"}.get(
        c.dows, "on " + dow_names)
    doms = f"on day{'s' if len(c.doms) > 1 else ''} {_join([str(d) for d in sorted(c.doms)])} of the month"
    every_dom, every_dow = len(c.doms) == 31, len(c.dows) == 7
    if c.dom_star and c.dow_star:
        known, days = every_dom and every_dow, "every day" if when.startswith("at") else ""
    elif c.dom_star:
        known, days = every_dom, dows
    elif c.dow_star:
        known, days = every_dow, doms
    else:
        known, days = True, f"{doms} or {dows}"
    if not known:
        return fallback
    months = "" if len(c.months) == 12 else "in " + _join([_MONTH_NAMES[m - 1] for m in sorted(c.months)])
    return " ".join(part for part in (when, days, months) if part)
