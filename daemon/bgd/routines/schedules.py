"""Schedule triggers of routines (SPEC §8): the scheduler desktop tasks use (bgcore.scheduler), one
entry per schedule trigger (`<routine>#<index>`), and the same trio shell around it.

The rules are §7's: at most one catch-up run for the most recent missed time, the older ones
recorded as skipped (`daemon_down` on start, `asleep` after a suspend); times missed while a routine
was paused, or under another schedule, are not caught up. Each routine fires at its own small
offset (`stagger_seconds`, up to 5 minutes; none with `[routines] stagger = false`). A one-off
schedule fires once and writes `enabled = false` into its trigger.

Like the tasks' loop it sleeps until the next deadline but at most CHECK_S before it compares the
wall clock again, so a fire due during a suspend happens promptly on resume.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import trio

from bgcore.routines_edit import set_trigger_enabled_text
from bgcore.routines_file import Routine, ScheduleTrigger, stagger_seconds
from bgd import clock
from bgcore.scheduler import Fire, Scheduler, Skip

log = logging.getLogger("bgd.routines")

CHECK_S = 1.0
JUMP_S = 5.0


def key_of(name: str, index: int) -> str:
    return f"{name}#{index}"


class ScheduleTriggers:
    def __init__(self, service, *, stagger: bool = True):
        self.service = service
        self.scheduler = Scheduler()
        self.stagger = stagger
        self.triggers: dict[str, tuple[str, ScheduleTrigger]] = {}  # key -> (routine name, trigger)
        self._wake = trio.Event()

    # -- what is scheduled ----------------------------------------------------------

    def apply(self, old: dict[str, Routine], new: dict[str, Routine], changes: dict) -> None:
        for name in changes["removed"] + changes["changed"]:
            self._remove(name)
        for name in changes["added"] + changes["changed"]:
            self._add(new[name])
        self._wake.set()

    def _remove(self, name: str) -> None:
        for key in [k for k, (n, _) in self.triggers.items() if n == name]:
            self.scheduler.remove(key)
            del self.triggers[key]

    def _add(self, routine: Routine) -> None:
        states = self.service.state(routine.name).setdefault("schedules", {})
        changed = False
        for trigger in routine.triggers:
            if not isinstance(trigger, ScheduleTrigger):
                continue
            state = states.setdefault(str(trigger.index), {})
            if not (routine.enabled and trigger.enabled):
                if state.get("enabled", True):
                    state["enabled"] = False
                    changed = True
                continue
            key = key_of(routine.name, trigger.index)
            now = self.service.now().timestamp()
            identity = f"{trigger.schedule.spec}|{getattr(routine.tz, 'key', routine.tz)}"
            last_seen = clock.parse_iso(state.get("last_seen"))
            fresh = last_seen is None or state.get("identity") != identity or not state.get("enabled", True)
            since = now if fresh else min(last_seen.timestamp(), now)
            jitter = stagger_seconds(routine.name) if self.stagger else 0
            self.scheduler.set_task(key, trigger.schedule, routine.tz, last_seen=since, jitter_s=jitter)
            self.triggers[key] = (routine.name, trigger)
            if fresh:
                state.update(identity=identity, enabled=True, last_seen=clock.iso(_utc(since)))
                changed = True
        if changed:
            self.service.save_state(routine.name)

    def set_stagger(self, stagger: bool) -> None:
        if stagger != self.stagger:
            self.stagger = stagger
            for routine in list(self.service.routines.values()):
                self._remove(routine.name)
                self._add(routine)
            self._wake.set()

    def next_fire(self, name: str, index: int) -> datetime | None:
        ts = self.scheduler.next_fire(key_of(name, index))
        return _utc(ts) if ts is not None else None

    # -- the shell ------------------------------------------------------------------

    async def loop(self) -> None:
        first = True
        last_wall, last_mono = self.service.now().timestamp(), trio.current_time()
        while True:
            now = self.service.now().timestamp()
            mono = trio.current_time()
            jump = (now - last_wall) - (mono - last_mono)
            last_wall, last_mono = now, mono
            reason = "daemon_down" if first else "asleep"
            while True:
                fires, skips = self.scheduler.due(now, reason, limit=64)
                if not fires and not skips:
                    break
                if jump > JUMP_S:
                    log.info("the wall clock jumped %.0f s ahead of the monotonic one (suspend?): catching up", jump)
                    jump = 0.0
                self._handle(fires, skips)
                await trio.lowlevel.checkpoint()
            first = False
            deadline = self.scheduler.next_deadline()
            self._wake = trio.Event()
            if deadline is None:
                await self._wake.wait()
            else:
                with trio.move_on_after(min(max(deadline - now, 0.0), CHECK_S)):
                    await self._wake.wait()

    def _handle(self, fires: list[Fire], skips: list[Skip]) -> None:
        service = self.service
        once: list[tuple[str, int]] = []
        touched: set[str] = set()
        with service.store.transaction():
            for skip in skips:
                name, trigger = self.triggers.get(skip.task, (None, None))
                if name is None:
                    continue
                service.skipped(name, "schedule", skip.reason, count=skip.count,
                                detail={"schedule": trigger.schedule.spec, "due_at": clock.iso(skip.due_at)})
                touched.add(skip.task)
            for fire in fires:
                name, trigger = self.triggers.get(fire.task, (None, None))
                routine = service.routines.get(name) if name else None
                if routine is None:
                    continue
                service.offer(routine, "schedule", detail={"schedule": trigger.schedule.spec,
                                                           "due_at": clock.iso(fire.due_at), "catch_up": fire.catch_up})
                if trigger.schedule.kind == "once":
                    once.append((name, trigger.index))
                touched.add(fire.task)
            for key in touched:
                name, trigger = self.triggers[key]
                last = self.scheduler.last_seen(key)
                state = service.state(name).setdefault("schedules", {}).setdefault(str(trigger.index), {})
                if last is not None:
                    state["last_seen"] = clock.iso(_utc(last))
                service.save_state(name)
        for name, index in once:
            self._disable(name, index)

    def _disable(self, name: str, index: int) -> None:
        """A one-off schedule fired: `enabled = false` in its trigger, so it shows as done and never fires again."""
        self.scheduler.remove(key_of(name, index))
        self.triggers.pop(key_of(name, index), None)
        keeper = self.service.file
        try:
            text = keeper.read_current()
            new_text = set_trigger_enabled_text(text, name, index, False)
            keeper.commit_one(new_text, name, keeper.check_one(new_text, name))
        except Exception as exc:  # the file is broken or gone: the scheduler will not fire it again anyway
            log.warning("routine %s fired its one-off schedule but could not write enabled = false into trigger %d "
                        "of %s: %s", name, index + 1, keeper.path, exc)


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)
