"""When desktop tasks (SPEC §7) and routines' schedule triggers (§8) fire, and whether a fire may
start a run now. Pure: no trio, no I/O. ("task" below is whatever the caller schedules by name.)

`Scheduler` keeps a heap of (when, task) and answers two questions, as aioquic's timer does:
`next_deadline()` (when the shell must wake next) and `due(now)` (what fires or is skipped now). It
never scans every task: a call costs O(k log n) for the k tasks that are due. Times are POSIX
timestamps; the wall clock is the caller's business.

Missed fires (the daemon was down, the machine slept): when a task's fire times between the last one
it accounted for (`last_seen`, persisted by the caller) and now are more than one, or the one is late
by more than `LATE_S`, the most recent is fired as a catch-up and the older ones are skipped with the
reason the caller gives (`daemon_down` on start, `asleep` after a wall-clock jump). Only the last
`lookback_s` (7 days) count; a one-time task whose time is older than that is skipped as `expired`.

`RunGate` decides what a fire does given the runs already going: the task's overlap policy (skip,
buffer_one, replace, allow) and the global cap on concurrent runs (the rest wait, in order).
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bgcore.schedule import Schedule, next_fire_ts, previous_fire_times

LOOKBACK_S = 7 * 86400
LATE_S = 60.0          # a fire later than this is a catch-up, not an on-time fire
MAX_SKIPS_RECORDED = 1000  # per task and catch-up; more are summed into the oldest record


# ---------------------------------------------------------------- what is due

@dataclass(frozen=True)
class Fire:
    task: str
    due_at: datetime
    catch_up: bool = False
    manual: bool = False


@dataclass(frozen=True)
class Skip:
    task: str
    due_at: datetime
    reason: str
    count: int = 1  # > 1: this record stands for `count` skipped times ending at due_at


@dataclass
class _Entry:
    name: str
    schedule: Schedule
    tz: Any
    jitter_s: float
    last_seen: float
    gen: int
    next_ts: float | None = None  # the nominal time of the next fire


class Scheduler:
    def __init__(self, *, lookback_s: float = LOOKBACK_S, late_s: float = LATE_S):
        self.lookback_s = lookback_s
        self.late_s = late_s
        self._entries: dict[str, _Entry] = {}
        self._heap: list[tuple[float, int, str, int]] = []
        self._gen = itertools.count()

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def set_task(self, name: str, schedule: Schedule, tz, *, last_seen: float, jitter_s: float = 0.0) -> None:
        """Add or replace a task; fire times after `last_seen` are its to fire (or skip)."""
        entry = _Entry(name, schedule, tz, jitter_s, last_seen, next(self._gen))
        self._entries[name] = entry
        self._schedule_next(entry, last_seen)

    def remove(self, name: str) -> None:
        self._entries.pop(name, None)  # its heap item goes stale and is dropped when it surfaces

    def last_seen(self, name: str) -> float | None:
        entry = self._entries.get(name)
        return entry.last_seen if entry else None

    def next_fire(self, name: str) -> float | None:
        """The nominal time of the task's next fire (without jitter)."""
        entry = self._entries.get(name)
        return entry.next_ts if entry else None

    def next_deadline(self) -> float | None:
        """When the shell must call `due` next: the earliest fire instant, jitter included."""
        while self._heap:
            when, _, name, gen = self._heap[0]
            entry = self._entries.get(name)
            if entry is not None and entry.gen == gen:
                return when
            heapq.heappop(self._heap)
        return None

    def due(self, now: float, missed_reason: str = "asleep", limit: int | None = None) -> tuple[list[Fire], list[Skip]]:
        """What is due at `now`: fires (at most one per task) and the skipped times before them; at most
        `limit` tasks per call (call again until it returns nothing), so the first fire of a large
        batch can start before the others are computed."""
        fires: list[Fire] = []
        skips: list[Skip] = []
        taken = 0
        while (limit is None or taken < limit) and (deadline := self.next_deadline()) is not None and deadline <= now:
            taken += 1
            _, _, name, _ = heapq.heappop(self._heap)
            entry = self._entries[name]
            self._collect(entry, now, missed_reason, fires, skips)
        return fires, skips

    # -- internals ----------------------------------------------------------------

    def _schedule_next(self, entry: _Entry, after: float) -> None:
        nxt = next_fire_ts(entry.schedule, after, entry.tz)
        entry.next_ts = float(nxt) if nxt is not None else None
        if entry.next_ts is not None:
            heapq.heappush(self._heap, (entry.next_ts + entry.jitter_s, next(self._gen), entry.name, entry.gen))

    def _collect(self, entry: _Entry, now: float, reason: str, fires: list[Fire], skips: list[Skip]) -> None:
        horizon = now - entry.jitter_s  # nominal times up to here have reached their (jittered) instant
        oldest = max(entry.last_seen, now - self.lookback_s)
        tz = entry.tz
        if entry.schedule.kind == "once":
            at = entry.schedule.at.timestamp()
            if entry.last_seen < at <= oldest:
                skips.append(Skip(entry.name, _at(at, tz), "expired"))
        times = previous_fire_times(entry.schedule, _at(horizon, tz), _at(oldest, tz), tz) if horizon > oldest else []
        if times:
            latest = times[-1]
            late = horizon - latest.timestamp() > self.late_s
            fires.append(Fire(entry.name, latest, catch_up=late or len(times) > 1))
            older = times[:-1]
            if len(older) > MAX_SKIPS_RECORDED:
                cut = len(older) - MAX_SKIPS_RECORDED + 1
                skips.append(Skip(entry.name, older[cut - 1], reason, count=cut))
                older = older[cut:]
            skips.extend(Skip(entry.name, t, reason) for t in older)
            entry.last_seen = latest.timestamp()
        entry.last_seen = max(entry.last_seen, min(horizon, now))
        self._schedule_next(entry, entry.last_seen)


