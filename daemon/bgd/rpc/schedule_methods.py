"""`schedule.explain`: what a schedule means and when it fires next (SPEC §3)."""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bgcore.jsonrpc import BAD_SCHEDULE, INVALID_PARAMS, RpcError
from bgcore.schedule import ScheduleError, explain as explain_schedule

from bgd import clock
from bgd.rpc.table import method


@method("schedule.explain")
async def explain(daemon, params, conn):
    """Parse a schedule; its kind, cron, reading in English and next fire times."""
    spec = params.req_str("spec")
    count = params.int("next", 5)
    if not 0 <= count <= 1000:
        raise RpcError(INVALID_PARAMS, "next must be between 0 and 1000")
    zone = params.str("tz")
    try:
        tz = ZoneInfo(zone) if zone else clock.local_zone()
    except (ZoneInfoNotFoundError, ValueError):
        raise RpcError(INVALID_PARAMS, f"unknown time zone {zone!r}; use an IANA name such as Europe/Berlin") from None
    start = params.str("from")
    try:
        now = clock.parse_iso(start) if start else clock.now()
    except ValueError:
        raise RpcError(INVALID_PARAMS, f"from {start!r} is not an ISO 8601 time such as 2026-11-24T09:00") from None
    if now.tzinfo is None:  # a wall time in the schedule's zone
        now = now.replace(tzinfo=tz)
    try:
        return explain_schedule(spec, now=now, tz=tz, count=count)
    except ScheduleError as exc:
        raise RpcError(BAD_SCHEDULE, str(exc), {"spec": spec, "position": exc.position, "fragment": exc.fragment,
                                                "example": exc.example}) from None
