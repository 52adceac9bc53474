"""Loop tasks (SPEC §6): the records and the pure rules of when they fire.

No trio, no clock reads, no I/O: every function takes `now` (a POSIX timestamp) and the zone, so a
week of a five-minute loop is tested in microseconds. `LoopBook` holds every loop of the daemon;
the trio shell (loop_runner.py) asks it what is due and when to wake, tells it what happened, and
persists the loops it hands back.

Three kinds of loop:
- `fixed`: a cron schedule (from an interval such as `5m`, or `cron_create`), recurring.
- `dynamic`: no schedule; after each iteration the agent asks for its next wake (`schedule_wakeup`).
  An iteration that neither reschedules nor stops gets one fallback wake 20 minutes later; if that
  iteration does not reschedule either, the loop ends.
- `once`: a reminder (`bgctl remind`, `cron_create recurring=false`): fires once, then is deleted.
Recurring loops (fixed and dynamic) fire one last time 7 days after creation and are deleted.
"""

from __future__ import annotations

import heapq
import itertools
import secrets
import string
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Iterable

from bgcore.jsonrpc import LIMIT_REACHED, RpcError
from bgcore.schedule import Schedule, jitter_seconds, next_fire_ts
from bgd.clock import iso_ts

MAX_LOOPS_PER_SESSION = 50
LIFETIME_S = 7 * 86400          # recurring loops expire this long after creation
FALLBACK_WAKE_S = 20 * 60       # a dynamic iteration that did not reschedule
WAKEUP_MIN_S, WAKEUP_MAX_S = 60, 3600
_ID_ALPHABET = string.ascii_lowercase + string.digits


_ID_SPACE = len(_ID_ALPHABET) ** 8


def new_loop_id(taken=frozenset()) -> str:
    """8 random characters of [a-z0-9]. `taken`: any container of ids in use (not copied: 10,000
    loops must not slow creation). One draw from the OS's random source, not one per character."""
    while True:
        n = secrets.randbelow(_ID_SPACE)
        chars = []
        for _ in range(8):
            n, digit = divmod(n, 36)
            chars.append(_ID_ALPHABET[digit])
        candidate = "".join(chars)
        if candidate not in taken:
            return candidate


def clamp_delay(delay_s: float) -> int:
    return int(min(max(delay_s, WAKEUP_MIN_S), WAKEUP_MAX_S))


_iso = iso_ts  # the loop object's times (docs/protocol.md): UTC, milliseconds


@dataclass
class Loop:
    id: str
    session_id: str
    kind: str                       # "fixed" | "dynamic" | "once"
    prompt: str | None              # None: a bare loop (loop.md, else the maintenance prompt)
    created_at: float
    human: str
    cron: str | None = None
    interval_s: int | None = None
    rounded_from: str | None = None
    at: float | None = None         # once: when it is due (before jitter)
    jitter_s: int = 0               # added to every scheduled fire (negative: early)
    next_fire: float | None = None  # None: a dynamic loop waiting for its iteration to end
    runs: int = 0
    last_fire: float | None = None
    reason: str | None = None       # the agent's reason for its next wake (dynamic)
    fallback: bool = False          # the pending wake is the 20-minute fallback
    in_flight: bool = False         # its iteration is the session's current turn
    rescheduled: bool = False       # the agent asked for a wake (or stop) during this iteration
    suspended: bool = False         # its session was stopped; `resume` may bring it back
    source: str = "bgctl"           # "bgctl" | "remind" | "mcp"
    note: str | None = None         # shown to the user, e.g. why a fixed interval was chosen

    @property
    def recurring(self) -> bool:
        return self.kind != "once"

    @property
    def expires_at(self) -> float:
        return self.created_at + LIFETIME_S if self.recurring else (self.at or self.created_at)

    def schedule(self) -> Schedule:
        return _schedule(self.human, self.cron, self.rounded_from, self.interval_s)

    def to_json(self) -> dict:
        """The public shape (docs/protocol.md, "The loop object")."""
        return {"id": self.id, "session": self.session_id, "kind": self.kind, "prompt": self.prompt,
                "bare": self.prompt is None, "cron": self.cron, "human": self.human,
                "rounded_from": self.rounded_from, "recurring": self.recurring,
                "created_at": _iso(self.created_at), "expires_at": _iso(self.expires_at),
                "next_fire_at": _iso(self.next_fire), "last_fire_at": _iso(self.last_fire),
                "runs": self.runs, "reason": self.reason, "fallback": self.fallback,
                "suspended": self.suspended, "source": self.source, "note": self.note}

    def to_record(self) -> dict:
        # Every field is a plain value and the instance holds nothing else: a shallow copy of its
        # dict, in field order (dataclasses.asdict recurses, 10x slower).
        return self.__dict__.copy()

    @classmethod
    def from_record(cls, data: dict) -> "Loop":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


