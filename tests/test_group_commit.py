"""The group commit of requests answered once stored: writers of one turn of the loop share a commit,
each answered after it; a writer that fails leaves nothing behind; no other writer joins the group."""

from __future__ import annotations

import sqlite3

import pytest
import trio

from bgd.events import EventBus
from bgd.group_commit import GroupCommit
from bgd.store import Store


def committed(path) -> list[str]:
    """The delivery ids another connection sees (what is committed)."""
    db = sqlite3.connect(path)
    try:
        return [row[0] for row in db.execute("SELECT id FROM routine_deliveries ORDER BY id")]
    finally:
        db.close()


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "bgd.sqlite3")
    yield store
    store.close()


async def test_writers_of_one_turn_share_one_commit_and_answer_after_it(store):
    group = GroupCommit(store)
    answered = []

    async def request(name: str) -> None:
        with group.writing() as stored:
            store.save_delivery(name, 1.0, {"id": name})
        assert name not in committed(store.path)   # written, not yet committed
        await stored.wait()
        answered.append((name, committed(store.path)))

    async with trio.open_nursery() as nursery:
        for name in ("a", "b", "c"):
            nursery.start_soon(request, name)
    assert sorted(answered) == [(n, ["a", "b", "c"]) for n in ("a", "b", "c")]
    assert (group.commits, group.writes) == (1, 3)


async def test_a_failing_writer_leaves_nothing_and_the_others_are_kept(store):
    group = GroupCommit(store)
    with group.writing() as stored:
        store.save_delivery("kept", 1.0, {})
    with pytest.raises(ValueError):
        with group.writing():
            store.save_delivery("dropped", 1.0, {})
            raise ValueError("a bug half-way")
    await stored.wait()
    assert committed(store.path) == ["kept"]


async def test_no_other_writer_joins_the_group(store):
    group = GroupCommit(store)
    bus = EventBus(store)
    seen = []
    bus.listeners.append(lambda event: seen.append((event["type"], committed(store.path))))
    with group.writing() as stored:
        store.save_delivery("grouped", 1.0, {})
        bus.publish("routine.delivery", delivery={"id": "grouped"})
    assert seen == []   # an event of the group reaches nobody before its commit
    # Anything else that touches the store commits the group first, and keeps its own transaction.
    with store.transaction():
        assert committed(store.path) == ["grouped"]
        store.save_delivery("other", 1.0, {})
    assert committed(store.path) == ["grouped", "other"]
    assert seen == [("routine.delivery", ["grouped"])]
    assert stored.done.is_set() and group.commits == 1
    await stored.wait()
    # A plain statement does the same.
    with group.writing() as stored:
        store.save_delivery("again", 1.0, {})
    store.deliveries(10)
    assert committed(store.path) == ["again", "grouped", "other"]
    await stored.wait()
