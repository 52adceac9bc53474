"""The trio shell around the loop core (loops.py): fires due loops, sleeps until the next one.

It sleeps until the earliest wake of a free session, or until poked: a loop was created, changed or
stopped, or a session with loops became free. There is no polling loop; the sleep is capped at
MAX_SLEEP_S only so that a wall-clock jump (suspend, NTP) is noticed within minutes.

It is also where loops meet sessions: a fire is a new turn (`sessions.start_turn`), the end of a
turn moves a session with live loops to `sleeping` with its `next_wake_at`, stopping a session
suspends its loops, `resume` restores them, and removing it deletes them. Every change to a loop is
saved to the store's `loops` table, so a daemon restart brings everything back.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

import trio

from bgcore.jsonrpc import INVALID_STATE, NOT_FOUND, RpcError
from bgcore.schedule import Schedule

from bgd import clock
from bgd.loops.prompt import LoopPromptError, bare_prompt
from bgd.loops.book import Loop, LoopBook, Outcome, loop_jitter, new_loop_id, next_scheduled

log = logging.getLogger("bgd.loops.book")

BUSY = ("working", "needs_input")
FREE_TO_SLEEP = ("completed", "failed", "sleeping")
MAX_SLEEP_S = 300.0
COMMAND_BACKEND_INTERVAL = "10m"
COMMAND_BACKEND_NOTE = ("the command backend cannot schedule its own wake-ups, so this loop runs "
                        "at a fixed 10-minute interval")


class LoopRunner:
    def __init__(self, sessions, bus, store, *, jitter: Callable[[], bool] = lambda: True,
                 now: Callable[[], float] | None = None, tz=None, home: Callable[[], str | None] | None = None):
        self.sessions = sessions
        self.bus = bus
        self.store = store
        self.jitter = jitter
        self.now = now or (lambda: clock.now().timestamp())
        self.tz = tz if tz is not None else clock.local_zone()
        self.home = home or (lambda: os.environ.get("HOME"))
        self.book = LoopBook()
        self._dirty: set[str] = set()
        self._poke = trio.Event()
        self.passes = 0  # how many times the shell looked at the book (tests, benchmarks)

    # -- wiring -------------------------------------------------------------------

    def install(self, daemon) -> None:
        self.sessions.on_turn_end.append(self.on_turn_end)
        self.sessions.on_session_end.append(self.on_session_end)
        daemon.on_resume.append(self.on_resume)
        self.bus.listeners.append(self.on_event)
        daemon.services.append(self.service)

    async def service(self, daemon=None, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.load()
        task_status.started()
        await self.run()

    def load(self) -> None:
        """Read the loops back after a restart; an iteration that was running is over."""
        for record in self.store.load_loops():
            loop = Loop.from_record(record)
            if loop.session_id not in self.sessions.sessions:
                self.store.delete_loop(loop.id)
                continue
            self.book._index(loop)  # no cap check: these were accepted before
        self._apply(self.book.recover(self.now()))
        for session in list(self.sessions.sessions.values()):
            self._refresh_session(session)

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            with _batch(self.store):
                self._flush()

    async def _run(self) -> None:
        while True:
            self._poke = trio.Event()  # before looking, so a poke during the pass is not lost
            await self.run_due()
            wake = self.book.next_wake(self._busy)
            delay = MAX_SLEEP_S if wake is None else min(max(wake - self.now(), 0.0), MAX_SLEEP_S)
            with trio.move_on_after(delay):
                await self._poke.wait()

    def poke(self) -> None:
        self._poke.set()

    # -- firing -------------------------------------------------------------------

    def _busy(self, session_id: str) -> bool:
        session = self.sessions.sessions.get(session_id)
        return session is not None and session.state in BUSY

    async def run_due(self) -> None:
        """Fire every loop that is due now (at most one per free session).

        The bookkeeping of a whole pass (loop records, events) is one SQLite transaction, and no
        await happens inside it; the turns start after it commits. 10,000 loops due at once are
        dispatched within a second (bench/bench_loops.py)."""
        self.passes += 1
        now = self.now()
        starts = []
        with _batch(self.store):
            self._flush()
            for session_id in self.book.in_flight_sessions():
                # A turn that ended without the hook (the agent died mid-turn) ends the iteration too.
                if not self._busy(session_id):
                    self._end_iteration(session_id, now)
            for loop in self.book.due(now, self._busy):
                start = self._prepare_fire(loop, now)
                if start is not None:
                    starts.append(start)
            self._flush()
        for session, prompt in starts:
            await self.sessions.start_turn(session, prompt)

    def _prepare_fire(self, loop: Loop, now: float):
        """The bookkeeping of one fire; returns (session, prompt) to start, or None (skipped)."""
        session = self.sessions.sessions.get(loop.session_id)
        if session is None:
            self.book.remove(loop)
            self._apply(Outcome(ended=[(loop, "session_removed")]))
            return None
        try:
            prompt = loop.prompt if loop.prompt is not None else self._bare(session.cwd)
        except LoopPromptError as exc:
            # Skip this iteration, keep the loop: the person fixes the file, the next one runs.
            error = f"loop {loop.id} skipped an iteration: {exc}"
            self._apply(self.book.fired(loop, now, self.tz, skipped=True))
            self._note(session, {"event": "loop", "loop": loop.id, "error": error})
            self.bus.publish("loop.skipped", loop=loop.to_json(), session=session.id, error=error)
            session.error = error
            self._end_iteration(session.id, now)
            return None
        self._apply(self.book.fired(loop, now, self.tz))
        session.loop_runs += 1
        # Busy from now on, so that nothing else fires in this session before its turn starts.
        session.state = "working"
        what = "reminder" if loop.kind == "once" else f"iteration {loop.runs}"
        self._note(session, {"event": "loop", "loop": loop.id,
                             "detail": f"{what} of loop {loop.id} ({loop.human})"})
        self.bus.publish("loop.fired", loop=loop.to_json(), session=session.id, iteration=loop.runs)
        return session, prompt

    def _bare(self, cwd: str) -> str:
        return bare_prompt(cwd, self.home())[0]

    # -- hooks --------------------------------------------------------------------

    def on_turn_end(self, session) -> None:
        self._end_iteration(session.id, self.now())

    def _end_iteration(self, session_id: str, now: float) -> None:
        self._apply(self.book.turn_ended(session_id, now))
        session = self.sessions.sessions.get(session_id)
        if session is not None:
            self._refresh_session(session)
        self.poke()

    def on_session_end(self, session, how: str) -> None:
        if how == "removed":
            for loop in self.book.drop_session(session.id):
                self.store.delete_loop(loop.id)
                self.bus.publish("loop.ended", loop=loop.to_json(), reason="session_removed")
        else:
            for loop in self.book.suspend_session(session.id):
                self.store.save_loop(loop.id, loop.session_id, loop.to_record())
                self.bus.publish("loop.ended", loop=loop.to_json(), reason="session_stopped")
        self.poke()

    def on_resume(self, session) -> None:
        self._apply(self.book.restore_session(session.id, self.now(), self.tz))
        self._flush()
        self._refresh_session(session)
        self.poke()

    def on_event(self, event: dict) -> None:
        if event.get("type") == "session.updated":
            data = event.get("session") or {}
            if data.get("id") in self.book._by_session and data.get("state") not in BUSY:
                self.poke()

    # -- creating, changing, stopping -----------------------------------------------

    def live_session(self, session_id: str):
        """The session a loop call names; a clear error when it has ended."""
        try:
            session = self.sessions.get(session_id)
        except RpcError as exc:
            if exc.code == NOT_FOUND:
                raise RpcError(NOT_FOUND, f"no session {session_id!r} (it does not exist or was removed); "
                                          "`bgctl ls --all` lists sessions") from None
            raise
        if session.state == "stopped":
            raise RpcError(INVALID_STATE, f"session {session.id} has ended (stopped), and its loops with it; "
                                          f"`bgctl resume {session.id}` continues it")
        return session

    def _new(self, session, kind: str, prompt: str | None, human: str, *, source: str, **fields: Any) -> Loop:
        taken = self.book.loops.keys()
        return Loop(id=new_loop_id(taken), session_id=session.id, kind=kind, prompt=prompt,
                    created_at=self.now(), human=human, source=source, **fields)

    def create_fixed(self, session, schedule: Schedule, prompt: str | None, *, run_now: bool = True,
                     source: str = "bgctl", note: str | None = None) -> Loop:
        loop = self._new(session, "fixed", prompt, schedule.human, source=source, cron=schedule.cron,
                         interval_s=schedule.interval_s, rounded_from=schedule.rounded_from, note=note)
        loop.jitter_s = loop_jitter(loop.id, schedule, recurring=True, enabled=self.jitter())
        loop.next_fire = loop.created_at if run_now else next_scheduled(loop, loop.created_at, self.tz)
        return self._added(loop, session)

    def create_dynamic(self, session, prompt: str | None, *, source: str = "bgctl") -> Loop:
        loop = self._new(session, "dynamic", prompt, "dynamic: the agent picks each next wake", source=source)
        loop.next_fire = loop.created_at
        return self._added(loop, session)

    def create_once(self, session, schedule: Schedule, prompt: str, *, source: str = "remind") -> Loop:
        at = schedule.at.timestamp()
        loop = self._new(session, "once", prompt, schedule.human, source=source, at=at)
        loop.jitter_s = loop_jitter(loop.id, schedule, recurring=False, enabled=self.jitter())
        loop.next_fire = at + loop.jitter_s
        return self._added(loop, session)

    def _added(self, loop: Loop, session) -> Loop:
        self.book.add(loop)
        with _batch(self.store):  # the loop and its event: one commit
            self.store.add_loop(loop.id, loop.session_id, loop.to_record())
            event = self.bus.record("loop.created", loop=loop.to_json())
        self.bus.deliver(*event)
        self._refresh_session(session)
        self.poke()
        return loop

    def stop(self, loop: Loop, reason: str = "stopped") -> None:
        self.book.remove(loop)
        self._apply(Outcome(ended=[(loop, reason)]))
        session = self.sessions.sessions.get(loop.session_id)
        if session is not None:
            self._note(session, {"event": "loop", "loop": loop.id, "detail": f"loop {loop.id} ended ({reason})"})
            self._refresh_session(session)
        self.poke()

    def wakeup(self, session, delay_s: float, reason: str, prompt: str | None, stop: bool) -> dict:
        """`schedule_wakeup`: the agent picks the next wake of its dynamic loop (or ends it)."""
        now = self.now()
        if stop:
            in_flight = [l for l in self.book.of_session(session.id) if l.in_flight]
            target = in_flight[0] if in_flight else self.book.wakeup_target(session.id)
            if target is None:
                raise RpcError(NOT_FOUND, f"session {session.id} has no loop to stop")
            target.rescheduled = True
            self.stop(target, "stopped_by_agent")
            return {"loop": target.to_json(), "stopped": True}
        loop = self.book.wakeup_target(session.id)
        if loop is None:
            loop = self.create_dynamic(session, prompt, source="mcp")
        delay = self.book.wakeup(loop, now, delay_s, reason, prompt)
        self._apply(Outcome(changed=[loop]))
        self._flush()  # acknowledged to the agent: on disk before the answer
        self.bus.publish("loop.updated", loop=loop.to_json())
        self._note(session, {"event": "wakeup", "loop": loop.id, "delay_s": delay, "reason": reason,
                             "detail": f"next wake of loop {loop.id} in {_duration(delay)}: {reason}"})
        self._refresh_session(session)
        self.poke()
        return {"loop": loop.to_json(), "delay_seconds": delay, "next_wake_at": clock.iso_ts(loop.next_fire)}

    # -- bookkeeping ----------------------------------------------------------------

    def _apply(self, out: Outcome) -> None:
        """Record what the core changed. Changed loops are saved at the end of the current pass (or
        the next one, which a poke starts at once): many changes, one transaction."""
        for loop in out.changed:
            self._dirty.add(loop.id)
        for loop, reason in out.ended:
            self._dirty.discard(loop.id)
            self.store.delete_loop(loop.id)
            self.bus.publish("loop.ended", loop=loop.to_json(), reason=reason)

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, set()
        for loop_id in dirty:
            loop = self.book.loops.get(loop_id)
            if loop is not None:
                self.store.save_loop(loop.id, loop.session_id, loop.to_record())

    def _refresh_session(self, session) -> None:
        """A free session with live loops is `sleeping` until its next wake; one whose last loop
        ended goes back to `completed`."""
        if session.state not in FREE_TO_SLEEP:
            return
        live, next_wake = self.book.live_and_next_wake(session.id)
        if live:
            wake = clock.iso_ts(next_wake)
            if session.state != "sleeping" or session.next_wake_at != wake:
                self.sessions.update(session, state="sleeping", next_wake_at=wake)
        elif session.state == "sleeping" or session.next_wake_at is not None:
            self.sessions.update(session, state="completed" if session.state == "sleeping" else session.state,
                                 next_wake_at=None)

    def _note(self, session, data: dict) -> None:
        self.sessions.note(session, data)


class _batch:
    """One SQLite transaction around synchronous bookkeeping (joins one already open)."""

    def __init__(self, store):
        db = getattr(store, "db", None)
        self.db = db if db is not None and not db.in_transaction else None

    def __enter__(self) -> None:
        if self.db is not None:
            self.db.execute("BEGIN")

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.db is not None:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"


def install(daemon) -> LoopRunner:
    """Attach loops and the MCP tools to the daemon (called from bgd.features.install)."""
    from bgd.agents.mcp_server import mcp_config_for
    runner = LoopRunner(daemon.sessions, daemon.bus, daemon.store, jitter=lambda: daemon.config.loop_jitter)
    runner.install(daemon)
    daemon.loops = runner
    daemon.sessions.mcp_config_for = lambda session: mcp_config_for(daemon, session)
    daemon.sessions.on_permission.append(allow_own_tools)
    return runner


def allow_own_tools(session, pending: dict) -> bool:
    """The daemon's own MCP tools only manage the session's own schedule: remember them as allowed
    (the session manager then answers), so a loop never stops in `needs_input` to ask about them."""
    from bgd.agents.mcp_server import SERVER_NAME
    tool = pending["tool_name"]
    if tool.startswith(f"mcp__{SERVER_NAME}__") and tool not in session.always_allow:
        session.always_allow.append(tool)
    return False
