"""The loop book's per-session heaps answer exactly what a look at every loop answers.

`LoopBook.due`, `next_wake_of`, `live_and_next_wake` and `next_wake` read a heap per session
(loops/book.py); here random sequences of everything that changes a loop (add, fire, end of turn,
wake-up, stop, resume, remove) are checked, after every step, against the definitions computed
from the loops themselves.
"""

import random

from zoneinfo import ZoneInfo

import pytest

from bgcore.jsonrpc import RpcError
from bgcore.schedule import parse_interval
from bgd.loops.book import Loop, LoopBook

UTC = ZoneInfo("UTC")
T0 = 1_800_000_000.0
SESSIONS = ("s1", "s2", "s3")
SCHEDULES = [parse_interval(spec) for spec in ("1m", "5m", "7m", "1h")]


def live(book, session_id):
    return [loop for loop in book._by_session.get(session_id, {}).values() if not loop.suspended]


def expected_next_wake(book, session_id):
    fires = [loop.next_fire for loop in live(book, session_id) if loop.next_fire is not None]
    return min(fires) if fires else None


def expected_due(book, now, busy):
    result = []
    for session_id, loops in book._by_session.items():
        if busy(session_id) or any(loop.in_flight for loop in loops.values()):
            continue
        ready = [loop for loop in live(book, session_id) if loop.next_fire is not None and loop.next_fire <= now]
        if ready:
            result.append(min(ready, key=lambda loop: (loop.next_fire, loop.created_at, loop.id)))
    return result


def check(book, now, busy):
    is_busy = lambda session_id: session_id in busy  # noqa: E731
    assert [loop.id for loop in book.due(now, is_busy)] == [loop.id for loop in expected_due(book, now, is_busy)]
    for session_id in SESSIONS:
        wake = expected_next_wake(book, session_id)
        assert book.next_wake_of(session_id) == wake
        assert book.live_and_next_wake(session_id) == (bool(live(book, session_id)), wake)
    wakes = [expected_next_wake(book, s) for s in book._by_session if s not in busy]
    wakes = [w for w in wakes if w is not None]
    assert book.next_wake(is_busy) == (min(wakes) if wakes else None)
    flying = {loop.session_id for loop in book.loops.values() if loop.in_flight}
    assert set(book.in_flight_sessions()) == flying


def new_loop(rng, n, now):
    schedule = rng.choice(SCHEDULES)
    kind = rng.choice(("fixed", "fixed", "dynamic", "once"))
    created = now + rng.choice((0, 0, 1, -1))  # ties in created_at fall to the id
    loop = Loop(id=f"l{rng.randrange(10 ** 6):06d}{n}", session_id=rng.choice(SESSIONS), kind=kind, prompt="p",
                created_at=created, human=schedule.human,
                cron=schedule.cron if kind == "fixed" else None,
                interval_s=schedule.interval_s if kind == "fixed" else None)
    loop.next_fire = now + rng.choice((-5, 0, 0, 10, 60, 300))
    if kind == "once":
        loop.at = loop.next_fire
    return loop


@pytest.mark.parametrize("seed", range(12))
def test_the_heaps_answer_what_a_scan_answers(seed):
    rng = random.Random(seed)
    book, now, busy = LoopBook(), T0, set()
    for n in range(400):
        step = rng.random()
        if step < 0.3:
            try:
                book.add(new_loop(rng, n, now))
            except RpcError:
                pass  # the cap per session
        elif step < 0.5:
            for loop in book.due(now, lambda s: s in busy)[:rng.randint(0, 3)]:
                book.fired(loop, now, UTC)
                busy.add(loop.session_id)
        elif step < 0.65 and busy:
            session_id = rng.choice(sorted(busy))
            busy.discard(session_id)
            book.turn_ended(session_id, now)
        elif step < 0.73:
            target = book.wakeup_target(rng.choice(SESSIONS))
            if target is not None:
                book.wakeup(target, now, rng.choice((30, 120, 4000)), "later", None)
        elif step < 0.78:
            session_id = rng.choice(SESSIONS)
            book.suspend_session(session_id)
            busy.discard(session_id)
        elif step < 0.83:
            book.restore_session(rng.choice(SESSIONS), now, UTC)
        elif step < 0.86 and book.loops:
            book.remove(book.loops[rng.choice(sorted(book.loops))])
        elif step < 0.88:
            book.drop_session(rng.choice(SESSIONS))
        else:
            now += rng.choice((1, 30, 60, 301, 3600, 3 * 86400))
        check(book, now, busy)


def test_next_fire_changed_from_outside_is_read_again_by_reindex():
    book = LoopBook()
    loops = []
    for i in range(5):
        schedule = SCHEDULES[0]
        loop = Loop(id=f"loop{i:04d}", session_id="s1", kind="fixed", prompt="p", created_at=T0 + i,
                    human=schedule.human, cron=schedule.cron, interval_s=schedule.interval_s, next_fire=T0 + 60)
        loops.append(book.add(loop))
    for loop in loops:
        loop.next_fire = float("inf")  # parked, as the loops benchmark does
    loops[3].next_fire = T0
    book.reindex()
    assert book.due(T0, lambda s: False) == [loops[3]]
    assert book.next_wake_of("s1") == T0