@lru_cache(maxsize=1024)
def _schedule(human: str, cron: str | None, rounded_from: str | None, interval_s: int | None) -> Schedule:
    """A fixed loop's Schedule, asked for at every fire: one object per distinct schedule."""
    return Schedule(human, "cron", cron, None, human, rounded_from, interval_s)


def next_scheduled(loop: Loop, after: float, tz) -> float:
    """The fixed loop's next fire strictly after `after` (jitter included), never past its expiry:
    the fire at the expiry is its last."""
    base = next_fire_ts(loop.schedule(), after - loop.jitter_s, tz)
    fire = float(base) + loop.jitter_s if base is not None else loop.expires_at
    return min(fire, loop.expires_at)


def loop_jitter(loop_id: str, schedule: Schedule, *, recurring: bool, enabled: bool) -> int:
    """SPEC §6 jitter, deterministic from the id; 0 when `[loops] jitter = false`."""
    return jitter_seconds(loop_id, schedule, recurring=recurring, max_fraction=0.1 if enabled else 0.0)


@dataclass
class Outcome:
    """What one call changed: loops to save, loops that ended (to delete) with why."""

    changed: list[Loop] = field(default_factory=list)
    ended: list[tuple[Loop, str]] = field(default_factory=list)

    def merge(self, other: "Outcome") -> "Outcome":
        self.changed += other.changed
        self.ended += other.ended
        return self


