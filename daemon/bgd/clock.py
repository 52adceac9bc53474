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


_last_ms, _last_text = -1, ""


def now_iso() -> str:
    """`iso(now())`, formatted once per millisecond: a streaming session stamps each agent line, its
    event and the session several times within the same millisecond."""
    global _last_ms, _last_text
    ms = time.time_ns() // 1_000_000
    if ms != _last_ms:
        at = datetime.fromtimestamp(ms // 1000, timezone.utc).replace(microsecond=ms % 1000 * 1000)
        _last_ms, _last_text = ms, at.isoformat(timespec="milliseconds")
    return _last_text


def parse_iso(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text)
