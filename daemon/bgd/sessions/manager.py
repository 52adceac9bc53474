"""The session runner (SPEC §2, §5): every session's state changes, and its agent process.

A `Session` (sessions/model.py) is the durable record; a `Run` (sessions/run.py) is
the live agent process behind it, if any, with the backend driver that reads its
lines (agents/base.py).  The runner never asks which backend a session uses.

Every change goes through `SessionManager._changed`, which stores
the record and publishes `session.updated`, so the store, the event stream and
the clients never disagree.  Callbacks from a process check that it is still
the session's current run, so a stopped or replaced process cannot change the
session after the fact.

One exception, for throughput: an assistant line that only changes
`last_message` (a streaming session prints many) is `_touched`, not `_changed`:
the session is saved and published by a flusher at most TOUCH_FLUSH_S later,
once for all the lines in between, or at once by the next real change (which
carries the new `last_message`, so events stay in order).  The line itself is in
the transcript, stored and published within the same turn of the trio loop: the
lines read in one turn share a commit (`_record_soon`, EventBus.record_soon).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
from typing import Any, Awaitable, Callable

import trio

from bgcore.config import PERMISSION_MODES, Config
from bgcore.jsonrpc import INVALID_PARAMS, INVALID_STATE, NOT_FOUND, RpcError
from bgd import clock, fastjson
from bgd.agents.base import driver_class, one_line
from bgd.agents.process import AgentProcess, end_left_behind, start_time
from bgd.events import EventBus, clip
from bgd.sessions.model import BUSY, STATES, Session, new_id
from bgd.sessions.run import Run
from bgd.store import Store

log = logging.getLogger("bgd.sessions")

RESTART_ERROR = "bgd restarted while this session was working; reply to resume it"
SHUTDOWN_ERROR = "bgd shut down while this session was working; reply to resume it"
TOUCH_FLUSH_S = 0.25  # how late a last_message-only change may be saved and published


class LaunchRefused(Exception):
    """`wrap_launch` says this agent must not start (its message is the session's error)."""


__all__ = ["SessionManager", "Session", "STATES", "BUSY", "LaunchRefused", "new_id"]


class SessionManager:
    def __init__(self, store: Store, bus: EventBus, config: Callable[[], Config], config_path: str = "config.toml"):
        self.store = store
        self.bus = bus
        self.config = config
        self.config_path = config_path
        self.sessions: dict[str, Session] = {}
        self.runs: dict[str, Run] = {}
        self.transcript_len: dict[str, int] = {}
        self._touched_ids: set[str] = set()   # last_message changed, not yet saved (see _touched)
        self._flush_wake: trio.Event | None = None  # wakes _flusher (see _record_soon)
        self._counts: dict[str, int] = {}
        self._counts_key: tuple[int, int] | None = None
        self.nursery: trio.Nursery | None = None
        # Seams for later features (loops, tasks, MCP): plain callables.
        self.on_turn_end: list[Callable[[Session], None]] = []
        self.on_session_end: list[Callable[[Session, str], None]] = []   # (session, "stopped" | "removed")
        # (session, pending) -> True when the hook answered it itself (see _ask)
        self.on_permission: list[Callable[[Session, dict], bool]] = []
        self.on_always: list[Callable[[Session, str], None]] = []    # (session, tool name) after approve --always
        self.mcp_config_for: Callable[[Session], str | None] = lambda s: None
        # Where a session's process may run besides here: name -> placement (bgd.cluster), which
        # makes the process and driver stand-ins (`process(session, run, launch, agent, text)`).
        self.placements: dict[str, Any] = {}
        # (session) -> True when a placement takes the loaded session's live process over.
        self.on_load: list[Callable[[Session], bool]] = []
        # () once every session is loaded (and taken over where a placement could), before any
        # service starts: routines settles the runs that were open then.
        self.after_load: list[Callable[[], None]] = []
        # More environment and agent arguments at each start of a session's agent (routines: their
        # run's variables and env_file, kept in memory only; args_for also gets the backend's name,
        # since arguments are a backend's own), and what hides secrets in everything a session
        # keeps (its transcript, last message, error): session id -> mask(value). A masked session's
        # requests are answered by a hook (routines), so none waits in `pending` unmasked.
        self.env_for: list[Callable[[Session], dict[str, str]]] = []
        self.args_for: list[Callable[[Session, str], list[str]]] = []
        self.masks: dict[str, Callable[[Any], Any]] = {}
        # Wraps an agent's start (routine environments: a sandbox and its proxy): (session, argv,
        # env) -> (the argv to run instead, what to await once the process has exited, or None);
        # it may change env, and raises LaunchRefused when the agent must not start at all.
        self.wrap_launch: Callable[[Session, list[str], dict[str, str]],
                                   Awaitable[tuple[list[str], Callable[[], Awaitable[None]] | None]]] | None = None

    # -- loading ----------------------------------------------------------------

    def load(self) -> None:
        """Read every session back; those that were mid-turn failed with the daemon."""
        for record in self.store.load_sessions():
            session = Session.from_record(record)
            self.sessions[session.id] = session
            self.transcript_len[session.id] = self.store.transcript_length(session.id)
            if session.where != "local" and any(hook(session) for hook in self.on_load):
                continue  # its process runs elsewhere and carries on
            if session.state in BUSY or session.pid is not None:
                was_busy = session.state in BUSY
                if session.pid is not None and end_left_behind(session.pid, session.pid_started):
                    # The previous daemon died without stopping it (kill -9, a crash): it must not go
                    # on working unseen, nor beside the new process a reply or resume starts.
                    log.warning("session %s: ended its agent (pid %d), left running by the previous daemon",
                                session.id, session.pid)
                session.pid = session.pid_started = None
                if was_busy:
                    session.state = "failed"
                    session.error = RESTART_ERROR
                    session.waiting_for = None
                    session.pending = None
                    self._record(session, "daemon", {"event": "failed", "error": RESTART_ERROR})
                self._changed(session)
        for hook in self.after_load:
            hook()

    # -- queries ----------------------------------------------------------------

    def get(self, session_id: Any) -> Session:
        if not isinstance(session_id, str):
            raise RpcError(INVALID_PARAMS, "id must be a session id string")
        session = self.sessions.get(session_id)
        if session is None:
            matches = [s for s in self.sessions.values() if s.id.startswith(session_id) or s.name == session_id]
            if len(matches) == 1 and session_id:
                return matches[0]
            raise RpcError(NOT_FOUND, f"no session {session_id!r}; `bgctl ls --all` lists them")
        return session

    def transcript(self, session: Session, since: int = -1, limit: int | None = None) -> list[dict]:
        self.bus.flush()  # entries waiting for their group commit are part of it
        return self.store.transcript(session.id, since, limit)

    # -- creating ---------------------------------------------------------------

    async def dispatch(self, prompt: str, cwd: str, *, agent: str | None = None, name: str | None = None,
                       permission_mode: str | None = None, model: str | None = None,
                       origin: str = "dispatch", env: dict | None = None,
                       always_allow: list[str] | None = None, start: bool = True,
                       where: str = "local", run_key: str | None = None, workspace: dict | None = None,
                       prepare: Callable[[Session], None] | None = None) -> Session:
        """`workspace`: with `where` elsewhere, a fresh workspace the placement makes before the agent
        starts (a routine run on the cluster); `cwd` then names it there and is not looked for here."""
        config = self.config()
        if workspace is not None and where == "local":
            raise RpcError(INVALID_PARAMS, "a workspace made elsewhere needs a placement other than local")
        if where != "local":
            placement = self.placements.get(where)
            if placement is None:
                raise RpcError(INVALID_PARAMS, f"a session runs \"local\" or on one of: "
                                               f"{', '.join(sorted(self.placements)) or 'nothing else'}, not {where!r}")
            placement.check()   # before anything else: "no [cluster]" is the first thing to say
        if not isinstance(prompt, str) or not prompt.strip():
            raise RpcError(INVALID_PARAMS, "prompt must be a non-empty string")
        if workspace is None:
            if not isinstance(cwd, str) or not os.path.isabs(cwd):
                raise RpcError(INVALID_PARAMS, f"cwd must be an absolute path, not {cwd!r}")
            if not os.path.isdir(cwd):
                raise RpcError(INVALID_PARAMS, f"cwd {cwd!r} does not exist or is not a directory")
        agent_cfg = config.agent(agent)
        if agent_cfg is None:
            raise RpcError(INVALID_PARAMS, f"unknown agent {agent!r}; known agents: {', '.join(sorted(config.agents))} "
                                           f"(define others under [agents.NAME] in {self.config_path})")
        mode = permission_mode or config.permission_mode
        if mode not in PERMISSION_MODES:
            raise RpcError(INVALID_PARAMS, f"permission mode must be one of {', '.join(PERMISSION_MODES)}")
        if name is not None and (not isinstance(name, str) or len(name) > 200):
            raise RpcError(INVALID_PARAMS, "name must be a string of at most 200 characters")
        session = Session(id=new_id(self.sessions), cwd=os.path.normpath(cwd), agent=agent_cfg.name,
                          backend=agent_cfg.backend, prompt=prompt, name=name or None, permission_mode=mode,
                          model=model or config.model, origin=origin, env=dict(env or {}),
                          always_allow=list(always_allow or []), state="working" if start else "completed",
                          where=where, run_key=run_key, workspace=workspace)
        if prepare is not None:  # e.g. a routine's run learns its session (and its mask) before it starts
            prepare(session)
        self.sessions[session.id] = session
        self.transcript_len[session.id] = 0
        self.store.save_session(session.id, session.to_record())
        self.bus.publish("session.created", session=session.to_json())
        if start:
            # Yield once between creating and starting: when many sessions are
            # dispatched together (a burst of scheduled runs) every one of them
            # exists before any waits on its process start.
            await trio.lowlevel.checkpoint()
            await self.start_turn(session, prompt)
        return session

    # -- turns ------------------------------------------------------------------

    async def start_turn(self, session: Session, text: str, *, kind: str = "user") -> None:
        """Send `text` as a new turn, starting (or resuming) the agent process if needed."""
        session.state = "working"
        session.error = None
        session.waiting_for = None
        session.pending = None
        session.next_wake_at = None
        self._record(session, kind, {"text": text})
        run = self.runs.get(session.id)
        if run is not None and run.stopping:
            # The agent would see two processes on one conversation: let the old one go first.
            await run.process.exited.wait()
            run = None
        if run is not None and run.driver.keeps_process and not run.process.exited.is_set():
            run.in_turn = True
            run.turn_generation += 1
            self._changed(session)
            if await run.driver.turn(text):
                return
            self._detach(session)
        await self._spawn(session, text)

    async def _spawn(self, session: Session, text: str) -> None:
        config = self.config()
        agent_cfg = config.agents.get(session.agent)
        if agent_cfg is None:
            self._fail(session, f"agent {session.agent!r} is no longer defined in {self.config_path}; "
                                f"define it again under [agents.{session.agent}]")
            return
        run = Run(self, session, driver_class(agent_cfg.backend), agent_cfg)
        placement = self.placements.get(session.where) if session.where != "local" else None
        mcp_config = self.mcp_config_for(session)
        launch = run.driver.launch(text, mcp_config)
        extra: dict[str, str] = {}
        for hook in self.env_for:
            extra.update(hook(session))
        for hook in self.args_for:
            launch.argv += hook(session, agent_cfg.backend)
        if placement is not None:
            launch.env = {**launch.env, **extra}
            await self._spawn_placed(session, run, placement, agent_cfg, launch, text, mcp_config)
            return
        env = dict(os.environ)
        env.update(agent_cfg.env)
        env.update(session.env)
        env.update(launch.env)
        env.update(extra)
        env["BGD_SESSION_ID"] = session.id
        binary = launch.argv[0]
        if shutil.which(binary, path=env.get("PATH")) is None:
            hint = run.driver.install_hint
            self._fail(session, f"agent binary {binary!r} not found on PATH; install it"
                                + (f" ({hint})" if hint else "") + " or set "
                                f"command = [\"/full/path/to/{os.path.basename(binary)}\"] under "
                                f"[agents.{agent_cfg.name}] in {self.config_path}")
            return
        argv = launch.argv
        if self.wrap_launch is not None:
            try:
                argv, run.cleanup = await self.wrap_launch(session, argv, env)
            except LaunchRefused as exc:
                self._fail(session, str(exc))
                return
            if argv is not launch.argv and (self.sessions.get(session.id) is not session
                                            or session.state == "stopped"):
                await run.end()  # stopped or removed while its sandbox was being made
                return
        run.process = AgentProcess(argv, session.cwd, env,
                                   on_line=lambda line: self._on_line(session, run, line),
                                   on_exit=lambda code: self._on_exit(session, run, code),
                                   stdin_text=launch.stdin)
        try:
            await run.process.start(self.nursery)
        except OSError as exc:
            await run.end()
            self._fail(session, f"cannot start agent {binary!r}: {exc.strerror or exc}; check [agents.{agent_cfg.name}] "
                                f"command in {self.config_path}")
            return
        self.runs[session.id] = run
        session.pid = run.process.pid
        session.pid_started = start_time(session.pid) if session.pid is not None else None
        session.has_history = run.driver.provides_history or session.has_history
        self._changed(session)
        await run.driver.started(text)

    async def _spawn_placed(self, session: Session, run: Run, placement: Any, agent_cfg, launch, text: str,
                            mcp_config: str | None) -> None:
        """A process that runs elsewhere (SPEC §14): the placement makes its stand-ins and starts it
        (and gives the daemon's MCP server in `mcp_config` a way back here)."""
        try:
            run.process = placement.process(session, run, launch, agent_cfg, text, mcp_config=mcp_config,
                                            on_exit=lambda code: self._on_exit(session, run, code))
            await run.process.start(self.nursery)
        except (RpcError, OSError) as exc:
            self._fail(session, exc.message if isinstance(exc, RpcError) else str(exc))
            return
        self.runs[session.id] = run
        session.pid = None
        session.has_history = run.driver.provides_history or session.has_history
        self._changed(session)
        await run.driver.started(text)

    def adopt(self, session: Session, build: Callable[[Run, Callable[[int], None]], Any]) -> Run | None:
        """Take over, at load, a live process that runs elsewhere (a placement's `on_load` hook):
        `build(run, on_exit)` makes its process stand-in.  None when its agent is no longer defined."""
        agent_cfg = self.config().agents.get(session.agent)
        if agent_cfg is None:
            return None
        run = Run(self, session, driver_class(agent_cfg.backend), agent_cfg)
        run.process = build(run, lambda code: self._on_exit(session, run, code))
        run.in_turn = session.state in BUSY
        self.runs[session.id] = run
        session.pid = None
        return run

    # -- agent output (through the run's driver) ------------------------------------

    def _current(self, session: Session, run: Run) -> bool:
        return self.runs.get(session.id) is run and self.sessions.get(session.id) is session

    def _on_line(self, session: Session, run: Run, line: bytes) -> None:
        if self._current(session, run):
            run.driver.line(line)

    def _ask(self, session: Session, run: Run, pending: dict) -> None:
        """The agent asks a person (a permission or a question): needs_input, unless a hook or an
        earlier `approve --always` answers it."""
        for hook in self.on_permission:
            if hook(session, pending):
                return
        if pending["tool_name"] in session.always_allow:
            self.nursery.start_soon(self._answer_quietly, run, pending)
            self._record(session, "control", {"decision": "allow", "tool_name": pending["tool_name"],
                                              "request_id": pending["request_id"], "rule": "always"})
            return
        session.pending = dict(pending, since=clock.now_iso())
        session.state = "needs_input"
        session.waiting_for = pending.get("kind", "permission")
        self._changed(session)

    async def _answer_quietly(self, run: Run, pending: dict, answer: str | None = None) -> None:
        try:
            await run.driver.answer(pending, "allow", always=False, message=None, answer=answer)
        except RpcError as exc:  # a run elsewhere may refuse it (the request is gone there)
            self.note(run.session, {"event": "answer_refused", "error": exc.message})

    def auto_answer(self, session: Session, pending: dict, *, answer: str | None = None, why: str = "auto") -> None:
        """Allow a request at once with nobody asked (an autonomous run); `answer` answers a
        question. For an `on_permission` hook, which then returns True."""
        run = self.runs.get(session.id)
        if run is None:
            return
        self.nursery.start_soon(self._answer_quietly, run, pending, answer)
        self._record(session, "control", {"decision": "allow", "tool_name": pending["tool_name"],
                                          "request_id": pending["request_id"], "rule": why, "answer": answer})

    def _withdraw(self, session: Session, request_id: str) -> None:
        if session.pending and session.pending.get("request_id") == request_id:
            session.pending = None
            session.waiting_for = None
            session.state = "working"
            self._changed(session)

    def _turn_done(self, session: Session, run: Run, *, error: str | None, cost_usd: float | None,
                   turns: int | None, text: str | None) -> None:
        run.in_turn = False
        if cost_usd is not None:   # per process: earlier processes' cost is in cost_base
            session.cost_usd = session.cost_base + cost_usd
        if turns:
            session.turns += turns
        session.pending = None
        session.waiting_for = None
        mask = self.masks.get(session.id)
        if mask is not None:
            text, error = mask(text), mask(error)
        if text:
            session.last_message = one_line(text)
        if run.stopping:
            return
        if error:
            session.state = "failed"
            session.error = error
        else:
            session.state = "completed"
        self._changed(session)
        self._turn_ended(session)
        if run.driver.keeps_process:
            self.nursery.start_soon(self._close_when_idle, session, run, run.turn_generation)

    async def _close_when_idle(self, session: Session, run: Run, generation: int) -> None:
        await trio.sleep(self.config().idle_timeout_s)
        if self._current(session, run) and not run.in_turn and run.turn_generation == generation:
            # stdin closed first (most agents exit then); SIGTERM after the grace for those that do not.
            await run.process.shutdown(self.config().stop_grace_s)

    def _on_exit(self, session: Session, run: Run, code: int) -> None:
        current = self._current(session, run)
        if session.cost_usd is not None and session.cost_usd > session.cost_base:
            session.cost_base = session.cost_usd
        if self.sessions.get(session.id) is session:
            session.pid = None
            if run.stopping:
                self._changed(session)
            elif current:
                run.driver.exited(code)   # still current, so what it reports counts
            else:
                self._changed(session)
        if self.runs.get(session.id) is run:
            del self.runs[session.id]
        if run.cleanup is not None:
            self.nursery.start_soon(run.end)

    def _died(self, session: Session, run: Run, code: int) -> None:
        """The process ended on its own: a session mid-turn failed (a reply resumes it)."""
        if session.state in BUSY:
            tail = run.stderr_tail()
            self._set_failed(session, f"the agent exited mid-turn ({_describe_exit(code)})"
                                      + (f": {tail}" if tail else "") + "; reply to resume it")
        self._changed(session)

    def _turn_ended(self, session: Session) -> None:
        for hook in self.on_turn_end:
            hook(session)

    # -- a person's answers -------------------------------------------------------

    async def reply(self, session: Session, text: str) -> None:
        if not isinstance(text, str) or not text.strip():
            raise RpcError(INVALID_PARAMS, "the reply text must be a non-empty string")
        if session.state == "working":
            raise RpcError(INVALID_STATE, f"session {session.id} is working; wait for it to finish or stop it")
        if session.state == "needs_input" and session.pending:
            if session.pending["kind"] == "question":
                await self.respond(session, "allow", answer=text)
            else:
                await self.respond(session, "deny", message=text)
            return
        await self.start_turn(session, text)

    async def respond(self, session: Session, decision: str, *, always: bool = False, message: str | None = None,
                      answer: str | None = None, request_id: str | None = None) -> None:
        pending = session.pending
        if session.state != "needs_input" or pending is None:
            raise RpcError(INVALID_STATE, f"session {session.id} is not waiting for a decision (it is {session.state}); "
                                          "it may have been answered elsewhere")
        if request_id is not None and request_id != pending["request_id"]:
            raise RpcError(INVALID_STATE, f"that request of session {session.id} was already answered or withdrawn")
        if decision not in ("allow", "deny"):
            raise RpcError(INVALID_PARAMS, 'decision must be "allow" or "deny"')
        run = self.runs.get(session.id)
        if run is None:
            raise RpcError(INVALID_STATE, f"session {session.id} has no running agent to answer")
        if decision == "allow" and always and pending["tool_name"] not in session.always_allow:
            session.always_allow.append(pending["tool_name"])
            for hook in self.on_always:
                hook(session, pending["tool_name"])
        session.pending = None
        session.waiting_for = None
        session.state = "working"
        self._record(session, "control", {"decision": decision, "tool_name": pending["tool_name"],
                                          "request_id": pending["request_id"], "always": always,
                                          "message": message, "answer": answer})
        self._changed(session)
        await run.driver.answer(pending, decision, always=always, message=message, answer=answer)

    # -- stopping and removing ----------------------------------------------------

    async def stop(self, session: Session, *, reason: str = "stopped") -> None:
        run = self.runs.get(session.id)
        if run is not None:
            self._stop_run(run)
        session.state = "stopped"
        session.waiting_for = None
        session.pending = None
        session.next_wake_at = None
        self._record(session, "daemon", {"event": reason})
        self._changed(session)
        for hook in self.on_session_end:
            hook(session, "stopped")

    def _stop_run(self, run: Run) -> None:
        if run.stopping:
            return
        run.stopping = True
        self.nursery.start_soon(self._shutdown_run, run)

    async def _shutdown_run(self, run: Run) -> None:
        if run.in_turn:
            await run.driver.interrupt()
        await run.process.shutdown(self.config().stop_grace_s)

    async def remove(self, session: Session) -> None:
        self.bus.flush()  # no entry of it may be written after it is deleted
        run = self.runs.pop(session.id, None)
        if run is not None:
            self._stop_run(run)
        for hook in self.on_session_end:
            hook(session, "removed")
        self._release(session)
        self.transcript_len.pop(session.id, None)
        self.store.delete_session(session.id)
        self.bus.publish("session.removed", id=session.id)

    async def resume(self, session: Session, prompt: str | None = None) -> None:
        if session.state in BUSY:
            raise RpcError(INVALID_STATE, f"session {session.id} is already {session.state}")
        await self.start_turn(session, prompt or "Continue where you left off.")

    def update(self, session: Session, **fields: Any) -> None:
        for key, value in fields.items():
            setattr(session, key, value)
        self._changed(session)

    async def shutdown(self) -> None:
        """Ask every agent to stop (daemon exit); sessions mid-turn fail with a clear reason."""
        self.bus.flush()
        self._flush_touched()
        for session_id, run in list(self.runs.items()):
            if getattr(run.process, "detached", False):
                continue  # it runs elsewhere and carries on; the next daemon picks it up
            session = self.sessions.get(session_id)
            if session is not None and session.state in BUSY:
                self._set_failed(session, SHUTDOWN_ERROR)
                self._changed(session)
            self._stop_run(run)
        for run in list(self.runs.values()):
            if not getattr(run.process, "detached", False):
                await run.process.exited.wait()

    # -- internals ----------------------------------------------------------------

    def _detach(self, session: Session) -> None:
        run = self.runs.pop(session.id, None)
        if run is not None:
            self._stop_run(run)

    def _set_failed(self, session: Session, error: str) -> None:
        mask = self.masks.get(session.id)
        if mask is not None:
            error = mask(error)
        session.state = "failed"
        session.error = error
        session.waiting_for = None
        session.pending = None

    def _fail(self, session: Session, error: str) -> None:
        self._set_failed(session, error)
        session.pid = None
        self._record(session, "daemon", {"event": "failed", "error": error})
        self._changed(session)
        self._turn_ended(session)

    def note(self, session: Session, data: dict) -> None:
        """Add a daemon note (a loop fired, a task skipped) to a session's transcript."""
        self._record(session, "daemon", data)

    def _release(self, session: Session) -> None:
        del self.sessions[session.id]
        self._touched_ids.discard(session.id)

    def state_counts(self) -> dict[str, int]:
        """Sessions per state (a fresh dict); `daemon.status` asks for it on every call.

        Kept until a state is set or a session is added or released: adding one
        sets its state, and releasing one changes the count."""
        key = (Session.state_generation, len(self.sessions))
        if key != self._counts_key:
            counts = dict.fromkeys(STATES, 0)
            for session in self.sessions.values():
                counts[session.state] += 1
            self._counts, self._counts_key = counts, key
        return self._counts.copy()

    def _record(self, session: Session, kind: str, data: Any) -> None:
        mask = self.masks.get(session.id)
        if mask is not None:
            data = mask(data)
        n = self.transcript_len.get(session.id, 0)
        self.transcript_len[session.id] = n + 1
        ts = clock.now_iso()
        encoded = fastjson.dumps(data)
        # The entry and its event in one commit; subscribers get the event after it.
        with self.store.transaction():
            self.store.append_transcript(session.id, n, ts, kind, data, encoded.decode())
            event = self.bus.record("session.transcript", id=session.id,
                                    entry={"n": n, "ts": ts, "kind": kind, "data": clip(data, encoded)})
        self.bus.deliver(*event)

    def _record_soon(self, session: Session, kind: str, data: Any) -> None:
        """`_record` for the agent's output: the entry and its event wait for the group commit of
        everything recorded so in this turn of the trio loop (EventBus.record_soon)."""
        if self.nursery is None:
            self._record(session, kind, data)
            return
        mask = self.masks.get(session.id)
        if mask is not None:  # as _record: a secret never reaches the transcript or an event
            data = mask(data)
        session_id = session.id
        n = self.transcript_len.get(session_id, 0)
        self.transcript_len[session_id] = n + 1
        ts = clock.now_iso()
        encoded = fastjson.dumps(data)
        text = encoded.decode()

        def write() -> None:
            self.store.append_transcript(session_id, n, ts, kind, data, text)

        if self.bus.record_soon(write, "session.transcript", id=session_id,
                                entry={"n": n, "ts": ts, "kind": kind, "data": clip(data, encoded)}):
            if self._flush_wake is None:
                # A system task: it lives as long as the trio run, and keeps no nursery open.
                self._flush_wake = trio.Event()
                trio.lowlevel.spawn_system_task(self._flusher, name="bgd transcript flusher")
            self._flush_wake.set()

    async def _flusher(self) -> None:
        try:
            while True:
                await self._flush_wake.wait()
                self._flush_wake = trio.Event()
                self.bus.flush()
        finally:
            self._flush_wake = None

    def _changed(self, session: Session) -> None:
        with self.store.transaction():
            event = self._save(session)
        self.bus.deliver(*event)

    def _save(self, session: Session) -> tuple[dict, bytes]:
        """Store the session and its session.updated event (to deliver once committed)."""
        self._touched_ids.discard(session.id)
        session.updated_at = clock.now_iso()
        if session.pid is None and session.id in self.runs and not self.runs[session.id].process.exited.is_set():
            session.pid = self.runs[session.id].process.pid
        self.store.save_session(session.id, session.to_record())
        return self.bus.record("session.updated", session=session.to_json())

    def _touched(self, session: Session) -> None:
        """Only `last_message` changed: save and publish within TOUCH_FLUSH_S (see the module doc)."""
        session.updated_at = clock.now_iso()
        if not self._touched_ids:
            self.nursery.start_soon(self._flush_touched_later)
        self._touched_ids.add(session.id)

    async def _flush_touched_later(self) -> None:
        await trio.sleep(TOUCH_FLUSH_S)
        self._flush_touched()

    def _flush_touched(self) -> None:
        touched, self._touched_ids = self._touched_ids, set()
        events = []
        with self.store.transaction():
            for session_id in touched:
                session = self.sessions.get(session_id)
                if session is not None:
                    events.append(self._save(session))
        for event in events:
            self.bus.deliver(*event)


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