class LoopBook:
    """Every loop of the daemon, indexed by session. Pure state and rules."""

    def __init__(self, loops: Iterable[Loop] = ()):
        self.loops: dict[str, Loop] = {}
        self._by_session: dict[str, dict[str, Loop]] = {}
        # Per session, the loops that may be in flight (a superset: every loop whose in_flight is
        # set is here, see fired and _index), so neither the shell's per-pass check nor the end of
        # a turn need look at every loop.
        self._flying: dict[str, list[Loop]] = {}
        # Per session, a heap of (next_fire, created_at, id, stamp, loop) over its live loops with a
        # next fire, so that "what is due" and "when next" cost O(log n) per session instead of a
        # look at each of its loops. Every change of a loop's next_fire or suspended goes through
        # _push (or _drop); an entry whose stamp is no longer the loop's is stale and is skipped.
        self._heaps: dict[str, list[tuple]] = {}
        self._stamps: dict[str, int] = {}
        self._stamp = itertools.count()
        for loop in loops:
            self._index(loop)

    def _index(self, loop: Loop) -> None:
        self.loops[loop.id] = loop
        self._by_session.setdefault(loop.session_id, {})[loop.id] = loop
        if loop.in_flight:
            self._fly(loop)
        self._push(loop)

    def _push(self, loop: Loop) -> None:
        """Note the loop's (new) next fire; call after every change of its next_fire or suspended."""
        if loop.next_fire is None or loop.suspended:
            self._stamps.pop(loop.id, None)
            return
        stamp = next(self._stamp)
        self._stamps[loop.id] = stamp
        heap = self._heaps.setdefault(loop.session_id, [])
        heapq.heappush(heap, (loop.next_fire, loop.created_at, loop.id, stamp, loop))
        if len(heap) > 2 * len(self._by_session.get(loop.session_id, ())) + 16:
            self._rebuild(loop.session_id)  # stale entries of loops rescheduled again and again

    def reindex(self) -> None:
        """Read every loop's next_fire and suspended again, after they were changed from outside
        the book (the loops benchmark parks loops and releases them all at one instant)."""
        for session_id in self._by_session:
            self._rebuild(session_id)

    def _rebuild(self, session_id: str) -> None:
        entries = []
        for loop in self._by_session.get(session_id, {}).values():
            if loop.next_fire is None or loop.suspended:
                self._stamps.pop(loop.id, None)
                continue
            stamp = next(self._stamp)
            self._stamps[loop.id] = stamp
            entries.append((loop.next_fire, loop.created_at, loop.id, stamp, loop))
        heapq.heapify(entries)
        self._heaps[session_id] = entries

    def _first(self, session_id: str) -> Loop | None:
        """The session's live loop that fires first (ties: created first, then the smaller id)."""
        heap = self._heaps.get(session_id)
        while heap:
            fire, _, loop_id, stamp, loop = heap[0]
            if self._stamps.get(loop_id) == stamp:
                if loop.next_fire == fire and not loop.suspended:
                    return loop
                # Changed from outside the book, which should have called reindex(): look again.
                self._rebuild(session_id)
                heap = self._heaps[session_id]
                return heap[0][4] if heap else None
            heapq.heappop(heap)
        return None

    def _fly(self, loop: Loop) -> None:
        flying = self._flying.setdefault(loop.session_id, [])
        if not any(other is loop for other in flying):
            flying.append(loop)

    def _in_flight(self, session_id: str) -> list[Loop]:
        """The session's live loops whose iteration is running, in the session's order."""
        flying = self._flying.get(session_id)
        if not flying:
            return []
        held = self._by_session.get(session_id, {})
        found = [loop for loop in flying if loop.in_flight and not loop.suspended and held.get(loop.id) is loop]
        if len(found) > 1:  # the session's order (of creation), as a scan of its loops gives
            found = [loop for loop in held.values() if loop.in_flight and not loop.suspended]
        return found

    def _drop(self, loop: Loop) -> None:
        self.loops.pop(loop.id, None)
        self._stamps.pop(loop.id, None)
        of_session = self._by_session.get(loop.session_id)
        if of_session is not None:
            of_session.pop(loop.id, None)
            if not of_session:
                del self._by_session[loop.session_id]
                self._heaps.pop(loop.session_id, None)

    # -- queries ------------------------------------------------------------------

    def get(self, loop_id: str) -> Loop | None:
        return self.loops.get(loop_id)

    def of_session(self, session_id: str, *, suspended: bool = False) -> list[Loop]:
        return [loop for loop in self._by_session.get(session_id, {}).values() if loop.suspended == suspended]

    def live_count(self, session_id: str) -> int:
        return len(self.of_session(session_id))

    def live_and_next_wake(self, session_id: str) -> tuple[bool, float | None]:
        """Whether the session has a live loop, and its next wake (`next_wake_of`)."""
        first = self._first(session_id)
        if first is not None:
            return True, first.next_fire
        return any(not loop.suspended for loop in self._by_session.get(session_id, {}).values()), None

    def session_ids(self) -> list[str]:
        return list(self._by_session)

    def next_wake_of(self, session_id: str) -> float | None:
        first = self._first(session_id)
        return None if first is None else first.next_fire

    def in_flight_sessions(self) -> list[str]:
        """Sessions with a loop whose iteration is running."""
        result = []
        for session_id, flying in list(self._flying.items()):
            held = self._by_session.get(session_id, {})
            if any(loop.in_flight and held.get(loop.id) is loop for loop in flying):
                result.append(session_id)
            else:
                del self._flying[session_id]
        return result

    def due(self, now: float, busy: Callable[[str], bool]) -> list[Loop]:
        """Loops to fire now: at most one per free session (its most overdue), since a fire makes the
        session busy. However many fires a loop missed, it fires once (no catch-up)."""
        # The shell asks after every batch of fires: per session, the top of its heap, not a look
        # at each of its loops (10,000 loops due together made that scan most of the dispatch).
        result = []
        for session_id in self._by_session:
            if busy(session_id) or self._flying.get(session_id) and self._in_flight(session_id):
                continue
            first = self._first(session_id)
            if first is not None and first.next_fire <= now:
                result.append(first)
        return result

    def next_wake(self, busy: Callable[[str], bool]) -> float | None:
        """When the shell must look again. Sessions that are busy are left out: the end of their
        turn pokes the shell."""
        wake = None
        for session_id in self._by_session:
            if not busy(session_id):
                fire = self.next_wake_of(session_id)
                if fire is not None and (wake is None or fire < wake):
                    wake = fire
        return wake

    # -- changes ------------------------------------------------------------------

    def add(self, loop: Loop) -> Loop:
        held = self._by_session.get(loop.session_id, ())
        # Counting the live ones only when the session holds enough loops for it to matter.
        if len(held) >= MAX_LOOPS_PER_SESSION and self.live_count(loop.session_id) >= MAX_LOOPS_PER_SESSION:
            raise RpcError(LIMIT_REACHED, f"session {loop.session_id} already has {MAX_LOOPS_PER_SESSION} loop "
                                          f"tasks, the most a session may have; stop one first "
                                          f"(`bgctl loop ls --session {loop.session_id}`, `bgctl loop stop ID`)")
        self._index(loop)
        return loop

    def remove(self, loop: Loop) -> None:
        self._drop(loop)

    def fired(self, loop: Loop, now: float, tz, *, skipped: bool = False) -> Outcome:
        """`loop` just started an iteration at `now` (or, `skipped`, could not start one)."""
        loop.runs += 0 if skipped else 1
        loop.last_fire = now
        loop.in_flight = True  # a skipped iteration ends at once: the caller calls turn_ended
        self._fly(loop)
        loop.rescheduled = False
        if loop.kind == "once" or now >= loop.expires_at:
            self._drop(loop)
            return Outcome(ended=[(loop, "expired" if loop.recurring else "fired")])
        if loop.kind == "fixed":
            loop.next_fire = next_scheduled(loop, now, tz)
        else:
            loop.next_fire = None  # the agent (or the fallback) decides when its iteration ends
        self._push(loop)
        return Outcome(changed=[loop])

    def turn_ended(self, session_id: str, now: float) -> Outcome:
        """The session's turn ended: dynamic loops whose iteration it was pick their next wake."""
        out = Outcome()
        in_flight = self._in_flight(session_id)
        self._flying.pop(session_id, None)
        for loop in in_flight:
            loop.in_flight = False
            if loop.kind == "dynamic" and not loop.rescheduled:
                if loop.fallback:
                    self._drop(loop)
                    out.ended.append((loop, "not_rescheduled"))
                    continue
                loop.fallback = True
                loop.reason = "fallback: the last iteration did not call schedule_wakeup"
                loop.next_fire = min(now + FALLBACK_WAKE_S, loop.expires_at)
                self._push(loop)
            loop.rescheduled = False
            if loop.kind != "fixed":
                out.changed.append(loop)
            # A fixed loop changed only in memory (no longer in flight): its record, saved at the
            # fire, is left as it is; after a restart recover() ends an iteration recorded as in
            # flight just so. One write less per fire.
        return out

    def wakeup_target(self, session_id: str) -> Loop | None:
        """The dynamic loop a `schedule_wakeup` of this session applies to: the one whose iteration
        is running, else the one that fired last."""
        dynamic = [loop for loop in self.of_session(session_id) if loop.kind == "dynamic"]
        in_flight = [loop for loop in dynamic if loop.in_flight]
        if in_flight:
            return in_flight[0]
        return max(dynamic, key=lambda loop: (loop.last_fire or 0, loop.created_at), default=None)

    def wakeup(self, loop: Loop, now: float, delay_s: float, reason: str, prompt: str | None) -> int:
        """The agent asked to run `loop` again in `delay_s` (clamped to 60–3600 s); returns the delay."""
        delay = clamp_delay(delay_s)
        loop.next_fire = min(now + delay, loop.expires_at)
        self._push(loop)
        loop.reason = reason
        loop.fallback = False
        loop.rescheduled = True
        if prompt:
            loop.prompt = prompt
        return delay

    def suspend_session(self, session_id: str) -> list[Loop]:
        """The session was stopped: its loops stop firing but are kept for `resume`."""
        loops = self.of_session(session_id)
        self._flying.pop(session_id, None)
        for loop in loops:
            loop.suspended = True
            loop.in_flight = False
            self._stamps.pop(loop.id, None)
        return loops

    def drop_session(self, session_id: str) -> list[Loop]:
        loops = list(self._by_session.get(session_id, {}).values())
        for loop in loops:
            self._drop(loop)
        return loops

    def restore_session(self, session_id: str, now: float, tz) -> Outcome:
        """`resume`: bring back the unexpired loops (recurring ones within 7 days of creation,
        one-shots not yet due); the rest are deleted. The cap still holds."""
        out = Outcome()
        for loop in sorted(self.of_session(session_id, suspended=True), key=lambda l: l.created_at):
            if now >= loop.expires_at:
                self._drop(loop)
                out.ended.append((loop, "expired"))
                continue
            if self.live_count(session_id) >= MAX_LOOPS_PER_SESSION:
                self._drop(loop)
                out.ended.append((loop, "limit_reached"))
                continue
            loop.suspended = False
            if loop.kind == "fixed":
                loop.next_fire = next_scheduled(loop, now, tz)
            elif loop.kind == "dynamic":
                loop.next_fire = max(loop.next_fire or now + FALLBACK_WAKE_S, now)
            self._push(loop)
            out.changed.append(loop)
        return out

    def recover(self, now: float) -> Outcome:
        """After a daemon restart: an iteration that was running is over (its turn died with the
        daemon); a dynamic one gets the usual fallback."""
        out = Outcome()
        for session_id in self.session_ids():
            if any(loop.in_flight for loop in self.of_session(session_id)):
                out.merge(self.turn_ended(session_id, now))
        return out