def _at(ts: float, tz) -> datetime:
    return datetime.fromtimestamp(ts, tz)


# ---------------------------------------------------------------- whether it may start

@dataclass(frozen=True)
class Start:
    run_id: int
    task: str
    payload: Any = None


@dataclass(frozen=True)
class Stop:
    run_id: int
    task: str


@dataclass(frozen=True)
class Skipped:
    run_id: int
    task: str
    reason: str


@dataclass(frozen=True)
class Queued:
    run_id: int
    task: str
    reason: str  # "buffer_one" (waits for the task's run) or "concurrency_limit" (waits for a slot)


@dataclass
class RunGate:
    """Overlap policies and the global cap. The caller reports each run's end with `finished`."""

    max_concurrent: int
    active: dict[int, str] = field(default_factory=dict)          # run id -> task
    waiting: deque = field(default_factory=deque)                  # (run id, task, payload) for a slot
    buffered: dict[str, tuple[int, Any]] = field(default_factory=dict)  # task -> the one run it buffers

    pending: dict[str, int] = field(default_factory=dict)        # task -> its runs active or waiting

    def busy(self, task: str) -> bool:
        return self.pending.get(task, 0) > 0 or task in self.buffered

    def _count(self, task: str, delta: int) -> None:
        count = self.pending.get(task, 0) + delta
        if count > 0:
            self.pending[task] = count
        else:
            self.pending.pop(task, None)

    def offer(self, run_id: int, task: str, overlap: str, payload: Any = None) -> list:
        """A fire of `task` wants to start (`overlap = "allow"` for a run started by hand)."""
        if overlap != "allow" and self.busy(task):
            if overlap == "skip":
                return [Skipped(run_id, task, "previous_run_active")]
            if overlap == "buffer_one":
                if task in self.buffered:
                    return [Skipped(run_id, task, "previous_run_active")]
                self.buffered[task] = (run_id, payload)
                return [Queued(run_id, task, "buffer_one")]
            if overlap == "replace":
                actions: list = [Stop(r, t) for r, t in self.active.items() if t == task]
                for action in actions:
                    del self.active[action.run_id]
                actions += [Skipped(r, t, "replaced") for r, t, _ in self.waiting if t == task]
                self.waiting = deque(w for w in self.waiting if w[1] != task)
                self.pending.pop(task, None)
                if task in self.buffered:
                    actions.append(Skipped(self.buffered.pop(task)[0], task, "replaced"))
                return actions + self._proceed(run_id, task, payload) + self._fill()
        return self._proceed(run_id, task, payload)

    def finished(self, run_id: int) -> list:
        """A run ended (or could not start): free its slot and start what waited for it."""
        task = self.active.pop(run_id, None)
        if task is None:
            return []
        self._count(task, -1)
        actions: list = []
        if task in self.buffered and not self.pending.get(task):
            buffered_id, payload = self.buffered.pop(task)
            actions += self._proceed(buffered_id, task, payload)
        return actions + self._fill()

    def resume(self, run_id: int, task: str) -> None:
        """A run that went on while the gate was away (a daemon restart): it holds its slot again,
        over the cap if need be, and its task is busy until it is `finished`."""
        if run_id not in self.active:
            self.active[run_id] = task
            self._count(task, +1)

    def set_max(self, max_concurrent: int) -> list:
        self.max_concurrent = max_concurrent
        return self._fill()

    def forget(self, task: str) -> list:
        """The task was removed: what waits for it will not run."""
        actions = [Skipped(r, t, "removed") for r, t, _ in self.waiting if t == task]
        if actions:
            self.waiting = deque(w for w in self.waiting if w[1] != task)
            self._count(task, -len(actions))
        if task in self.buffered:
            actions.append(Skipped(self.buffered.pop(task)[0], task, "removed"))
        return actions

    def _proceed(self, run_id: int, task: str, payload: Any) -> list:
        self._count(task, +1)
        if len(self.active) < self.max_concurrent:
            self.active[run_id] = task
            return [Start(run_id, task, payload)]
        self.waiting.append((run_id, task, payload))
        return [Queued(run_id, task, "concurrency_limit")]

    def _fill(self) -> list:
        actions: list = []
        while self.waiting and len(self.active) < self.max_concurrent:
            run_id, task, payload = self.waiting.popleft()
            self.active[run_id] = task
            actions.append(Start(run_id, task, payload))
        return actions
