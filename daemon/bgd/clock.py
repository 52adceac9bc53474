"""The one place the daemon reads the wall clock.

Everything else takes `now` as a parameter or calls these, so tests can shift
time (and libfaketime shifts it for the whole process end to end: it shifts
time.time_ns, which now_iso reads, as it shifts datetime.now).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

from bgcore.zones import local_zone  # noqa: F401  (the daemon's callers use clock.local_zone)


def now() -> datetime:
    return datetime.now(timezone.utc)


def iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds")


_SECONDS: dict[int, str] = {}  # whole second -> "YYYY-MM-DDTHH:MM:SS" (UTC)
_YEAR_10000 = 253402300800


def iso_ts(ts: float | None) -> str | None:
    """`iso` of a POSIX timestamp: exactly datetime.fromtimestamp(ts, utc).isoformat(timespec="milliseconds")
    (microseconds rounded half to even, as datetime does, then cut to milliseconds), with the text of
    each second kept, since a loop's times are formatted at every change of it."""
    if ts is None:
        return None
    if not 0 <= ts < _YEAR_10000:  # before 1970, past 9999, inf, nan: datetime says what it says
        return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")
    sec = int(ts)
    us = round((ts - sec) * 1e6)
    if us >= 1_000_000:
        sec, us = sec + 1, us - 1_000_000
    text = _SECONDS.get(sec)
    if text is None:
        if len(_SECONDS) >= 4096:
            _SECONDS.clear()
        text = _SECONDS[sec] = datetime.fromtimestamp(sec, timezone.utc).isoformat()[:19]
    return f"{text}.{us // 1000:03d}+00:00"


_last_ms, _last_text = -1, ""


def now_iso() -> str:
    """`iso(now())`, formatted once per millisecond: a streaming session stamps each agent line, its
    event and the session several times within the same millisecond."""
    global _last_ms, _last_text
    ms = time.time_ns() // 1_000_000
    if ms != _last_ms:
        sec, milli = divmod(ms, 1000)
        text = _SECONDS.get(sec)
        if text is None:
            if len(_SECONDS) >= 4096:
                _SECONDS.clear()
            text = _SECONDS[sec] = datetime.fromtimestamp(sec, timezone.utc).isoformat()[:19]
        _last_ms, _last_text = ms, f"{text}.{milli:03d}+00:00"
    return _last_text


def parse_iso(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text)
