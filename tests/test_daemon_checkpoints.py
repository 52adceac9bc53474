"""The daemon's WAL checkpointer on trio's virtual clock: when it runs, and that a failing
checkpoint costs a warning, not the daemon."""

from __future__ import annotations

import logging
import sqlite3

import trio

from bgd.daemon import CHECKPOINT_IDLE_S, CHECKPOINT_INTERVAL_S, Daemon


def _daemon(tmp_path, monkeypatch) -> Daemon:
    # A worker thread would race the virtual clock (it jumps while the thread runs);
    # here the checkpoint runs inline. The real thread is exercised end to end in test_daemon.
    async def inline(fn, *args, **kwargs):
        return fn(*args)
    monkeypatch.setattr(trio.to_thread, "run_sync", inline)
    return Daemon(tmp_path / "bgd.sock", tmp_path / "config", tmp_path / "state")


async def _run_checkpointer(daemon: Daemon, nursery: trio.Nursery, calls: list) -> None:
    def checkpoint():
        calls.append(1)
        return (0, 0, 0)
    daemon.store.checkpoint = checkpoint  # the real one is covered in test_core_units
    nursery.start_soon(daemon._checkpoints)
    await trio.sleep(0.01)  # it has taken note of the writes so far


async def test_checkpoints_follow_writes_and_idle_back_off(tmp_path, monkeypatch, autojump_clock):
    daemon = _daemon(tmp_path, monkeypatch)
    calls: list[int] = []
    async with trio.open_nursery() as nursery:
        await _run_checkpointer(daemon, nursery, calls)
        await trio.sleep(60)
        assert calls == []  # nothing written: no checkpoint
        daemon.store.save_session("a", {"id": "a"})
        await trio.sleep(CHECKPOINT_IDLE_S + 0.1)  # the idle wait has grown to its cap
        assert len(calls) == 1
        for i in range(80):  # 20 s of writes: noticed within the idle cap, then every interval
            daemon.store.save_session(f"b{i}", {"id": f"b{i}"})
            await trio.sleep(0.25)
        during = len(calls) - 1
        assert during >= (20 - CHECKPOINT_IDLE_S) / CHECKPOINT_INTERVAL_S
        await trio.sleep(120)  # idle again: at most the one for the last writes
        assert len(calls) - 1 - during <= 1
        nursery.cancel_scope.cancel()
    daemon.store.close()


async def test_a_failing_checkpoint_is_logged_and_the_next_one_runs(tmp_path, monkeypatch, autojump_clock, caplog):
    daemon = _daemon(tmp_path, monkeypatch)
    attempts = []

    def failing():
        attempts.append(1)
        raise sqlite3.OperationalError("disk I/O error")
    async with trio.open_nursery() as nursery:
        daemon.store.checkpoint = failing
        nursery.start_soon(daemon._checkpoints)
        await trio.sleep(0.01)
        with caplog.at_level(logging.WARNING, logger="bgd"):
            for i in range(2):
                daemon.store.save_session(f"s{i}", {"id": f"s{i}"})
                await trio.sleep(CHECKPOINT_IDLE_S + 0.1)
        assert len(attempts) == 2
        assert "WAL checkpoint failed (disk I/O error)" in caplog.text
        nursery.cancel_scope.cancel()
    daemon.store.close()
