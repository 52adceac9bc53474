"""The daemon's durable state: one SQLite database (WAL) in the state dir.

Sessions are stored as JSON documents keyed by id, transcript entries and
events as rows appended as they arrive.  The schema carries a version;
`MIGRATIONS[i]` takes a database from version i to i + 1, so later features
add a step at the end and never edit an old one.

Writes are small and frequent; WAL with synchronous=NORMAL makes each commit
cheap and survives a `kill -9` of the daemon (only a power loss can drop the
last commits).  The daemon's hot paths group related writes (a transcript entry and its
event; the agent lines read in one turn of the event loop; a pass of loop fires) in one
`transaction()`: one commit instead of several.

Checkpoints (copying the WAL back into the database file, with an fsync) are not
left to SQLite's automatic one, which runs inside whichever commit crosses 1,000
pages and stalled the event loop for milliseconds (the tail of the line -> event
latency).  The daemon calls `checkpoint()` from a worker thread instead: it uses
its own connection, and sqlite3 releases the GIL while it copies and syncs.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from bgd.fastjson import dumps_text, loads

MIGRATIONS: list[str] = [
    # 0 -> 1: sessions, transcripts, events.
    """
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        data TEXT NOT NULL
    );
    CREATE TABLE transcript (
        session_id TEXT NOT NULL,
        n INTEGER NOT NULL,
        ts TEXT NOT NULL,
        kind TEXT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (session_id, n)
    ) WITHOUT ROWID;
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        ts TEXT NOT NULL,
        type TEXT NOT NULL,
        data TEXT NOT NULL
    );
    """,
    # 1 -> 2: loop tasks (session-scoped) and runs of desktop tasks.
    """
    CREATE TABLE loops (
        id TEXT PRIMARY KEY,
        session_id TEXT NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX loops_by_session ON loops (session_id);
    CREATE TABLE task_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        task TEXT NOT NULL,
        due_at TEXT NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX task_runs_by_task ON task_runs (task, id);
    CREATE TABLE task_state (
        task TEXT PRIMARY KEY,
        data TEXT NOT NULL
    );
    """,
    # 2 -> 3: routines: their runs, state (token hash, schedule bookkeeping), GitHub deliveries and
    # Idempotency-Keys.
    """
    CREATE TABLE routine_runs (
        id TEXT PRIMARY KEY,
        routine TEXT NOT NULL,
        created_at TEXT NOT NULL,
        status TEXT NOT NULL,
        session_id TEXT,
        workspace_live INTEGER NOT NULL DEFAULT 0,
        data TEXT NOT NULL
    );
    CREATE INDEX routine_runs_by_routine ON routine_runs (routine, created_at);
    CREATE INDEX routine_runs_by_time ON routine_runs (created_at);
    CREATE INDEX routine_runs_by_status ON routine_runs (status);
    CREATE INDEX routine_runs_by_session ON routine_runs (session_id);
    CREATE INDEX routine_runs_with_workspace ON routine_runs (workspace_live);
    CREATE TABLE routine_state (
        routine TEXT PRIMARY KEY,
        data TEXT NOT NULL
    );
    CREATE TABLE routine_deliveries (
        id TEXT PRIMARY KEY,
        received_at REAL NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX routine_deliveries_by_time ON routine_deliveries (received_at);
    CREATE TABLE routine_idempotency (
        routine TEXT NOT NULL,
        key TEXT NOT NULL,
        created_at REAL NOT NULL,
        digest TEXT NOT NULL,
        answer TEXT NOT NULL,
        PRIMARY KEY (routine, key)
    );
    """,
    # 3 -> 4: the web page's logins (the SHA-256 of each login cookie, never the cookie).
    """
    CREATE TABLE web_logins (
        token_hash TEXT PRIMARY KEY,
        created_at TEXT NOT NULL,
        used_at TEXT NOT NULL
    );
    """,
    # 4 -> 5: cluster runs (SPEC §14): each run's applied record offset, the log segment each
    # worker's log is read from, and this daemon's owner name.
    """
    CREATE TABLE cluster_runs (
        workflow_id TEXT PRIMARY KEY,
        session_id TEXT NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX cluster_runs_by_session ON cluster_runs (session_id);
    CREATE TABLE cluster_logs (
        base TEXT PRIMARY KEY,
        segment INTEGER NOT NULL,
        event_id INTEGER NOT NULL
    );
    CREATE TABLE cluster_meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(RuntimeError):
    pass


class _Connection(sqlite3.Connection):
    """sqlite3's connection with one hook, `hold`: set while a group commit's transaction is open
    (bgd.group_commit), it is called before any statement, or look at `in_transaction`, from outside
    the group, and commits the group first; so no other writer ever joins it."""

    hold: Any = None

    def execute(self, *args: Any) -> sqlite3.Cursor:
        if self.hold is not None:
            self.hold()
        return super().execute(*args)

    @property
    def in_transaction(self) -> bool:  # type: ignore[override]
        if self.hold is not None:
            self.hold()
        return super().in_transaction


class Store:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, factory=_Connection)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.execute("PRAGMA wal_autocheckpoint=0")  # see checkpoint()
        self._checkpointer: sqlite3.Connection | None = None
        self._after_commit: list = []   # see after_commit
        self._migrate()

    # -- schema ---------------------------------------------------------------

    def schema_version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def _migrate(self) -> None:
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this bgd ({SCHEMA_VERSION}); "
                "upgrade bgagents or point BGD_STATE_DIR elsewhere")
        for step in range(version, SCHEMA_VERSION):
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[step].split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version = {step + 1}")
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def changes(self) -> int:
        """Rows written so far through this store (to tell whether a checkpoint has work)."""
        return self.db.total_changes

    def checkpoint(self) -> tuple[int, int, int]:
        """Copy committed WAL pages into the database file, without blocking writers.

        Safe to call from a worker thread while the owning thread keeps writing (one
        caller at a time).  Returns SQLite's (busy, wal pages, pages checkpointed)."""
        if self._checkpointer is None:
            self._checkpointer = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            self._checkpointer.execute("PRAGMA busy_timeout=5000")
        return tuple(self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone())

    def close(self) -> None:
        try:
            if self._checkpointer is not None:
                self._checkpointer.close()
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self.db.close()

    # -- sessions -------------------------------------------------------------

    def save_session(self, session_id: str, data: dict) -> None:
        self.db.execute("INSERT OR REPLACE INTO sessions (id, data) VALUES (?, ?)",
                        (session_id, dumps_text(data)))

    def delete_session(self, session_id: str) -> None:
        self.db.execute("BEGIN")
        self.db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
        self.db.execute("DELETE FROM transcript WHERE session_id = ?", (session_id,))
        self.db.execute("DELETE FROM loops WHERE session_id = ?", (session_id,))
        self.db.execute("COMMIT")

    def load_sessions(self) -> list[dict]:
        return [loads(row[0]) for row in self.db.execute("SELECT data FROM sessions")]

    # -- transcripts ----------------------------------------------------------

    def append_transcript(self, session_id: str, n: int, ts: str, kind: str, data: Any,
                          encoded: str | None = None) -> None:
        """`encoded`: `data`'s JSON text, when the caller has encoded it already."""
        self.db.execute("INSERT INTO transcript (session_id, n, ts, kind, data) VALUES (?, ?, ?, ?, ?)",
                        (session_id, n, ts, kind, dumps_text(data) if encoded is None else encoded))

    def transcript_length(self, session_id: str) -> int:
        row = self.db.execute("SELECT MAX(n) FROM transcript WHERE session_id = ?", (session_id,)).fetchone()
        return 0 if row[0] is None else row[0] + 1

    def transcript(self, session_id: str, since: int = -1, limit: int | None = None) -> list[dict]:
        sql = "SELECT n, ts, kind, data FROM transcript WHERE session_id = ? AND n > ? ORDER BY n"
        args: tuple = (session_id, since)
        if limit is not None:
            sql += " LIMIT ?"
            args += (limit,)
        return [{"n": n, "ts": ts, "kind": kind, "data": loads(data)}
                for n, ts, kind, data in self.db.execute(sql, args)]

    # -- events ---------------------------------------------------------------

    def last_event_seq(self) -> int:
        row = self.db.execute("SELECT MAX(seq) FROM events").fetchone()
        return row[0] or 0

    def first_event_seq(self) -> int:
        row = self.db.execute("SELECT MIN(seq) FROM events").fetchone()
        return row[0] or 0

    def append_event(self, seq: int, ts: str, type_: str, data: dict | str) -> None:
        """`data`: the event, or its JSON text when the caller has encoded it already."""
        self.db.execute("INSERT INTO events (seq, ts, type, data) VALUES (?, ?, ?, ?)",
                        (seq, ts, type_, data if isinstance(data, str) else dumps_text(data)))

    def events_after(self, seq: int, limit: int = 100_000) -> list[dict]:
        rows = self.db.execute("SELECT data FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))
        return [loads(row[0]) for row in rows]

    def trim_events(self, keep: int) -> None:
        self.db.execute("DELETE FROM events WHERE seq <= (SELECT MAX(seq) FROM events) - ?", (keep,))

    # -- loops and task runs (used by later features) --------------------------

    def save_loop(self, loop_id: str, session_id: str, data: dict) -> None:
        # A loop is saved at every fire and every end of its iteration: an UPDATE in place costs
        # a third of an INSERT OR REPLACE (a delete and an insert, index included).
        text = dumps_text(data)
        if self.db.execute("UPDATE loops SET data = ? WHERE id = ?", (text, loop_id)).rowcount == 0:
            self.db.execute("INSERT INTO loops (id, session_id, data) VALUES (?, ?, ?)", (loop_id, session_id, text))

    def add_loop(self, loop_id: str, session_id: str, data: dict) -> None:
        """A new loop: one statement, without save_loop's UPDATE that would find nothing."""
        self.db.execute("INSERT OR REPLACE INTO loops (id, session_id, data) VALUES (?, ?, ?)",
                        (loop_id, session_id, dumps_text(data)))

    def delete_loop(self, loop_id: str) -> None:
        self.db.execute("DELETE FROM loops WHERE id = ?", (loop_id,))

    def load_loops(self) -> list[dict]:
        return [loads(row[0]) for row in self.db.execute("SELECT data FROM loops")]

    def add_task_run(self, task: str, due_at: str, data: dict) -> int:
        cur = self.db.execute("INSERT INTO task_runs (task, due_at, data) VALUES (?, ?, ?)",
                              (task, due_at, dumps_text(data)))
        return cur.lastrowid

    def update_task_run(self, run_id: int, data: dict) -> None:
        self.db.execute("UPDATE task_runs SET data = ? WHERE id = ?", (dumps_text(data), run_id))

    def task_runs(self, task: str, limit: int = 1000) -> list[dict]:
        rows = self.db.execute("SELECT id, data FROM task_runs WHERE task = ? ORDER BY id DESC LIMIT ?",
                               (task, limit))
        return [dict(loads(data), id=run_id) for run_id, data in rows]

    def task_runs_with_worktrees(self) -> list[dict]:
        """Task runs whose worktree has not been pruned yet."""
        rows = self.db.execute("SELECT id, data FROM task_runs WHERE json_extract(data, '$.worktree') IS NOT NULL "
                               "AND json_extract(data, '$.worktree_pruned_at') IS NULL ORDER BY id")
        return [dict(loads(data), id=run_id) for run_id, data in rows]

    def save_task_state(self, task: str, data: dict) -> None:
        self.db.execute("INSERT OR REPLACE INTO task_state (task, data) VALUES (?, ?)", (task, dumps_text(data)))

    def load_task_states(self) -> dict[str, dict]:
        return {task: loads(data) for task, data in self.db.execute("SELECT task, data FROM task_state")}

    # -- cluster runs (bgd.cluster) -----------------------------------------------

    def save_cluster_run(self, workflow_id: str, session_id: str, data: dict) -> None:
        text = dumps_text(data)
        if self.db.execute("UPDATE cluster_runs SET data = ? WHERE workflow_id = ?", (text, workflow_id)).rowcount == 0:
            self.db.execute("INSERT INTO cluster_runs (workflow_id, session_id, data) VALUES (?, ?, ?)",
                            (workflow_id, session_id, text))

    def cluster_runs(self, session_id: str) -> list[dict]:
        rows = self.db.execute("SELECT data FROM cluster_runs WHERE session_id = ?", (session_id,))
        return [loads(row[0]) for row in rows]

    def cluster_run_count(self, session_id: str) -> int:
        return self.db.execute("SELECT COUNT(*) FROM cluster_runs WHERE session_id = ?", (session_id,)).fetchone()[0]

    def delete_cluster_runs(self, session_id: str) -> None:
        self.db.execute("DELETE FROM cluster_runs WHERE session_id = ?", (session_id,))

    def cluster_log_position(self, base: str) -> tuple[int, int] | None:
        """Where the owner has read a worker's log to: (segment, last history event applied)."""
        row = self.db.execute("SELECT segment, event_id FROM cluster_logs WHERE base = ?", (base,)).fetchone()
        return None if row is None else (row[0], row[1])

    def save_cluster_log(self, base: str, segment: int, event_id: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO cluster_logs (base, segment, event_id) VALUES (?, ?, ?)",
                        (base, segment, event_id))

    def cluster_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM cluster_meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_cluster_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO cluster_meta (key, value) VALUES (?, ?)", (key, value))

    # -- routines ---------------------------------------------------------------

    def save_routine_run(self, data: dict) -> None:
        """Insert or update a run record (its id, routine, creation time, status, session and whether its
        workspace still exists are columns too, for the queries below)."""
        text = dumps_text(data)
        live = 1 if data.get("workspace") and not data.get("workspace_removed_at") else 0
        if self.db.execute("UPDATE routine_runs SET status = ?, session_id = ?, workspace_live = ?, data = ? "
                           "WHERE id = ?", (data["status"], data.get("session_id"), live, text, data["id"])).rowcount == 0:
            self.db.execute("INSERT INTO routine_runs (id, routine, created_at, status, session_id, workspace_live, data) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?)", (data["id"], data["routine"], data["created_at"],
                                                             data["status"], data.get("session_id"), live, text))

    def routine_runs(self, routine: str | None = None, limit: int = 1000) -> list[dict]:
        """Run records, newest first (of one routine, or of all)."""
        if routine is None:
            rows = self.db.execute("SELECT data FROM routine_runs ORDER BY created_at DESC, rowid DESC LIMIT ?",
                                   (limit,))
        else:
            rows = self.db.execute("SELECT data FROM routine_runs WHERE routine = ? "
                                   "ORDER BY created_at DESC, rowid DESC LIMIT ?", (routine, limit))
        return [loads(row[0]) for row in rows]

    def routine_runs_with_status(self, statuses: tuple[str, ...]) -> list[dict]:
        marks = ",".join("?" * len(statuses))
        rows = self.db.execute(f"SELECT data FROM routine_runs WHERE status IN ({marks}) ORDER BY created_at, rowid",
                               statuses)
        return [loads(row[0]) for row in rows]

    def routine_run_sessions(self) -> list[tuple[str, str]]:
        """(session id, run id) of every run that had a session."""
        return list(self.db.execute("SELECT session_id, id FROM routine_runs WHERE session_id IS NOT NULL"))

    def routine_runs_with_workspace(self) -> list[dict]:
        rows = self.db.execute("SELECT data FROM routine_runs WHERE workspace_live = 1 ORDER BY created_at")
        return [loads(row[0]) for row in rows]

    def routine_runs_since(self, created_at: str) -> list[dict]:
        rows = self.db.execute("SELECT data FROM routine_runs WHERE created_at >= ? ORDER BY created_at, rowid",
                               (created_at,))
        return [loads(row[0]) for row in rows]

    def routine_run(self, run_id: str) -> dict | None:
        row = self.db.execute("SELECT data FROM routine_runs WHERE id = ?", (run_id,)).fetchone()
        return loads(row[0]) if row else None

    def delete_routine_state(self, routine: str) -> None:
        self.db.execute("DELETE FROM routine_state WHERE routine = ?", (routine,))

    def save_routine_state(self, routine: str, data: dict) -> None:
        self.db.execute("INSERT OR REPLACE INTO routine_state (routine, data) VALUES (?, ?)",
                        (routine, dumps_text(data)))

    def load_routine_states(self) -> dict[str, dict]:
        return {name: loads(data) for name, data in self.db.execute("SELECT routine, data FROM routine_state")}

    def save_delivery(self, delivery_id: str, received_at: float, data: dict) -> None:
        self.db.execute("INSERT OR REPLACE INTO routine_deliveries (id, received_at, data) VALUES (?, ?, ?)",
                        (delivery_id, received_at, dumps_text(data)))

    def count_duplicate_delivery(self, delivery_id: str, at_iso: str) -> None:
        """One more redelivery on a delivery's record: `duplicates` + 1 and `last_duplicate_at`."""
        self.db.execute("UPDATE routine_deliveries SET data = json_set(data, '$.duplicates', "
                        "coalesce(json_extract(data, '$.duplicates'), 0) + 1, '$.last_duplicate_at', ?) WHERE id = ?",
                        (at_iso, delivery_id))

    def deliveries(self, limit: int = 100) -> list[dict]:
        rows = self.db.execute("SELECT data FROM routine_deliveries ORDER BY received_at DESC LIMIT ?", (limit,))
        return [loads(row[0]) for row in rows]

    def delivery_ids_since(self, received_at: float) -> list[tuple[str, float]]:
        return list(self.db.execute("SELECT id, received_at FROM routine_deliveries WHERE received_at > ? "
                                    "ORDER BY received_at", (received_at,)))

    def prune_deliveries(self, before: float) -> None:
        self.db.execute("DELETE FROM routine_deliveries WHERE received_at <= ?", (before,))

    def save_idempotency(self, routine: str, key: str, created_at: float, digest: str, answer: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO routine_idempotency (routine, key, created_at, digest, answer) "
                        "VALUES (?, ?, ?, ?, ?)", (routine, key, created_at, digest, dumps_text(answer)))

    def idempotency_since(self, created_at: float) -> list[tuple[str, str, float, str, Any]]:
        rows = self.db.execute("SELECT routine, key, created_at, digest, answer FROM routine_idempotency "
                               "WHERE created_at > ? ORDER BY created_at", (created_at,))
        return [(r, k, at, d, loads(a)) for r, k, at, d, a in rows]

    def prune_idempotency(self, before: float) -> None:
        self.db.execute("DELETE FROM routine_idempotency WHERE created_at <= ?", (before,))

    # -- web logins -------------------------------------------------------------

    def add_web_login(self, token_hash: str, created_at: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO web_logins (token_hash, created_at, used_at) VALUES (?, ?, ?)",
                        (token_hash, created_at, created_at))

    def touch_web_login(self, token_hash: str, used_at: str) -> None:
        self.db.execute("UPDATE web_logins SET used_at = ? WHERE token_hash = ?", (used_at, token_hash))

    def web_logins(self) -> dict[str, str]:
        """Every login's hash and when it was last used."""
        return dict(self.db.execute("SELECT token_hash, used_at FROM web_logins"))

    def delete_web_logins(self, token_hashes: list[str] | None = None) -> int:
        """Delete the given logins, or all of them; returns how many went."""
        if token_hashes is None:
            return self.db.execute("DELETE FROM web_logins").rowcount
        return sum(self.db.execute("DELETE FROM web_logins WHERE token_hash = ?", (h,)).rowcount
                   for h in token_hashes)

    def transaction(self) -> "_Transaction":
        """One commit for the writes inside; inside another transaction it joins that one."""
        return _Transaction(self)

    def after_commit(self, fn) -> None:
        """Call `fn()` once the transaction now open commits (dropped if it rolls back)."""
        self._after_commit.append(fn)


class _Transaction:
    def __init__(self, store: Store):
        self.store = store
        self.db = store.db
        self.outer = False

    def __enter__(self) -> None:
        self.outer = not self.db.in_transaction
        if self.outer:
            self.db.execute("BEGIN")

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.outer:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")
            pending, self.store._after_commit = self.store._after_commit, []
            if not exc_type:
                for fn in pending:
                    fn()

