"""Group commit for requests that must be stored before they are answered (GitHub deliveries).

Each such request writes inside `writing()`, synchronously, then awaits the commit before it
answers. The first one opens a transaction and has it committed at the next turn of the trio loop;
the requests that write before then join it (each in a savepoint of its own, so a request that
fails leaves nothing behind), and all of them are answered once the one commit is done: a commit
per turn of the loop instead of one per request, and still nothing answered before it is durable.

No other writer joins the group: while it is open, the store's connection commits it before any
statement from outside (`Store` and its `hold` hook), so everything else keeps its own transactions
and commits as before. Events recorded by the group's requests reach subscribers after its commit,
as events always do (`EventBus.deliver`).
"""

from __future__ import annotations

import logging
import sqlite3
from contextlib import contextmanager
from typing import Iterator

import trio

from bgd.store import Store

log = logging.getLogger("bgd.store")


class CommitFailed(Exception):
    """The group's commit failed: nothing of it is stored, so its requests must not be answered as done."""


class _Group:
    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: str | None = None

    async def wait(self) -> None:
        """Until the group is committed; raises CommitFailed if it could not be."""
        await self.done.wait()
        if self.error is not None:
            raise CommitFailed(self.error)


class GroupCommit:
    def __init__(self, store: Store):
        self.store = store
        self._group: _Group | None = None
        self.commits = 0      # groups committed (for tests and profiles)
        self.writes = 0       # requests that wrote in them

    @contextmanager
    def writing(self) -> Iterator[_Group]:
        """Write a request's rows into the open group (opening one if need be); yields the group, whose
        `wait()` the request awaits before it answers. Synchronous: no await inside."""
        db = self.store.db
        group = self._group
        if group is None:
            db.in_transaction  # (through the hook: nothing else may be left open either)
            db.execute("BEGIN")
            group = self._group = _Group()
            trio.lowlevel.spawn_system_task(self._commit_soon, group, name="bgd group commit")
        db.hold = None
        try:
            db.execute("SAVEPOINT request")
            try:
                yield group
            except BaseException:
                db.execute("ROLLBACK TO request")
                raise
            finally:
                db.execute("RELEASE request")
        finally:
            if self._group is group:
                db.hold = self.commit
        self.writes += 1

    def commit(self) -> None:
        """Commit the open group now (the store calls it before any statement from outside it)."""
        group, self._group = self._group, None
        db = self.store.db
        db.hold = None
        if group is None:
            return
        pending, self.store._after_commit = self.store._after_commit, []
        try:
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            log.error("a group commit failed: %s", exc)
            group.error = f"the daemon could not store the request: {exc}"
            if db.in_transaction:
                db.execute("ROLLBACK")
        else:
            self.commits += 1
            for fn in pending:
                fn()
        group.done.set()

    async def _commit_soon(self, group: _Group) -> None:
        with trio.CancelScope(shield=True):  # committed even while the daemon stops
            await trio.lowlevel.cancel_shielded_checkpoint()
        if self._group is group:
            self.commit()
