"""The event bus's group commit of agent lines, and the clock's cheap ISO texts.

EventBus.record_soon holds an event with its own row until flush: one transaction for many,
the events still numbered in the order things happened and stored before anyone sees them.
clock.iso_ts and clock.now_iso give exactly what datetime's isoformat gives.
"""

import random
from datetime import datetime, timezone

import pytest
import trio

from bgd import clock
from bgd.events import EventBus
from bgd.store import Store


@pytest.fixture
def bus(tmp_path):
    store = Store(tmp_path / "bgd.sqlite3")
    yield EventBus(store)
    store.close()


def subscribed(bus):
    sub, _, _ = bus.subscribe(None, lambda event: True)
    return sub


def received(sub) -> list[bytes]:
    frames = []
    while True:
        try:
            frames.append(sub.receive.receive_nowait())
        except trio.WouldBlock:
            return frames


def entry_writer(bus, session_id, n, text):
    return lambda: bus.store.append_transcript(session_id, n, "2026-12-01T00:00:00.000+00:00", "agent", None, text)


def test_lines_wait_for_flush_then_are_stored_and_delivered_in_order(bus):
    sub = subscribed(bus)
    assert bus.record_soon(entry_writer(bus, "s1", 0, '{"a":1}'), "session.transcript", id="s1", entry={"n": 0})
    assert not bus.record_soon(entry_writer(bus, "s1", 1, '{"a":2}'), "session.transcript", id="s1", entry={"n": 1})
    assert received(sub) == [] and bus.store.transcript("s1") == [] and bus.store.last_event_seq() == 0
    bus.flush()
    assert [e["n"] for e in bus.store.transcript("s1")] == [0, 1]
    frames = received(sub)
    assert len(frames) == 2 and b'"seq":1' in frames[0] and b'"seq":2' in frames[1]
    assert [e["seq"] for e in bus.store.events_after(0)] == [1, 2]
    bus.flush()  # nothing waits: nothing happens
    assert received(sub) == []


def test_an_event_recorded_at_once_comes_after_the_lines_that_wait(bus):
    sub = subscribed(bus)
    bus.record_soon(entry_writer(bus, "s1", 0, "{}"), "session.transcript", id="s1", entry={"n": 0})
    bus.publish("session.updated", session={"id": "s1", "state": "completed"})
    events = bus.store.events_after(0)
    assert [(e["seq"], e["type"]) for e in events] == [(1, "session.transcript"), (2, "session.updated")]
    frames = received(sub)
    assert b"session.transcript" in frames[0] and b"session.updated" in frames[1]


def test_a_new_subscriber_gets_waiting_lines_from_the_store_not_twice(bus):
    bus.record_soon(entry_writer(bus, "s1", 0, "{}"), "session.transcript", id="s1", entry={"n": 0})
    sub, backlog, missed = bus.subscribe(0, lambda event: True)
    assert [e["seq"] for e in backlog] == [1] and not missed
    assert received(sub) == []


@pytest.mark.parametrize("ts", [0.0, 5e-7, 1.5e-6, 1_800_000_000.0, 1_800_000_000.0005, 1_800_000_000.9999995,
                                1_800_000_000.9999994, 1_764_575_047.1235, 253_402_300_799.9])
def test_iso_ts_is_isoformat_to_the_millisecond(ts):
    assert clock.iso_ts(ts) == datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")


def test_iso_ts_on_random_instants_and_none():
    rng = random.Random(7)
    for _ in range(20000):
        ts = rng.choice([rng.uniform(0, 4e9), rng.randint(0, 4 * 10 ** 9) + rng.randint(0, 999999) / 1e6])
        assert clock.iso_ts(ts) == datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")
    assert clock.iso_ts(None) is None
    with pytest.raises((OverflowError, ValueError)):
        clock.iso_ts(float("inf"))


def test_now_iso_is_the_current_millisecond():
    before = datetime.now(timezone.utc).replace(microsecond=0)
    text = clock.now_iso()
    after = datetime.now(timezone.utc)
    at = datetime.fromisoformat(text)
    assert before <= at <= after and text.endswith("+00:00") and len(text) == len("2026-12-01T00:00:00.000+00:00")
    assert clock.now_iso() >= text
