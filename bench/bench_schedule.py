"""The schedule core's speed: next fire time of a mix of schedules (target: well under 1 ms each)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from bgcore.schedule import next_fire_time, parse_schedule

TARGET_S = 0.0005
SPECS = ["0 9 * * 1-5", "*/5 * * * *", "0 0 13 * 5", "30 2 * * *", "0 0 1 */3 *", "every 15 minutes", "daily"]


def run(count: int = 30_000) -> dict:
    zone = ZoneInfo("Europe/Berlin")
    start = datetime(2026, 3, 28, 23, 0, tzinfo=zone)  # across a daylight-saving change
    schedules = [parse_schedule(s, now=start, tz=zone) for s in SPECS]
    began = time.perf_counter()
    for i in range(count):
        next_fire_time(schedules[i % len(schedules)], start + timedelta(minutes=7 * i), zone)
    each = (time.perf_counter() - began) / count
    ok = each <= TARGET_S
    print(f"  next_fire_time: {each * 1e6:.1f} us each over {count} calls  "
          f"{'PASS' if ok else 'FAIL'} (target <= {TARGET_S * 1e6:.0f} us)")
    return {"name": "schedule", "title": "schedule core: next fire time", "us_each": round(each * 1e6, 2),
            "figure": f"{each * 1e6:.1f} us each", "target": f"<= {TARGET_S * 1e6:.0f} us", "pass": ok}


if __name__ == "__main__":
    run()
