"""The one place the daemon reads the wall clock.

Everything else takes `now` as a parameter or calls these, so tests can shift
time (and libfaketime shifts it for the whole process end to end).
"""

from __future__ import annotations

from datetime import datetime, timezone

from bgcore.zones import local_zone  # noqa: F401  (the daemon's callers use clock.local_zone)


def now() -> datetime:
    return datetime.now(timezone.utc)


def iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def now_iso() -> str:
    return iso(now())  # type: ignore[return-value]


def parse_iso(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text)
