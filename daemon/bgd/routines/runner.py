"""Routines in the daemon (SPEC §8): every fire becomes a run, each run a fresh workspace and one
autonomous session, and each run a record whose `status` (the infrastructure's verdict) and
`outcome` (what the agent reported) are kept apart.

A run goes `queued` (waiting for a slot under `[routines] max_concurrent_runs`, or for its routine's
previous run under `overlap = "buffer_one"`) -> `preparing` (the repositories cloned, the branch
guard installed, the env_file read) -> `running` (its session works, nobody asked: every permission
request is allowed and recorded as auto-allowed, every question answered with QUESTION_ANSWER) ->
an end: `finished` (the session's turn completed), `agent_failed`, `timed_out` (the routine's
`timeout` passed and the session was stopped), `stopped` (someone stopped it), or, before the agent
ever ran, `clone_failed` / `setup_failed`; `skipped` (with a reason) when it never started at all;
`daemon_restarted` when bgd stopped while it was open (its session is failed and resumable), except
a run on the cluster whose worker kept working: it carries on, and ends with its session.

Where fires come from lives beside this module: schedules.py (schedule triggers), fires.py (the API
and GitHub), methods.py (`bgctl routine run`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import trio

from bgcore.github import TriggerIndex, expand_ruled_out
from bgcore.jsonrpc import INVALID_PARAMS, INVALID_STATE, NOT_FOUND, RpcError
from bgcore.routines_file import DEFAULT_TIMEOUT_S, GitHubTrigger, Routine, clone_name
from bgd import clock
from bgd.routines import workspace
from bgd.routines.file import RoutinesFile
from bgd.environments import RefreshFailed, SandboxUnavailable, SetupFailed
from bgd.routines.secrets import EnvFileError, Masker, read_env_file
from bgd.sessions.manager import new_id
from bgcore.scheduler import Queued, RunGate, Skipped, Start, Stop

log = logging.getLogger("bgd.routines")

STATUSES = ("queued", "preparing", "running", "finished", "clone_failed", "setup_failed", "agent_failed",
            "timed_out", "stopped", "daemon_restarted", "sandbox_unavailable", "skipped")
OPEN = ("queued", "preparing", "running")
OUTCOMES = ("done", "failed", "nothing_to_do", "needs_attention")
QUESTION_ANSWER = "nobody is watching this run: choose the safest option and say what you chose"
BUSY = ("working", "needs_input")
MAX_SUMMARY = 4000
MAX_LINKS = 20
HOUSEKEEPING_S = 3600.0  # the longest the housekeeper sleeps between looks
RESTARTED = ("bgd stopped while this run was {status}; its session failed with it and can be resumed "
             "(`bgctl resume {session}`)")


@dataclass
class _Start:
    """What a run's start needs that is not in its record: the context added to the prompt, and
    whether its cached setup is to be built again (`bgctl routine run --rebuild`)."""
    context: str | None = None
    rebuild: bool = False


class RoutineService:
    def __init__(self, *, store, bus, sessions, config: Callable[[], Any], config_dir: Path, state_dir: Path,
                 http=None, socket_path: Path | None = None, shutting_down: Callable[[], bool] = lambda: False,
                 now: Callable[[], datetime] = clock.now, tz=None, prepare_workspace=workspace.prepare,
                 environments=None):
        from bgcore.triggers import DeliveryDedupe, HourlyCap, IdempotencyKeys
        self.store = store
        self.bus = bus
        self.sessions = sessions
        self.config = config
        self.config_dir = Path(config_dir)
        self.runs_dir = Path(state_dir) / "runs"
        self.http = http
        self.socket_path = socket_path
        self.shutting_down = shutting_down
        self.now = now
        self.tz = tz or clock.local_zone()
        self.prepare_workspace = prepare_workspace
        self.environments = environments   # bgd.environments.Environments: setup cache and sandbox
        if environments is not None:
            environments.lookup = self._record_of_session
            environments.lookup_run = lambda run_id: self.records.get(run_id) or self.store.routine_run(run_id)
            environments.report = self.report_blocked
        self.file = RoutinesFile(self.config_dir / "routines.toml", bus=bus, agents=lambda: set(config().agents),
                                 now=now, tz=self.tz, on_change=self._on_change)
        self.states: dict[str, dict] = store.load_routine_states()
        self.gate = RunGate(config().routines.max_concurrent_runs)
        self.records: dict[str, dict] = {}          # runs not yet ended: run id -> record
        self.starts: dict[str, _Start] = {}         # runs not yet started: what they start with
        self.session_runs: dict[str, str] = {}      # session id -> run id, for every run that had a session
        self.secrets: dict[str, dict[str, str]] = {}  # run id -> its env_file values (memory only)
        self.mcp_servers: dict[str, dict] = {}      # run id -> the routine's MCP servers (memory only)
        self.timeouts: dict[str, trio.CancelScope] = {}
        self.timing_out: set[str] = set()
        self._closing: set[str] = set()             # ended runs whose remotes are being asked what they pushed
        self.workspaces: dict[str, float] = {}      # ended run id -> when it ended, while its workspace exists
        from bgd.group_commit import GroupCommit
        self.group = GroupCommit(store)             # GitHub deliveries' writes, a commit per turn of the loop
        self.dedupe = DeliveryDedupe()
        self.caps = HourlyCap()
        self.idempotency = IdempotencyKeys()
        from bgd.routines.fires import WebhookSecret
        self.webhook_secret = WebhookSecret(config, self.config_dir)
        self.rejected_deliveries = 0              # forged or unsigned deliveries since start (never stored)
        self.nursery: trio.Nursery | None = None
        self._housekeeping_wake = trio.Event()
        self._next_look: float | None = None   # when the housekeeper looks again by itself; None: it is looking
        self.schedules = None  # schedules.ScheduleTriggers, made by install (it needs this service)
        self._recovered = False
        self._reopened = False
        self._mounted = False
        self._github: tuple[Any, TriggerIndex] = (None, TriggerIndex([]))
        self._saved: dict[str, trio.Event] = {}     # run id -> set at its record's next save (wait_started)
        self._resumed: list[dict] = []              # runs carried on through a restart, their timeouts to start
        sessions.on_turn_end.append(self._on_turn_end)
        sessions.on_session_end.append(self._on_session_end)
        sessions.on_permission.append(self._on_permission)
        sessions.env_for.append(self._env_for)
        sessions.args_for.append(self._args_for)

    # -- the service ------------------------------------------------------------------

    async def run(self, daemon=None, task_status=trio.TASK_STATUS_IGNORED) -> None:
        if not self._recovered:
            self._recover()
        if not self._reopened:  # (installed in a daemon, it ran once the sessions were loaded)
            self._reopen()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            await nursery.start(self.file.watch)
            if self.schedules is not None:
                nursery.start_soon(self.schedules.loop)
            nursery.start_soon(self._housekeeping)
            for rec in self._resumed:  # runs carried on through a restart: what is left of their timeouts
                routine = self.file.routines.get(rec["routine"])
                total = routine.timeout_s if routine else DEFAULT_TIMEOUT_S
                started = clock.parse_iso(rec.get("started_at") or clock.iso(self.now())).timestamp()
                left = max(0.0, total - (self.now().timestamp() - started))
                nursery.start_soon(self._timeout, rec["id"], left, total)
            self._resumed.clear()
            task_status.started()

    @property
    def routines(self) -> dict[str, Routine]:
        return self.file.routines

    def github_index(self) -> TriggerIndex:
        """Every routine with GitHub triggers, indexed by event and repository (what every delivery is
        matched against; built again only when the definitions change). Its items are
        `(routine, its GitHub triggers)`."""
        routines = self.file.routines
        if self._github[0] is not routines:
            pairs = [(r, [t for t in r.triggers if isinstance(t, GitHubTrigger)]) for r in routines.values()]
            self._github = (routines, TriggerIndex([(r.name, r.enabled, triggers, (r, triggers))
                                                    for r, triggers in pairs if triggers]))
        return self._github[1]

    def _recover(self) -> None:
        """After a restart (open runs: `_reopen`, once the sessions are loaded): the session map, the masks of
        their sessions, the dedupe window, the Idempotency-Keys and the hourly counts come back."""
        self._recovered = True
        now = self.now()
        ts = now.timestamp()
        self.session_runs.update(self.store.routine_run_sessions())
        for rec in self.store.routine_runs_with_workspace():
            if rec.get("ended_at") and rec.get("where") != "cluster":
                self.workspaces[rec["id"]] = clock.parse_iso(rec["ended_at"]).timestamp()
        for rec in self.store.routine_runs_since(clock.iso(datetime.fromtimestamp(ts - 3600, timezone.utc))):
            if rec["status"] != "skipped" and rec["trigger"] in ("api", "github"):
                self.caps.record((rec["routine"], rec["trigger"]), clock.parse_iso(rec["created_at"]).timestamp())
        for delivery_id, at in self.store.delivery_ids_since(ts - self.dedupe.window_s):
            self.dedupe.load(delivery_id, at)
        for routine, key, at, digest, answer in self.store.idempotency_since(ts - self.idempotency.window_s):
            self.idempotency.load(routine, key, digest, answer, at)

    def _reopen(self) -> None:
        """Once the sessions are loaded (before any service starts): the runs that were open are over
        (`daemon_restarted`), but for those whose session carries on (`_carries_on`)."""
        self._reopened = True
        now = self.now()
        with self.store.transaction():
            for rec in self.store.routine_runs_with_status(OPEN):
                if self._carries_on(rec):
                    self._resume(rec)
                    continue
                rec.update(status="daemon_restarted", ended_at=clock.iso(now),
                           error=RESTARTED.format(status=rec["status"], session=rec.get("session_id") or "ID"))
                self.store.save_routine_run(rec)

    def _carries_on(self, rec: dict) -> bool:
        """A run whose session went on without this daemon: one on the cluster, whose worker kept
        working while bgd was away (the cluster service took the session up again when it loaded)."""
        session = self.sessions.sessions.get(rec.get("session_id") or "")
        return (rec.get("where") == "cluster" and session is not None and session.state in BUSY
                and session.id in self.sessions.runs)

    def _resume(self, rec: dict) -> None:
        """Keep such a run open: its slot, the masks of its secrets (its lines are still to come),
        and what is left of its timeout; it ends with its session, as it would have."""
        run_id = rec["id"]
        self.records[run_id] = rec
        self.gate.resume(run_id, rec["routine"])
        self._reload_secrets(self.sessions.sessions[rec["session_id"]], run_id)
        if rec["status"] == "running":
            self._resumed.append(rec)
        log.info("run %s of %s carries on on the cluster", run_id, rec["routine"])

    def _on_change(self, old: dict[str, Routine], new: dict[str, Routine], changes: dict) -> None:
        actions: list = []
        for name in changes["removed"]:
            actions += self.gate.forget(name)
        if self.schedules is not None:
            self.schedules.apply(old, new, changes)
        if actions and self.nursery is not None:
            self._execute(actions)
        if self.http is not None:
            if not self._mounted and _wants_http(new):
                # Only now: the routes import starlette, which a daemon without HTTP never loads.
                from bgd.routines.http_routes import routes
                self.http.mount("routines", routes(self), wanted=self.wants_http)
                self._mounted = True
            self.http.refresh()

    def wants_http(self) -> bool:
        return _wants_http(self.file.routines)

    def set_config(self, config) -> None:
        self._execute(self.gate.set_max(config.routines.max_concurrent_runs))
        if self.schedules is not None:
            self.schedules.set_stagger(config.routines.stagger)
        self._housekeeping_wake.set()

    # -- state ------------------------------------------------------------------------

    def state(self, name: str) -> dict:
        return self.states.setdefault(name, {})

    def save_state(self, name: str) -> None:
        self.store.save_routine_state(name, self.state(name))

    def session_url(self, session_id: str) -> str:
        base = self.http.base_url if self.http is not None else None
        if not base:
            http = self.config().http
            host = f"[{http.host}]" if ":" in http.host else http.host
            base = f"{'https' if http.tls else 'http'}://{host}:{http.port}"
        return f"{base}/s/{session_id}"

    # -- fires ------------------------------------------------------------------------

    def offer(self, routine: Routine, trigger: str, *, context: str | None = None, detail: dict | None = None,
              manual: bool = False, rebuild: bool = False) -> dict:
        """A fire of `routine`: make its run record and let the gate say whether it starts now,
        waits (`queued`) or is skipped. Returns the record."""
        run_id = new_id(self.records)
        now = clock.iso(self.now())
        rec = {"id": run_id, "routine": routine.name, "trigger": trigger, **(detail or {}), "status": "queued",
               "reason": None, "error": None, "outcome": "unreported", "summary": None, "links": [],
               "session_id": None, "session_url": None, "workspace": None, "repos": [], "pushed": [],
               "refused_pushes": [], "policy_violations": [], "created_at": now, "started_at": None,
               "ended_at": None}
        self.records[run_id] = rec
        self.starts[run_id] = _Start(context, rebuild)
        self._execute(self.gate.offer(run_id, routine.name, "allow" if manual else routine.overlap))
        return rec

    def skipped(self, name: str, trigger: str, reason: str, *, detail: dict | None = None,
                error: str | None = None, count: int = 1) -> dict:
        """A fire that starts nothing, recorded with its reason (never a silent drop)."""
        now = clock.iso(self.now())
        rec = {"id": new_id(self.records), "routine": name, "trigger": trigger, **(detail or {}), "status": "skipped",
               "reason": reason, "error": error, "outcome": None, "summary": None, "links": [], "session_id": None,
               "session_url": None, "workspace": None, "repos": [], "pushed": [], "refused_pushes": [],
               "policy_violations": [], "created_at": now, "started_at": None, "ended_at": now}
        if count > 1:
            rec["count"] = count
        self._save(rec)
        return rec

    def _execute(self, actions: list) -> None:
        for action in actions:
            rec = self.records.get(action.run_id)
            if rec is None:
                continue
            if isinstance(action, Start):
                rec.update(status="preparing", reason=None)
                self._save(rec)
                assert self.nursery is not None
                self.nursery.start_soon(self._start, action.run_id)
            elif isinstance(action, Queued):
                rec["reason"] = action.reason
                self._save(rec)
            elif isinstance(action, Skipped):
                rec.update(status="skipped", reason=action.reason, outcome=None, ended_at=clock.iso(self.now()))
                self.records.pop(action.run_id, None)
                self.starts.pop(action.run_id, None)
                self._save(rec)
            elif isinstance(action, Stop):
                session = self.sessions.sessions.get(rec.get("session_id") or "")
                if session is not None and session.state in BUSY:
                    self.nursery.start_soon(self._stop, session, "replaced by a newer run of its routine")

    async def _stop(self, session, reason: str) -> None:
        await self.sessions.stop(session, reason=reason)

    def _save(self, rec: dict) -> None:
        self.store.save_routine_run(rec)
        self.bus.publish("routine.run", routine=rec["routine"], run=rec)
        saved = self._saved.pop(rec["id"], None)
        if saved is not None:
            saved.set()

    # -- a run ------------------------------------------------------------------------

    async def _start(self, run_id: str) -> None:
        rec = self.records.get(run_id)
        start = self.starts.pop(run_id, _Start())
        if rec is None:
            return
        routine = self.file.routines.get(rec["routine"])
        if routine is None:
            self._end(rec, "skipped", reason="removed", error="the routine was removed before this run could start")
            return
        run_dir = self.runs_dir / run_id
        try:
            values = read_env_file(routine.env_path) if routine.env_path else {}
            servers = self._read_mcp(routine)
            prompt = self._prompt(routine, rec, start.context)
        except (EnvFileError, _SetupError) as exc:
            self._end(rec, "setup_failed", error=str(exc))
            return
        rec["where"] = routine.where
        workspace_request = None
        if routine.where == "cluster":
            # The worker that takes the run makes its workspace (bgd.cluster.workspaces) and says
            # where; until then the session's directory is named relative to the worker's state dir.
            cwd = f"runs/{run_id}/{clone_name(routine.repos[0].url)}"
            workspace_request = {"run_id": run_id, "repos": [r.to_json() for r in routine.repos],
                                 "push": list(routine.push),
                                 "keep_s": self.config().routines.keep_workspaces_days * 86400}
        else:
            rec["workspace"] = str(run_dir)
            try:
                clones = await self._prepare(rec, routine, run_dir, values, start.rebuild)
            except SandboxUnavailable as exc:
                self._end(rec, "sandbox_unavailable", error=str(exc))
                return
            except SetupFailed as exc:
                self._end(rec, "setup_failed", error=exc.message)
                return
            except RefreshFailed as exc:
                self._end(rec, "clone_failed", error=f"cannot bring the cached workspace up to date: {exc}")
                return
            except (workspace.CloneFailed, trio.TooSlowError, OSError) as exc:
                status, error = workspace.prepare_failure(exc, run_dir)
                self._end(rec, status, error=error)
                return
            for clone in clones:  # a setup cache's copy: the remote's refs as its fresh fetch left them
                if getattr(clone, "remote_refs", None) is None:
                    clone.remote_refs = await workspace.fetched(Path(clone.path))
            if self.records.get(run_id) is not rec:  # stopped or replaced meanwhile
                return
            rec["repos"] = [c.to_json() for c in clones]
            cwd = str(clones[0].path)
        self.secrets[run_id] = values
        self.mcp_servers[run_id] = servers
        masker = Masker(values.values())

        def prepare(session) -> None:
            self.session_runs[session.id] = run_id
            if masker:
                self.sessions.masks[session.id] = masker
                session.prompt = masker(session.prompt)
            session.outcome = "unreported"
            # A run on the cluster is `running` once its worker has made the workspace.
            rec.update(status="running" if workspace_request is None else "preparing", session_id=session.id,
                       session_url=self.session_url(session.id), started_at=clock.iso(self.now()))
            self._save(rec)

        try:
            # On the cluster the run's workflow id comes from the fire (a GitHub delivery's id), so a
            # second fire of the same delivery, from any daemon, cannot start a second run.
            fire = f"github/{rec['delivery']}" if rec.get("delivery") else f"{rec['trigger']}/{run_id}"
            session = await self.sessions.dispatch(
                prompt, cwd, agent=routine.agent, name=routine.name, model=routine.model,
                permission_mode="default", origin=f"routine:{routine.name}", prepare=prepare,
                where=routine.where, run_key=f"routine/{routine.name}/{fire}", workspace=workspace_request)
        except RpcError as exc:
            self._end(rec, "agent_failed", error=exc.message)
            return
        if self.records.get(run_id) is rec and rec.get("session_id") == session.id:
            if workspace_request is None:  # on the cluster: once the worker made it (on_cluster_workspace)
                self._start_timeout(rec, routine)
            if session.state not in BUSY:  # it ended before the hooks could hear of it
                self._session_over(session)

    def _start_timeout(self, rec: dict, routine: Routine | None) -> None:
        assert self.nursery is not None
        self.nursery.start_soon(self._timeout, rec["id"], routine.timeout_s if routine else DEFAULT_TIMEOUT_S)

    def on_cluster_workspace(self, session_id: str, info: dict) -> None:
        """What the worker of a run on the cluster says of its workspace (a "workspace" record,
        bgd.cluster.protocol): made, with its clones, or why not; and what was pushed so far."""
        run_id = self.session_runs.get(session_id)
        rec = self.records.get(run_id) if run_id else None
        if rec is None:
            return
        if "error" in info:
            self._end(rec, info.get("status") or "clone_failed", error=info["error"])
            return
        if "path" in info:
            rec.update(workspace=info["path"], repos=info.get("repos") or [], worker=info.get("worker"))
            if rec["status"] == "preparing":
                rec["status"] = "running"
                self._start_timeout(rec, self.file.routines.get(rec["routine"]))
        if "pushed" in info:
            rec.update(pushed=info["pushed"], refused_pushes=info.get("refused") or [])
        self._save(rec)

    async def _prepare(self, rec: dict, routine: Routine, run_dir: Path, values: dict[str, str], rebuild: bool) -> list:
        """The run's workspace: through its environment (setup cache, sandbox checks), or plain
        clones in a daemon made without one."""
        if self.environments is not None:
            return await self.environments.prepare(rec, routine, run_dir, values, Masker(values.values()),
                                                   rebuild=rebuild, prepare_workspace=self.prepare_workspace,
                                                   make_clone=workspace.Clone)
        if routine.setup is not None or routine.setup_path is not None or routine.network != "full":
            raise SandboxUnavailable("this daemon runs routines without environments, so it cannot honour setup "
                                     "or a network policy; the run was not started")
        return await self.prepare_workspace(run_dir, routine.repos, routine.push)

    def _record_of_session(self, session_id: str) -> dict | None:
        run_id = self.session_runs.get(session_id)
        if run_id is None:
            return None
        return self.records.get(run_id) or self.store.routine_run(run_id)

    def report_blocked(self, run_id: str, blocked: dict[str, int]) -> None:
        """The hosts a run's proxies refused so far (their counts), into its record."""
        rec = self.records.get(run_id) or self.store.routine_run(run_id)
        if rec is None or rec.get("blocked") == blocked:
            return
        rec["blocked"] = blocked
        rec["blocked_total"] = sum(blocked.values())
        self._save(rec)

    def _prompt(self, routine: Routine, rec: dict, context: str | None) -> str:
        if routine.prompt is not None:
            text = routine.prompt
        else:
            try:
                text = Path(routine.prompt_path).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise _SetupError(f"cannot read prompt_file {routine.prompt_path}: "
                                  f"{getattr(exc, 'strerror', None) or exc}") from None
        parts = [text.rstrip()]
        if context:
            parts.append(f"---\n{context}")
        parts.append(f"---\nThis is run {rec['id']} of the routine {routine.name}, started by "
                     f"{'hand' if rec['trigger'] == 'manual' else 'its ' + rec['trigger'] + ' trigger'}. Nobody "
                     "is watching it. When you are done, call the report_outcome tool (of the bgagents MCP "
                     "server) with status done, failed, nothing_to_do or needs_attention and a one-line summary.")
        return "\n\n".join(parts)

    def _read_mcp(self, routine: Routine) -> dict:
        if not routine.mcp_path:
            return {}
        try:
            data = json.loads(Path(routine.mcp_path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise _SetupError(f"mcp_config {routine.mcp_path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise _SetupError(f"cannot read mcp_config {routine.mcp_path}: {getattr(exc, 'strerror', None) or exc}") from None
        except ValueError as exc:
            raise _SetupError(f"mcp_config {routine.mcp_path} is not valid JSON: {exc}") from None
        servers = data.get("mcpServers") if isinstance(data, dict) else None
        if not isinstance(servers, dict) or not all(isinstance(v, dict) for v in servers.values()):
            raise _SetupError(f"mcp_config {routine.mcp_path} must be an object with \"mcpServers\": "
                              "{name: {command, args, env}}")
        return servers

    async def _timeout(self, run_id: str, seconds: float, total: float | None = None) -> None:
        """Stop the run's session after `seconds` (the routine's timeout, `total`, less what a run
        carried on through a restart had already used)."""
        with trio.CancelScope() as scope:
            self.timeouts[run_id] = scope
            await trio.sleep(seconds)
            seconds = total if total is not None else seconds
            rec = self.records.get(run_id)
            session = self.sessions.sessions.get((rec or {}).get("session_id") or "")
            if rec is not None and rec["status"] == "running" and session is not None:
                self.timing_out.add(run_id)
                await self.sessions.stop(session, reason=f"the routine's timeout ({_duration(seconds)}) passed")
        if self.timeouts.get(run_id) is scope:
            del self.timeouts[run_id]

    # -- the session's side ---------------------------------------------------------

    def _run_of(self, session) -> dict | None:
        run_id = self.session_runs.get(session.id)
        rec = self.records.get(run_id) if run_id else None
        if rec is None or run_id in self._closing:
            return None
        # A run on the cluster has its session while its worker is still making the workspace.
        return rec if rec["status"] == "running" or (rec["status"] == "preparing" and rec.get("session_id")) else None

    def _on_turn_end(self, session) -> None:
        self._session_over(session)

    def _session_over(self, session) -> None:
        rec = self._run_of(session)
        if rec is None:
            return
        if session.state in ("completed", "sleeping"):
            self._end(rec, "finished")
        elif session.state == "stopped":
            self._on_session_end(session, "stopped")
        elif session.state not in BUSY:
            self._end(rec, "agent_failed", error=session.error)

    def _on_session_end(self, session, how: str) -> None:
        rec = self._run_of(session)
        if rec is None:
            return
        if rec["id"] in self.timing_out:
            self.timing_out.discard(rec["id"])
            self._end(rec, "timed_out", error="the routine's timeout passed; the session was stopped")
        else:
            self._end(rec, "stopped", error="the session was removed" if how == "removed" else None)

    def _on_permission(self, session, pending: dict) -> bool:
        if session.id not in self.session_runs:
            return False
        if pending.get("kind") == "question":
            self.sessions.auto_answer(session, pending, answer=QUESTION_ANSWER)
        else:
            self.sessions.auto_answer(session, pending)
        return True

    def _env_for(self, session) -> dict[str, str]:
        run_id = self.session_runs.get(session.id)
        if run_id is None:
            return {}
        values = self.secrets.get(run_id)
        if values is None:  # a reply after a restart: the env_file is read again
            values = self._reload_secrets(session, run_id)
        return {**values, "BGAGENTS_RUN_ID": run_id, "BGAGENTS_ROUTINE": session.origin.partition(":")[2],
                "BGAGENTS_SESSION_URL": self.session_url(session.id)}

    def _reload_secrets(self, session, run_id: str) -> dict[str, str]:
        routine = self.file.routines.get(session.origin.partition(":")[2])
        values: dict[str, str] = {}
        if routine is not None and routine.env_path:
            try:
                values = read_env_file(routine.env_path)
            except EnvFileError as exc:
                log.warning("run %s: %s; its session continues without it", run_id, exc)
        self.secrets[run_id] = values
        masker = Masker(values.values())
        if masker:
            self.sessions.masks[session.id] = masker
        return values

    def _args_for(self, session, backend: str) -> list[str]:
        # Claude Code: the routine's MCP servers and the daemon's, and none of the user's own (SPEC §8).
        return ["--strict-mcp-config"] if backend == "claude" and session.id in self.session_runs else []

    def mcp_config(self, session, base: str | None) -> str | None:
        """The --mcp-config of a routine's session: the daemon's tools (with report_outcome) and
        the routine's servers."""
        run_id = self.session_runs.get(session.id)
        if run_id is None:
            return base
        data = json.loads(base) if base else {"mcpServers": {}}
        from bgd.agents.mcp_server import SERVER_NAME
        own = data["mcpServers"].get(SERVER_NAME)
        if own is not None:
            own["args"] = [*own["args"], "--routine"]
        servers = self.mcp_servers.get(run_id)
        if servers is None:
            routine = self.file.routines.get(session.origin.partition(":")[2])
            try:
                servers = self._read_mcp(routine) if routine is not None else {}
            except _SetupError as exc:
                log.warning("run %s: %s; its session continues with the daemon's tools only", run_id, exc)
                servers = {}
            self.mcp_servers[run_id] = servers
        for name, server in servers.items():
            if name != SERVER_NAME:
                data["mcpServers"][name] = server
        return json.dumps(data)

    # -- the end of a run -------------------------------------------------------------

    def _end(self, rec: dict, status: str, *, error: str | None = None, reason: str | None = None) -> None:
        """The run is over: its record gets its end once each remote was asked what the run pushed
        (the I/O of `_close`), or at once when there is none to ask."""
        run_id = rec["id"]
        if run_id in self._closing:
            return
        ended_at = clock.iso(self.now())
        scope = self.timeouts.pop(run_id, None)
        if scope is not None:
            scope.cancel()
        self.timing_out.discard(run_id)
        # The remote is asked about a run whose clones are here (a cluster run's are on its worker).
        repos = [r for r in rec.get("repos") or () if r.get("remote_refs") is not None] \
            if rec.get("where") != "cluster" else []
        if repos and self.nursery is not None:
            self._closing.add(run_id)
            self.nursery.start_soon(self._close, rec, status, error, reason, ended_at, repos)
        else:
            self._closed(rec, status, error, reason, ended_at, {})

    async def _close(self, rec: dict, status: str, error: str | None, reason: str | None, ended_at: str,
                     repos: list[dict]) -> None:
        at_remote: dict = {}
        try:
            at_remote = await workspace.remote_pushes(repos)
        finally:  # also when the daemon stops meanwhile: then with what the clones say
            self._closing.discard(rec["id"])
            self._closed(rec, status, error, reason, ended_at, at_remote)

    def _closed(self, rec: dict, status: str, error: str | None, reason: str | None, ended_at: str,
                at_remote: dict) -> None:
        run_id = rec["id"]
        rec.update(status=status, ended_at=ended_at)
        if error is not None:
            rec["error"] = error
        if reason is not None:
            rec["reason"] = reason
        if status == "skipped":
            rec["outcome"] = None
        blocked = self.environments.blocked_of(run_id) if self.environments is not None else None
        if blocked:
            rec.update(blocked=blocked, blocked_total=sum(blocked.values()))
        routine = self.file.routines.get(rec["routine"])
        clones = [Path(r["path"]) for r in rec.get("repos") or []]
        on_cluster = rec.get("where") == "cluster"
        if clones and not on_cluster:  # on the cluster, the worker read them (on_cluster_workspace)
            push = routine.push if routine is not None else ()
            pushed, refused = workspace.read_pushes(clones, push, at_remote)
            rec.update(pushed=pushed, refused_pushes=refused)
        rec["policy_violations"] = [p for p in rec.get("pushed") or [] if not p["allowed"]]
        if rec["policy_violations"]:
            log.warning("run %s of %s pushed outside its push patterns: %s", run_id, rec["routine"],
                        ", ".join(p["ref"] for p in rec["policy_violations"]))
        self._save(rec)
        self.records.pop(run_id, None)
        self.starts.pop(run_id, None)
        if rec.get("workspace") and not on_cluster:  # a worker removes its own (bgd.cluster.workspaces)
            ended = self.workspaces[run_id] = self.now().timestamp()
            due = ended + self.config().routines.keep_workspaces_days * 86400
            if self._next_look is None or due < self._next_look:
                self._housekeeping_wake.set()  # due before the housekeeper's next look (or it is looking now)
        if self.nursery is not None:
            self._execute(self.gate.finished(run_id))

    # -- what the methods and the agent call --------------------------------------------

    def report_outcome(self, session_id: str, status: Any, summary: Any, links: Any = None) -> dict:
        run_id = self.session_runs.get(session_id)
        if run_id is None:
            raise RpcError(INVALID_STATE, "this session was not started by a routine, so it has no outcome to report")
        if status not in OUTCOMES:
            raise RpcError(INVALID_PARAMS, f"status must be one of {', '.join(OUTCOMES)}")
        if not isinstance(summary, str) or not summary.strip():
            raise RpcError(INVALID_PARAMS, "summary must be a non-empty string (one line on what the run did)")
        links = links or []
        if not isinstance(links, list) or not all(isinstance(x, str) for x in links) or len(links) > MAX_LINKS:
            raise RpcError(INVALID_PARAMS, f"links must be a list of at most {MAX_LINKS} URLs")
        rec = self.records.get(run_id) or self.store.routine_run(run_id)
        if rec is None:
            raise RpcError(NOT_FOUND, f"the run {run_id} of this session is gone")
        mask = self.sessions.masks.get(session_id) or (lambda v: v)
        rec.update(outcome=status, summary=mask(summary.strip()[:MAX_SUMMARY]), links=mask(links),
                   reported_at=clock.iso(self.now()))
        self._save(rec)
        session = self.sessions.sessions.get(session_id)
        if session is not None:
            self.sessions.update(session, outcome=status)
        return rec

    def run_record(self, run_id: str) -> dict:
        rec = self.records.get(run_id) or self.store.routine_run(run_id)
        if rec is None:
            raise RpcError(NOT_FOUND, f"no run {run_id!r}; `bgctl routine runs` lists them")
        return dict(rec)

    def runs(self, name: str | None = None, limit: int = 100) -> list[dict]:
        return [dict(self.records.get(r["id"], r)) for r in self.store.routine_runs(name, limit)]

    async def wait_started(self, rec: dict, timeout: float | None = None) -> dict:
        """Wait until a run has its session, or ends, or waits in the queue: what a fire answers (woken
        by the record's next save, so the answer leaves as soon as the session exists)."""
        with trio.move_on_after(timeout if timeout is not None else float("inf")):
            while ((rec["status"] == "preparing" and not rec.get("session_id"))
                   or (rec["status"] == "queued" and rec.get("reason") is None)):
                await self._saved.setdefault(rec["id"], trio.Event()).wait()
        return dict(rec)

    def record_delivery(self, record: dict, at: float) -> None:
        self.store.save_delivery(record["id"], at, record)
        # The event has the results of the routines it matched; why each other one did not is in the
        # stored record (`routine.deliveries`): with a hundred routines that is most of it, every delivery.
        matched = [r for r in record["results"] if r["matched"]]
        routines = len(record["results"]) + sum(len(g["routines"]) for g in record.get("ruled_out", ()))
        self.bus.publish("routine.delivery", delivery={k: v for k, v in record.items() if k != "ruled_out"}
                         | {"results": matched, "routines": routines})

    def delivery_seen_again(self, delivery_id: str, at: float) -> None:
        """A redelivery: counted on the first one's record (by SQLite, without reading it back here)."""
        self.store.count_duplicate_delivery(delivery_id, clock.iso_ts(at))

    def deliveries(self, limit: int = 100) -> list[dict]:
        """The stored records with one result per routine (the index's compact part spelt out)."""
        records = self.store.deliveries(limit)
        for record in records:
            ruled_out = record.pop("ruled_out", None)
            if ruled_out:
                record["results"] = record["results"] + expand_ruled_out(ruled_out)
        return records

    # -- housekeeping -------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        while True:
            self._housekeeping_wake = trio.Event()
            self._next_look = None
            wait = await self._prune()
            self._next_look = self.now().timestamp() + min(wait, HOUSEKEEPING_S)
            with trio.move_on_after(min(wait, HOUSEKEEPING_S)):
                await self._housekeeping_wake.wait()

    async def _prune(self) -> float:
        """Delete workspaces kept long enough (never one whose session is live), and forget old
        deliveries and Idempotency-Keys; returns how long until the next workspace is due."""
        keep_s = self.config().routines.keep_workspaces_days * 86400
        now = self.now().timestamp()
        wait = HOUSEKEEPING_S
        for run_id, ended in sorted(self.workspaces.items(), key=lambda item: item[1]):
            due = ended + keep_s
            if due > now:
                wait = min(wait, due - now)
                continue
            rec = self.store.routine_run(run_id)
            session = self.sessions.sessions.get((rec or {}).get("session_id") or "")
            if session is not None and session.state in BUSY:
                continue  # a reply is working in it; the next look deletes it
            path = Path(rec["workspace"]) if rec and rec.get("workspace") else self.runs_dir / run_id
            removed_at = clock.iso(self.now())
            await trio.to_thread.run_sync(workspace.remove, path)
            self.workspaces.pop(run_id, None)
            if rec is not None:
                rec["workspace_removed_at"] = removed_at
                self._save(rec)
        with self.store.transaction():
            gone = self.dedupe.prune(now)
            if gone:
                self.store.prune_deliveries(now - self.dedupe.window_s)
            if self.idempotency.prune(now):
                self.store.prune_idempotency(now - self.idempotency.window_s)
        return max(wait, 0.0)


class _SetupError(Exception):
    pass


def _wants_http(routines: dict[str, Routine]) -> bool:
    # A paused routine (or a disabled trigger) still wants it: a fire then gets its clear 400 or 404, not
    # a refused connection.
    return any(t.kind in ("api", "github") for r in routines.values() for t in r.triggers)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


__all__ = ["OUTCOMES", "QUESTION_ANSWER", "RoutineService", "STATUSES"]


def install(daemon) -> RoutineService:
    """Attach routines to the daemon: `daemon.routines`, its service, the config hook, the MCP
    config of its sessions, and (once a routine has an API or GitHub trigger) its HTTP routes."""
    from bgd.routines.schedules import ScheduleTriggers
    service = RoutineService(store=daemon.store, bus=daemon.bus, sessions=daemon.sessions,
                             config=lambda: daemon.config, config_dir=daemon.config_dir, state_dir=daemon.state_dir,
                             http=daemon.http, socket_path=daemon.socket_path,
                             shutting_down=lambda: daemon.shutting_down,
                             environments=getattr(daemon, "environments", None))
    service.schedules = ScheduleTriggers(service, stagger=daemon.config.routines.stagger)
    daemon.routines = service
    daemon.services.append(service.run)
    daemon.on_reload.append(service.set_config)
    previous = daemon.sessions.mcp_config_for
    daemon.sessions.mcp_config_for = lambda session: service.mcp_config(session, previous(session))
    service._recover()
    daemon.sessions.after_load.append(service._reopen)  # before the HTTP listener takes a fire
    service.file.reload_from_disk()  # before the listener's first look, so it listens when bgd is ready
    return service
