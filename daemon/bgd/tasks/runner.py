"""Desktop tasks in the daemon (SPEC §7): the trio shell around tasks_file, Scheduler and RunGate.

`TaskService` owns the live task set (read from tasks.toml, the source of truth), the scheduler's
heap, the gate of running runs and the history in the store. Its loop sleeps until the next deadline
but never longer than `CHECK_S` (1 s) before re-reading the wall clock: trio sleeps on the monotonic
clock, which stops while the machine is suspended and does not follow wall-clock jumps, so a task due
during a suspend would otherwise fire only after the suspended time had passed again. The check costs
one comparison against the heap's top; nothing scans the tasks. With no task scheduled at all the
loop sleeps until something changes.

tasks.toml is watched and written by bgd.watched_file (changes debounced, well within the second §7
asks for). Edits made through the methods (`task.add`, …) write the file (a spliced section, see
tasks_file) and apply the one task they changed at once; the watcher then sees a file it already knows
(same digest) and does nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import trio

from bgcore.jsonrpc import (BAD_SCHEDULE, CONFLICT, INVALID_PARAMS, NOT_FOUND, TASKS_FILE_ERROR, RpcError)
from bgcore.schedule import ScheduleError, jitter_seconds, parse_schedule

from bgd import clock, watched_file
from bgcore.scheduler import Fire, Queued, RunGate, Scheduler, Skip, Skipped, Start, Stop
from bgcore.tasks_file import (FIELDS, Task, TaskFileError, add_task_text, edit_task_text, find_section, has_task,
                         load_tasks, remove_task_text, validate_name)

log = logging.getLogger("bgd.tasks")

CHECK_S = 1.0       # the longest the loop trusts the monotonic clock before re-reading the wall clock
PRUNE_CHECK_S = 3600.0  # worktrees are looked at at least this often
JUMP_S = 5.0        # wall clock ahead of the monotonic clock by more than this: the machine slept
BUSY = ("working", "needs_input")


class TaskService:
    def __init__(self, *, store, bus, sessions, config: Callable[[], Any], config_dir: Path, state_dir: Path,
                 now: Callable[[], datetime] = clock.now, tz=None, run_sync=trio.to_thread.run_sync):
        self.store = store
        self.bus = bus
        self.sessions = sessions
        self.config = config
        self.path = Path(config_dir) / "tasks.toml"
        self.state_dir = Path(state_dir)
        self.now = now
        self.run_sync = run_sync   # blocking work (git) off the trio thread
        self.tz = tz or clock.local_zone()
        self.tasks: dict[str, Task] = {}
        self.errors: list[TaskFileError] = []
        self.states: dict[str, dict] = store.load_task_states()
        self.scheduler = Scheduler()
        self.gate = RunGate(config().max_concurrent_runs)
        self.rows: dict[int, dict] = {}            # runs not yet final: run id -> its record
        self.run_sessions: dict[int, str] = {}     # run id -> session id
        self.session_runs: dict[str, int] = {}     # session id -> run id
        self._digest: str | None = None
        self._file_seen = False
        self._jitter = config().task_jitter
        self._nursery: trio.Nursery | None = None
        self._wake = trio.Event()
        self._prune_wake = trio.Event()
        sessions.on_turn_end.append(self._on_turn_end)
        sessions.on_session_end.append(lambda session, why: self._on_turn_end(session))
        sessions.on_always.append(self._on_always)

    # -- the service ------------------------------------------------------------------

    async def run(self, daemon=None, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Load tasks.toml, watch it, and fire tasks until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(watched_file.watch, self.path, self.reload_from_disk)
            nursery.start_soon(self._loop)
            nursery.start_soon(self._prune_loop)
            task_status.started()

    async def _loop(self) -> None:
        first = True
        last_wall, last_mono = self.now().timestamp(), trio.current_time()
        while True:
            now = self.now().timestamp()
            mono = trio.current_time()
            jump = (now - last_wall) - (mono - last_mono)
            last_wall, last_mono = now, mono
            reason, limit = ("daemon_down" if first else "asleep"), 1
            while True:  # the first due task alone, so that it starts at once; then the rest in chunks
                fires, skips = self.scheduler.due(now, reason, limit=limit)
                if not fires and not skips:
                    break
                if jump > JUMP_S:
                    log.info("the wall clock jumped %.0f s ahead of the monotonic one (suspend?): catching up", jump)
                    jump = 0.0
                await self._handle_due(fires, skips)
                limit = 64
            first = False
            deadline = self.scheduler.next_deadline()
            self._wake = trio.Event()
            if deadline is None:
                await self._wake.wait()
            else:
                with trio.move_on_after(min(max(deadline - now, 0.0), CHECK_S)):
                    await self._wake.wait()

    def _poke(self) -> None:
        self._wake.set()

    # -- worktrees --------------------------------------------------------------------

    async def _prune_loop(self) -> None:
        """Remove run worktrees `keep_worktrees_days` after their session ended: at start, when one
        falls due, when a run's session ends, and at least hourly (the wall clock may jump)."""
        while True:
            next_at = await self.prune_worktrees()
            self._prune_wake = trio.Event()
            wait = PRUNE_CHECK_S
            if next_at is not None:
                wait = min(wait, max((next_at - self.now()).total_seconds(), 0.0) + 1.0)
            with trio.move_on_after(wait):
                await self._prune_wake.wait()

    async def prune_worktrees(self):
        """Remove the worktrees that are due; when the next one falls due (or None)."""
        from bgd.tasks.pruning import prune_plan
        from bgd.tasks.worktrees import prune_worktree
        keep = timedelta(days=self.config().keep_worktrees_days)
        due, next_at = prune_plan(self.store.task_runs_with_worktrees(), self._session_info, self.now(), keep)
        for row in due:
            problem = await self.run_sync(prune_worktree, row.get("repo") or "", row["worktree"])
            if problem:
                log.warning("task %s: cannot remove the worktree of run %d: %s", row["task"], row["id"], problem)
                continue
            row["worktree_pruned_at"] = clock.iso(self.now())
            self.store.update_task_run(row["id"], row)
            self.bus.publish("task.worktree_pruned", task=row["task"], run=row)
        return next_at

    def _session_info(self, session_id: str):
        session = self.sessions.sessions.get(session_id)
        return None if session is None else (session.state, session.updated_at)

    # -- fires ------------------------------------------------------------------------

    async def _handle_due(self, fires: list[Fire], skips: list[Skip]) -> None:
        once_done: list[str] = []
        actions: list = []
        with self.store.transaction():
            for fire in fires:
                task = self.tasks.get(fire.task)
                if task is None:
                    continue
                actions += self._offer(task, fire)
                if task.schedule.kind == "once":
                    once_done.append(task.name)
                self._state(fire.task)["last_fired"] = clock.iso(fire.due_at)
        self._execute(actions)
        await trio.lowlevel.checkpoint()  # let the dispatches just started create their sessions
        with self.store.transaction():
            for skip in skips:
                self._record_skip(skip.task, skip.due_at, skip.reason, count=skip.count)
            for name in {s.task for s in skips} | {f.task for f in fires}:
                self._save_state(name)
        for name in once_done:
            self._disable_once(name)

    def _offer(self, task: Task, fire: Fire) -> list:
        row = {"task": task.name, "due_at": clock.iso(fire.due_at), "status": "queued", "reason": None,
               "catch_up": fire.catch_up, "manual": fire.manual, "session_id": None,
               "created_at": clock.iso(self.now()), "started_at": None, "error": None}
        run_id = self.store.add_task_run(task.name, row["due_at"], row)
        row["id"] = run_id
        self.rows[run_id] = row
        return self.gate.offer(run_id, task.name, "allow" if fire.manual else task.overlap, fire)

    def reattach(self) -> None:
        """Once the sessions are loaded: a run whose session carried on through a restart (on the
        cluster, its worker kept working) holds its slot and its task until that session's turn ends,
        so an overlap policy sees it as a run that never stopped."""
        for session in self.sessions.sessions.values():
            origin = getattr(session, "origin", "") or ""
            name = origin[len("task:"):] if origin.startswith("task:") else ""
            if not name or session.state not in BUSY or session.id not in self.sessions.runs:
                continue
            row = next((r for r in self.store.task_runs(name, limit=50) if r.get("session_id") == session.id), None)
            if row is None:
                continue
            self.run_sessions[row["id"]] = session.id
            self.session_runs[session.id] = row["id"]
            self.gate.resume(row["id"], name)

    def _record_skip(self, name: str, due_at: datetime, reason: str, count: int = 1) -> dict:
        row = {"task": name, "due_at": clock.iso(due_at), "status": "skipped", "reason": reason,
               "catch_up": False, "manual": False, "session_id": None, "created_at": clock.iso(self.now()),
               "started_at": None, "error": None}
        if count > 1:
            row["count"] = count
        row["id"] = self.store.add_task_run(name, row["due_at"], row)
        self.bus.publish("task.skipped", task=name, run=row)
        return row

    def _execute(self, actions: list) -> None:
        for action in actions:
            if isinstance(action, Start):
                self._nursery.start_soon(self._start_run, action.run_id, action.task, action.payload)
            elif isinstance(action, Skipped):
                row = self.rows.pop(action.run_id, None)
                if row is not None:
                    row.update(status="skipped", reason=action.reason)
                    self.store.update_task_run(action.run_id, row)
                    self.bus.publish("task.skipped", task=action.task, run=row)
            elif isinstance(action, Queued):
                row = self.rows.get(action.run_id)
                if row is not None:
                    row["reason"] = action.reason
                    self.store.update_task_run(action.run_id, row)
                    self.bus.publish("task.queued", task=action.task, run=row)
            elif isinstance(action, Stop):
                session_id = self.run_sessions.pop(action.run_id, None)
                if session_id is not None:
                    self.session_runs.pop(session_id, None)
                    session = self.sessions.sessions.get(session_id)
                    if session is not None and session.state in BUSY:
                        self._nursery.start_soon(self._stop_session, session)

    async def _stop_session(self, session) -> None:
        await self.sessions.stop(session, reason="replaced by a newer run of its task")

    async def _start_run(self, run_id: int, name: str, fire: Fire) -> None:
        row = self.rows.get(run_id)
        task = self.tasks.get(name)
        try:
            if task is None:
                raise _RunError(f"task {name!r} was removed before its run could start")
            prompt = self._prompt(task)
            cwd = task.cwd
            if task.worktree:
                from bgd.tasks.worktrees import WorktreeError, add_worktree, worktree_path
                try:
                    cwd = str(await self.run_sync(add_worktree, task.cwd, self.state_dir, name, run_id))
                except WorktreeError as exc:
                    raise _RunError(str(exc)) from None
                if row is not None:
                    row.update(worktree=str(worktree_path(self.state_dir, name, run_id)), repo=task.cwd)
            session = await self.sessions.dispatch(
                prompt, cwd, agent=task.agent, name=name, permission_mode=task.permission_mode, model=task.model,
                origin=f"task:{name}", always_allow=list(self._state(name).get("always_allow", [])),
                where=task.where)
        except (_RunError, RpcError, OSError) as exc:
            message = exc.message if isinstance(exc, RpcError) else str(exc)
            if row is not None:
                row.update(status="failed", error=message, started_at=clock.iso(self.now()))
                self.store.update_task_run(run_id, row)
                self.bus.publish("task.failed", task=name, run=row)
            self.rows.pop(run_id, None)
            log.warning("task %s: run %d could not start: %s", name, run_id, message)
            self._execute(self.gate.finished(run_id))
            return
        self.run_sessions[run_id] = session.id
        self.session_runs[session.id] = run_id
        if row is not None:
            row.update(status="ran", session_id=session.id, started_at=session.created_at,
                       cwd=cwd if cwd != task.cwd else None)
            self.store.update_task_run(run_id, row)
            self.bus.publish("task.fired", task=name, run=row)
        self.rows.pop(run_id, None)
        state = self._state(name)
        state["last_session"] = session.id
        self._save_state(name)
        if session.state not in BUSY:  # it ended before we could hear about it
            self._finished(run_id)

    def _prompt(self, task: Task) -> str:
        if task.prompt is not None:
            return task.prompt
        path = Path(os.path.expanduser(task.prompt_file))
        if not path.is_absolute():
            path = Path(task.cwd) / path
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise _RunError(f"cannot read prompt_file {str(path)!r}: {exc}") from None

    def _finished(self, run_id: int) -> None:
        session_id = self.run_sessions.pop(run_id, None)
        if session_id is not None:
            self.session_runs.pop(session_id, None)
        self._execute(self.gate.finished(run_id))

    def _on_turn_end(self, session) -> None:
        run_id = self.session_runs.get(session.id)
        if run_id is not None:
            self._finished(run_id)
        if (getattr(session, "origin", "") or "").startswith("task:"):
            self._prune_wake.set()   # its worktree may now fall due

    def _on_always(self, session, tool_name: str) -> None:
        origin = getattr(session, "origin", "") or ""
        if not origin.startswith("task:"):
            return
        name = origin[len("task:"):]
        allowed = self._state(name).setdefault("always_allow", [])
        if tool_name not in allowed:
            allowed.append(tool_name)
            self._save_state(name)

    def set_config(self, config) -> None:
        self._execute(self.gate.set_max(config.max_concurrent_runs))
        if config.task_jitter != self._jitter:
            self._jitter = config.task_jitter
            for task in self.tasks.values():
                if task.enabled:
                    self._schedule(task, task)

    # -- state ------------------------------------------------------------------------

    def _state(self, name: str) -> dict:
        return self.states.setdefault(name, {})

    def _save_state(self, name: str) -> None:
        state = self._state(name)
        last = self.scheduler.last_seen(name)
        if last is not None:
            state["last_seen"] = clock.iso(datetime.fromtimestamp(last, timezone.utc))
        self.store.save_task_state(name, state)

    def _schedule(self, task: Task, prev: Task | None) -> None:
        """Put `task` on the scheduler; fire times it has not yet accounted for are its to catch up."""
        name = task.name
        if not task.enabled:
            self.scheduler.remove(name)
            if self._state(name).get("enabled", True):
                self._state(name)["enabled"] = False
                self.store.save_task_state(name, self._state(name))
            return
        now = self.now().timestamp()
        state = self._state(name)
        identity = f"{task.schedule.spec}|{getattr(task.tz, 'key', task.tz)}"
        last_seen = clock.parse_iso(state.get("last_seen"))
        # Times missed while a task was paused, or under another schedule, are not its to catch up.
        fresh = last_seen is None or state.get("schedule") != identity or not state.get("enabled", True)
        since = now if fresh else min(last_seen.timestamp(), now)
        jitter = jitter_seconds(name, task.schedule, recurring=task.schedule.kind == "cron") if self._jitter else 0
        self.scheduler.set_task(name, task.schedule, task.tz, last_seen=since, jitter_s=jitter)
        if fresh or state.get("enabled") is False:
            state.update(schedule=identity, enabled=True)
            self._save_state(name)

    # -- tasks.toml -------------------------------------------------------------------

    def reload_from_disk(self) -> dict:
        """Read tasks.toml and apply it; a broken or missing file keeps the last valid tasks."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            if self._file_seen:
                self._set_errors([TaskFileError(
                    str(self.path), None, None,
                    "tasks.toml was deleted; the last tasks keep running. Restore it, or create an empty "
                    "tasks.toml to remove every task", fatal=True)])
                self._digest = None
            return self._summary()
        except (OSError, UnicodeDecodeError) as exc:
            self._set_errors([TaskFileError(str(self.path), None, None, f"cannot read it: {exc}", fatal=True)])
            self._digest = None
            return self._summary()
        self._file_seen = True
        return self._apply_text(text)

    def _apply_text(self, text: str, force: bool = False) -> dict:
        digest = hashlib.sha1(text.encode()).hexdigest()
        if digest == self._digest and not force:
            return self._summary()
        config = self.config()
        tasks, errors = load_tasks(text, str(self.path), self.now(), self.tz, previous=self.tasks,
                                   agents=set(config.agents))
        self._digest = digest
        if any(e.fatal for e in errors):
            self._set_errors(errors)
            return self._summary()
        # A task with an error keeps its last valid definition until it is fixed.
        for error in errors:
            if error.task and error.task not in tasks and error.task in self.tasks:
                tasks[error.task] = self.tasks[error.task]
        changes = self._apply_tasks(tasks)
        self._set_errors(errors, changes)
        return self._summary()

    def _apply_tasks(self, tasks: dict[str, Task]) -> dict:
        old = self.tasks
        removed = [name for name in old if name not in tasks]
        added, changed = [], []
        actions: list = []
        with self.store.transaction():
            for name in removed:
                self.scheduler.remove(name)
                actions += self.gate.forget(name)
            for name, task in tasks.items():
                prev = old.get(name)
                if prev is task:
                    continue
                (changed if prev is not None else added).append(name)
                self._schedule(task, prev)
        self.tasks = tasks
        if actions and self._nursery is not None:
            self._execute(actions)
        self._poke()
        return {"added": added, "changed": changed, "removed": removed}

    def _set_errors(self, errors: list[TaskFileError], changes: dict | None = None) -> None:
        had = bool(self.errors)
        self.errors = list(errors)
        if changes is not None and (changes["added"] or changes["changed"] or changes["removed"] or had):
            self.bus.publish("tasks.reloaded", **changes, errors=[e.to_json() for e in errors])
        if errors:
            for error in errors[:5]:
                log.warning("%s", error)
            self.bus.publish("tasks.error", errors=[e.to_json() for e in errors])

    def _summary(self) -> dict:
        return {"tasks": len(self.tasks), "errors": [e.to_json() for e in self.errors]}

    def _read_current(self) -> str:
        """The file's text, with outside edits not yet applied applied first."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = ""
        except (OSError, UnicodeDecodeError) as exc:
            raise RpcError(TASKS_FILE_ERROR, f"cannot read {self.path}: {exc}") from None
        if hashlib.sha1(text.encode()).hexdigest() != self._digest:
            self._file_seen = True
            self._apply_text(text)
        fatal = [e for e in self.errors if e.fatal]
        if fatal:
            raise RpcError(TASKS_FILE_ERROR, f"{fatal[0]}; fix tasks.toml first (`bgctl task ls` shows the errors)",
                           {"errors": [e.to_json() for e in fatal]})
        return text

    def _write(self, text: str) -> None:
        try:
            watched_file.write_atomically(self.path, text)
        except OSError as exc:
            raise RpcError(TASKS_FILE_ERROR, f"cannot write {self.path}: {exc.strerror or exc}") from None
        self._digest = hashlib.sha1(text.encode()).hexdigest()
        self._file_seen = True

    def _check_section(self, text: str, name: str) -> Task:
        """Validate the one task `name` in `text` (its section alone, so it is fast in a big file)."""
        span = find_section(text, name)
        piece = text[span[0]:span[1]] if span else text
        tasks, errors = load_tasks(piece, str(self.path), self.now(), self.tz, agents=set(self.config().agents))
        mine = [e for e in errors if e.task in (name, None)]
        if mine:
            raise RpcError(INVALID_PARAMS, mine[0].reason)
        return tasks[name]

    def _commit_one(self, text: str, name: str, task: Task | None) -> None:
        """Write `text` and apply the one task it changed (None: removed)."""
        self._write(text)
        tasks = dict(self.tasks)
        if task is None:
            tasks.pop(name, None)
        else:
            tasks[name] = task
        changes = self._apply_tasks(tasks)
        self._set_errors([e for e in self.errors if e.task != name], changes)

    # -- what the methods do ------------------------------------------------------------

    def get_task(self, name: str) -> Task:
        task = self.tasks.get(name)
        if task is None:
            near = [n for n in self.tasks if name in n or n in name][:3]
            raise RpcError(NOT_FOUND, f"no task {name!r}" + (f" (did you mean {', '.join(near)}?)" if near else "")
                           + "; `bgctl task ls` lists them")
        return task

    def task_json(self, task: Task) -> dict:
        data = task.to_json()
        state = self.states.get(task.name, {})
        nxt = self.scheduler.next_fire(task.name) if task.enabled else None
        ran_once = task.schedule.kind == "once" and not task.enabled and state.get("last_fired")
        data.update(
            status="ran" if ran_once else ("enabled" if task.enabled else "paused"),
            next_at=clock.iso(datetime.fromtimestamp(nxt, task.tz)) if nxt is not None else None,
            last_fired_at=state.get("last_fired"), last_session=state.get("last_session"),
            always_allow=list(state.get("always_allow", [])),
            running=[sid for rid, sid in self.run_sessions.items() if self.gate.active.get(rid) == task.name])
        return data

    def list_json(self) -> dict:
        return {"file": str(self.path), "tasks": [self.task_json(t) for t in self.tasks.values()],
                "errors": [e.to_json() for e in self.errors]}

    def _fields(self, params: dict, *, for_edit: bool) -> dict:
        fields: dict[str, Any] = {}
        for key, kind in FIELDS.items():
            if key not in params or params[key] is None:
                continue
            value = params[key]
            if not isinstance(value, kind) or (kind is str and isinstance(value, bool)):
                raise RpcError(INVALID_PARAMS, f"param {key!r} must be {'true or false' if kind is bool else 'a string'}")
            fields[key] = None if for_edit and value == "" and key not in ("prompt", "cwd", "schedule") else value
        if "cwd" in fields and fields["cwd"] is not None:
            fields["cwd"] = os.path.normpath(os.path.expanduser(fields["cwd"]))
        if "schedule" in fields:
            fields["schedule"] = self._pin_schedule(fields["schedule"], fields.get("timezone"))
        return fields

    def _pin_schedule(self, spec: str, zone_name: str | None) -> str:
        """Check the schedule, and write one-time forms relative to now (`in 45 minutes`) as the time."""
        tz = self.tz
        if zone_name:
            from zoneinfo import ZoneInfo
            try:
                tz = ZoneInfo(zone_name)
            except Exception:
                raise RpcError(INVALID_PARAMS, f"unknown timezone {zone_name!r}; use an IANA name such as "
                                               "Europe/Berlin") from None
        try:
            schedule = parse_schedule(spec, now=self.now(), tz=tz)
        except ScheduleError as exc:
            raise RpcError(BAD_SCHEDULE, str(exc), {"spec": spec, "position": exc.position,
                                                    "fragment": exc.fragment, "example": exc.example}) from None
        if schedule.kind == "once":
            if schedule.at <= self.now():
                raise RpcError(BAD_SCHEDULE, f"{schedule.human} has already passed",
                               {"spec": spec, "position": 0, "fragment": spec, "example": "tomorrow at 9am"})
            if spec.split()[0].lower() in ("in", "today", "tomorrow"):
                return schedule.human
        return spec

    async def add(self, name: str, params: dict) -> dict:
        if (why := validate_name(name)) is not None:
            raise RpcError(INVALID_PARAMS, why)
        fields = self._fields(params, for_edit=False)
        for key in ("schedule", "cwd"):
            if not fields.get(key):
                raise RpcError(INVALID_PARAMS, f"missing param {key!r}: a task needs a schedule and a cwd")
        if not fields.get("prompt") and not fields.get("prompt_file"):
            raise RpcError(INVALID_PARAMS, "missing param 'prompt' (or 'prompt_file'): what should each run do?")
        text = self._read_current()
        if name in self.tasks or any(e.task == name for e in self.errors) or find_section(text, name):
            raise RpcError(CONFLICT, f"a task named {name!r} already exists; `bgctl task edit {name}` changes it, "
                                     "or pick another name")
        if fields.get("worktree"):
            await self._check_repository(fields["cwd"])
        new_text = add_task_text(text, name, fields)
        task = self._check_section(new_text, name)
        self.states[name] = {}
        self.store.save_task_state(name, {})
        self._commit_one(new_text, name, task)
        return self.task_json(task)

    async def edit(self, name: str, params: dict) -> dict:
        old = self.get_task(name)
        changes = self._fields(params, for_edit=True)
        if not changes:
            raise RpcError(INVALID_PARAMS, "nothing to change: pass at least one field such as schedule or prompt")
        if changes.get("prompt"):
            changes.setdefault("prompt_file", None)
        elif changes.get("prompt_file"):
            changes.setdefault("prompt", None)
        text = self._read_current()
        if name not in self.tasks:
            raise RpcError(NOT_FOUND, f"task {name!r} was removed from tasks.toml meanwhile")
        if changes.get("worktree") or (old.worktree and changes.get("cwd")):
            await self._check_repository(changes.get("cwd") or old.cwd)
        new_text = edit_task_text(text, name, changes)
        task = self._check_section(new_text, name)
        self._commit_one(new_text, name, task)
        return self.task_json(task)

    async def _check_repository(self, cwd: str) -> None:
        from bgd.tasks.worktrees import check_repository
        problem = await trio.to_thread.run_sync(check_repository, cwd)
        if problem:
            raise RpcError(INVALID_PARAMS, problem)

    async def remove(self, name: str) -> dict:
        self.get_task(name)
        text = self._read_current()
        if not has_task(text, name):
            raise RpcError(NOT_FOUND, f"task {name!r} is not in tasks.toml any more")
        self._commit_one(remove_task_text(text, name), name, None)
        return {"name": name, "removed": True}

    async def set_enabled(self, name: str, enabled: bool) -> dict:
        task = self.get_task(name)
        if task.enabled == enabled:
            return self.task_json(task)
        text = self._read_current()
        new_text = edit_task_text(text, name, {"enabled": enabled})
        new_task = self._check_section(new_text, name)
        self._commit_one(new_text, name, new_task)
        return self.task_json(new_task)

    def _disable_once(self, name: str) -> None:
        """A one-time task fired: write enabled = false so it shows as ran and never fires again."""
        task = self.tasks.get(name)
        if task is None or not task.enabled:
            return
        state = self._state(name)
        state["enabled"] = False
        try:
            text = self._read_current()
            new_text = edit_task_text(text, name, {"enabled": False})
            self._commit_one(new_text, name, replace(task, enabled=False, raw={**task.raw, "enabled": False}))
        except Exception as exc:  # the file is broken or gone: the scheduler will not fire it again anyway
            log.warning("task %s fired once but could not be marked enabled = false in %s: %s", name, self.path, exc)
            self.scheduler.remove(name)
        self.store.save_task_state(name, state)

    async def run_now(self, name: str) -> dict:
        task = self.get_task(name)
        fire = Fire(name, self.now(), manual=True)
        actions = self._offer(task, fire)
        run_id = actions[0].run_id if actions else None
        self._execute(actions)
        # The run starts in the background; wait briefly for its session so the caller can follow it.
        with trio.move_on_after(10):
            while run_id in self.rows and self.rows[run_id].get("reason") is None:
                await trio.sleep(0.005)
        return self.history_row(name, run_id)

    def history_row(self, name: str, run_id: int | None) -> dict | None:
        if run_id in self.rows:
            return dict(self.rows[run_id])
        for row in self.store.task_runs(name, limit=50):
            if row["id"] == run_id:
                return row
        return None

    def history(self, name: str, limit: int = 1000) -> list[dict]:
        runs = self.store.task_runs(name, limit)
        if not runs and name not in self.tasks:
            self.get_task(name)
        # Newest due time first (a catch-up is recorded before the older times it skipped).
        runs.sort(key=lambda r: (r.get("due_at") or "", r["id"]), reverse=True)
        return [dict(self.rows.get(r["id"], r)) for r in runs]


class _RunError(Exception):
    pass


def install(daemon) -> TaskService:
    """Attach desktop tasks to the daemon: `daemon.tasks`, its service and the config hook."""
    service = TaskService(store=daemon.store, bus=daemon.bus, sessions=daemon.sessions, config=lambda: daemon.config,
                          config_dir=daemon.config_dir, state_dir=daemon.state_dir)
    daemon.tasks = service
    daemon.sessions.after_load.append(service.reattach)
    daemon.services.append(service.run)
    daemon.on_reload.append(service.set_config)
    return service
