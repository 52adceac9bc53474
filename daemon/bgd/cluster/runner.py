"""Cluster sessions in the owning daemon (SPEC §14): a session whose agent process runs on a worker.

The session runner (bgd.sessions.manager) treats a cluster run like a local one: it asks the
backend driver for the launch, and gets a `RemoteProcess` instead of an `AgentProcess` and a
`ClusterDriver` around the backend's own driver.  The daemon keeps the Session record and the
transcript; the worker runs the process and the same driver, and ships the driver's `ctl` calls
back as numbered records (protocol.py).  Here each record is applied to the session through the
run's real `RunControl`, in order and once: the run's applied offset is stored in the same
transaction as the record's effect, so a daemon killed and restarted resumes from the stored
offsets, with no record lost or applied twice.

A call of the session's MCP tools arrives the same way, as an "mcp" record from the worker's relay
(relay.py): it runs here through the method table as that session, and its result goes back to the
worker as a delivery.

Per open run the daemon follows the run workflow's history (the claim: which worker, which log; the
outcome) and, per (worker process) log, the log's history; both are long polls on the Temporal
client's own thread (link.py), handed to trio in batches.
"""

from __future__ import annotations

import logging
import secrets
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import trio

from bgcore.config import ClusterConfig
from bgcore.jsonrpc import INVALID_PARAMS, INVALID_STATE, RpcError
from bgd import fastjson
from bgd.cluster import protocol as p
from bgd.cluster.link import LinkError, TemporalLink

if TYPE_CHECKING:
    from bgd.cluster import codec

log = logging.getLogger("bgd.cluster")
LOST_DRAIN_S = 5.0     # how long a lost run's last records may take to be read before it is failed
NOT_CONFIGURED = ("this daemon has no [cluster] in config.toml, so nothing can run on the cluster; "
                  "add [cluster] with temporal = \"host:port\" (docs/cluster.md) or run it here")


@dataclass
class ClusterRun:
    """One run (workflow) of a cluster session, as the owner tracks it (stored in cluster_runs)."""

    workflow_id: str
    session_id: str
    n: int
    applied: int = 0                  # records applied so far (the next offset)
    worker: str | None = None
    queue: str | None = None
    log: str | None = None            # the log segment named in the claim
    open: bool = True
    outcome: dict | None = None
    run: Any = None                   # the session runner's Run (not stored)
    process: "RemoteProcess | None" = None
    offsets: p.Offsets = field(default_factory=p.Offsets)
    spec: Any = None                  # the RunSpec it was started with (not stored)

    def to_record(self) -> dict:
        return {"workflow_id": self.workflow_id, "session_id": self.session_id, "n": self.n,
                "applied": self.offsets.next, "worker": self.worker, "queue": self.queue, "log": self.log,
                "open": self.open, "outcome": self.outcome}


class RemoteProcess:
    """What the session runner sees of an agent process on a worker (AgentProcess's surface)."""

    detached = True   # lives on when this daemon stops; the next daemon picks it up again

    def __init__(self, service: "ClusterService", state: ClusterRun, on_exit):
        self.service = service
        self.state = state
        self.on_exit = on_exit
        self.exited = trio.Event()
        self.returncode: int | None = None
        self.pid = None               # the process is not on this machine
        self.stderr = ""

    async def start(self, nursery=None) -> None:
        await self.service._start_workflow(self.state)

    async def write(self, data: bytes) -> bool:
        return False  # the driver that writes to the agent runs on the worker

    async def write_json(self, obj: dict) -> bool:
        return False

    async def close_stdin(self) -> None:
        try:
            await self.service.deliver(self.state, {"op": "close_stdin"})
        except RpcError:
            pass

    def signal(self, sig: int) -> None:
        pass

    async def shutdown(self, grace: float) -> None:
        await self.service.cancel(self.state)
        await self.exited.wait()

    def stderr_last_line(self) -> str:
        return self.stderr


class ClusterDriver:
    """Wraps the backend's driver for a run on a worker: the worker runs the same driver on the
    process; here it only decides what an exit means, and the rest travels as deliveries.  The
    daemon's MCP tools reach the daemon through the worker's relay (bgd.cluster.relay)."""

    def __init__(self, real, service: "ClusterService", state: ClusterRun):
        self.real = real
        self.service = service
        self.state = state
        self.keeps_process = real.keeps_process
        self.schedules_wakeups = real.schedules_wakeups
        self.provides_history = real.provides_history
        self.install_hint = real.install_hint
        self.session = real.session
        self.ctl = real.ctl

    def launch(self, text: str, mcp_config: str | None):
        return self.real.launch(text, mcp_config)

    async def started(self, text: str) -> None:
        pass  # the worker sends the first turn once the process runs

    async def turn(self, text: str) -> bool:
        try:
            result = await self.service.deliver(self.state, {"op": "turn", "text": text})
        except RpcError:
            return False
        return bool(result.get("ok"))

    def line(self, line: bytes) -> None:
        pass

    async def answer(self, pending: dict, decision: str, *, always: bool, message: str | None,
                     answer: str | None) -> None:
        await self.service.deliver(self.state, {"op": "answer", "pending": pending, "decision": decision,
                                                "always": always, "message": message, "answer": answer})

    async def interrupt(self) -> None:
        pass  # a stop reaches the worker as a cancellation, and the worker interrupts the turn

    def exited(self, code: int) -> None:
        self.real.exited(code)


class ClusterService:
    def __init__(self, daemon):
        self.daemon = daemon
        self.store = daemon.store
        self.sessions = daemon.sessions
        self.link: TemporalLink | None = None
        self.runs: dict[str, ClusterRun] = {}        # open runs by workflow id
        self.logs: dict[str, dict] = {}              # log base -> {"segment", "future", "event_id"}
        self.owner = self._owner()
        self.nursery: trio.Nursery | None = None
        # (session id, record) for each "workspace" record of a run: routines hear of the workspace
        # its worker made and of what was pushed there.
        self.on_workspace: list = []

    @property
    def config(self) -> ClusterConfig | None:
        return self.daemon.config.cluster

    def _owner(self) -> str:
        owner = self.store.cluster_meta("owner")
        if owner is None:
            host = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname().split(".")[0])
            owner = f"{host[:40] or 'bgd'}-{secrets.token_hex(3)}"
            self.store.set_cluster_meta("owner", owner)
        return owner

    # -- the service ------------------------------------------------------------------------

    async def run(self, daemon=None, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                if self.link is not None:
                    self.link.stop()

    def _link(self) -> TemporalLink:
        config = self.config
        if config is None:
            raise RpcError(INVALID_PARAMS, NOT_CONFIGURED)
        from bgd.cluster import codec  # temporalio: loaded only when [cluster] is used
        key_path = codec.key_path(self.daemon.config_dir, config.key_file)
        if self.link is not None and (self.link.address, self.link.namespace, self.link.codec.path) != \
                (config.temporal, config.namespace, str(key_path)):
            self.link.stop()
            self.link = None
        if self.link is None:
            try:
                key = codec.ensure_key(key_path)
            except codec.KeyFileError as exc:
                raise RpcError(INVALID_PARAMS, f"{exc}; fix [cluster] key_file in config.toml "
                                               "(docs/cluster.md)") from None
            self.link = TemporalLink(config.temporal, config.namespace,
                                     codec.ClusterCodec(key, path=key_path, who="the owning daemon"))
            self.link.start()
        return self.link

    def check(self) -> None:
        """Dispatching to the cluster: refused at once when there is no [cluster]."""
        if self.config is None:
            raise RpcError(INVALID_PARAMS, NOT_CONFIGURED)

    # -- starting a run ---------------------------------------------------------------------------

    def process(self, session, run, launch, agent_cfg, text: str, *, on_exit, mcp_config: str | None = None):
        """The session runner's `_spawn` for a cluster session: the process and driver stand-ins.
        `mcp_config` is the daemon's MCP config the launch holds; the worker points it at its relay."""
        config = self.config
        if config is None:
            raise RpcError(INVALID_PARAMS, NOT_CONFIGURED)
        n = self.store.cluster_run_count(session.id)
        # A routine's fire names its first process (from a GitHub delivery's id: one run per delivery);
        # any later process of the session is the session's own.
        workflow_id = (p.keyed_run_id(session.run_key) if n == 0 and session.run_key
                       else p.session_run_id(self.owner, session.id, n))
        state = ClusterRun(workflow_id, session.id, n, run=run)
        env = dict(agent_cfg.env)
        env.update(session.env)
        env.update(launch.env)
        env["BGD_SESSION_ID"] = session.id
        # The conversation (the agent's history: Claude Code's --resume state, an ACP agent's
        # session/load) or the workspace lives on the worker that ran it: its later processes go there.
        made = session.workspace is not None and "path" in session.workspace
        pinned = session.worker if (session.has_history or made) else None
        state.spec = p.RunSpec(
            owner=self.owner, session_id=session.id, backend=agent_cfg.backend,
            launch={"argv": list(launch.argv), "env": env, "cwd": session.cwd,
                    "stdin": launch.stdin.decode("utf-8", "replace") if launch.stdin is not None else None},
            text=text, worker=pinned, heartbeat_s=config.heartbeat_s,
            stop_grace_s=self.daemon.config.stop_grace_s, idle_timeout_s=self.daemon.config.idle_timeout_s,
            options={"session": session.to_record(),
                     "agent": {"name": agent_cfg.name, "backend": agent_cfg.backend,
                               "command": list(agent_cfg.command), "args": list(agent_cfg.args),
                               "env": dict(agent_cfg.env)}},
            mcp_config=mcp_config,
            workspace=None if session.workspace is None or made else dict(session.workspace))
        state.process = RemoteProcess(self, state, on_exit)
        run.driver = ClusterDriver(run.driver, self, state)
        return state.process

    async def _start_workflow(self, state: ClusterRun) -> None:
        from bgd.cluster import codec  # temporalio: loaded only when [cluster] is used
        link = self._link()
        spec = state.spec.to_json()
        config = self.config

        async def start():
            from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
            client = await link.connected()
            if config.task_queue not in link.key_checked:
                # An owner whose key is not its workers' would have every run fail there: refused here.
                await codec.check_cluster_key(client, link.codec, config.task_queue, create=True)
                link.key_checked.add(config.task_queue)
            await client.start_workflow(
                p.RUN_WORKFLOW, spec, id=state.workflow_id, task_queue=config.task_queue,
                task_timeout=timedelta(seconds=p.task_timeout_s(config.heartbeat_s)),
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL)

        try:
            await link.call(start)
        except (LinkError, codec.KeyMismatch) as exc:
            raise ClusterStartError(str(exc)) from None
        except Exception as exc:
            from temporalio.exceptions import WorkflowAlreadyStartedError
            if isinstance(exc, WorkflowAlreadyStartedError):
                raise ClusterStartError(f"this run was started on the cluster before (workflow {state.workflow_id}, "
                                        "e.g. the same GitHub delivery fired twice); it is not started again") from None
            raise ClusterStartError(f"the Temporal server refused the run: {_short(exc)}") from None
        self.runs[state.workflow_id] = state
        self.store.save_cluster_run(state.workflow_id, state.session_id, state.to_record())
        self._follow_run(state)

    # -- following a run and its log ----------------------------------------------------------------

    def _follow_run(self, state: ClusterRun) -> None:
        link = self._link()
        link.spawn(self._watch_run(link, state.workflow_id))

    async def _watch_run(self, link: TemporalLink, workflow_id: str) -> None:
        """(asyncio) The run workflow's history: its claim, then its outcome."""
        from bgd.cluster import codec  # temporalio: loaded only when [cluster] is used
        from temporalio.service import RPCError, RPCStatusCode
        import asyncio
        while not link.closed:
            try:
                client = await link.connected()
                handle = client.get_workflow_handle(workflow_id)
                async for event in handle.fetch_history_events(wait_new_event=True):
                    outcome = _outcome_of(event, link.codec)
                    if event.HasField("workflow_execution_signaled_event_attributes"):
                        attrs = event.workflow_execution_signaled_event_attributes
                        if attrs.signal_name == p.CLAIM_SIGNAL and attrs.input.payloads:
                            claim = fastjson.loads(link.codec.open_data(attrs.input.payloads[0]))
                            link.post(self._on_claim, workflow_id, claim)
                    elif event.HasField("workflow_task_failed_event_attributes"):
                        message = event.workflow_task_failed_event_attributes.failure.message
                        if codec.MISMATCH in message:
                            # A worker cannot decrypt the run (another key): it is refused, not retried.
                            await _terminate(client, workflow_id, message)
                            link.post(self._on_outcome, workflow_id, {"outcome": p.REFUSED, "error": message})
                            return
                    elif outcome is not None:
                        link.post(self._on_outcome, workflow_id, outcome)
                        return
                return
            except codec.KeyMismatch as exc:
                await _terminate(client, workflow_id, str(exc))
                link.post(self._on_outcome, workflow_id, {"outcome": p.REFUSED, "error": str(exc)})
                return
            except RPCError as exc:
                if exc.status == RPCStatusCode.NOT_FOUND:
                    link.post(self._on_outcome, workflow_id,
                              {"outcome": p.REFUSED, "error": "the run's workflow is gone from the Temporal server"})
                    return
                log.warning("following %s: %s; again in 1 s", workflow_id, _short(exc))
            except LinkError as exc:
                log.warning("following %s: %s", workflow_id, exc)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("following %s: %s; again in 1 s", workflow_id, _short(exc))
            await asyncio.sleep(1.0)

    def _on_claim(self, workflow_id: str, claim: dict) -> None:
        state = self.runs.get(workflow_id)
        if state is None or not state.open:
            return
        first = state.worker is None
        state.worker = claim.get("worker")
        state.queue = claim.get("queue")
        state.log = state.log or claim.get("log")
        self.store.save_cluster_run(state.workflow_id, state.session_id, state.to_record())
        session = self.sessions.sessions.get(state.session_id)
        if first and session is not None and self._current(state):
            self.sessions.update(session, worker=state.worker)
        if state.log:
            self._follow_log(state.log)

    def _follow_log(self, segment_id: str) -> None:
        base, segment = p.log_base(segment_id)
        follower = self.logs.get(base)
        if follower is not None:
            return
        # From where it was read to before (by this run of the daemon or one before it), else from
        # the segment the claim names: never a segment's records twice.
        stored = self.store.cluster_log_position(base)
        start, after = (stored if stored is not None and stored[0] >= segment else (segment, 0))
        follower = {"segment": start, "event_id": after, "parts": p.Reassembler()}
        self.logs[base] = follower
        link = self._link()
        follower["future"] = link.spawn(self._read_log(link, base, start, after, follower))

    async def _read_log(self, link: TemporalLink, base: str, segment: int, after: int, follower: dict) -> None:
        """(asyncio) One log's segments, in order, from event `after` of `segment`; records go to trio
        in batches.  `follower["seen"]` (written here, read in trio) is the last event read of any kind."""
        from bgd.cluster import codec  # temporalio: loaded only when [cluster] is used
        from temporalio.service import RPCError, RPCStatusCode
        import asyncio
        last_event = after
        while not link.closed:
            segment_id = f"{base}/{segment}"
            following = None
            try:
                client = await link.connected()
                history = client.get_workflow_handle(segment_id).fetch_history_events(wait_new_event=True)
                while following is None:
                    # A page at a time (a long poll's answer): its records go to trio in one batch.
                    await history.fetch_next_page()
                    items: list = []
                    for event in history.current_page or ():
                        if event.event_id <= last_event:
                            continue
                        last_event = event.event_id
                        if not event.HasField("workflow_execution_signaled_event_attributes"):
                            continue
                        attrs = event.workflow_execution_signaled_event_attributes
                        if attrs.signal_name != p.LOG_SIGNAL or not attrs.input.payloads:
                            continue
                        try:
                            payload = fastjson.loads(link.codec.open_data(attrs.input.payloads[0]))
                        except codec.KeyMismatch as exc:
                            log.error("reading log %s: %s", segment_id, exc)
                            continue
                        if "next" in payload:   # the segment is full: the rest is in the next one
                            following = payload["next"]
                            break
                        items.extend(payload.get("items") or ())
                    if items:
                        link.post(self._on_items, base, segment, last_event, items)
                    follower["seen"] = (segment, last_event)
                    if history.next_page_token is None:
                        break
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    log.warning("reading log %s: %s; again in 1 s", segment_id, _short(exc))
                    await asyncio.sleep(1.0)
                else:
                    await asyncio.sleep(0.1)  # claimed, but no record sent yet
                continue
            except LinkError as exc:
                log.warning("reading log %s: %s", segment_id, exc)
                await asyncio.sleep(1.0)
                continue
            if following is None:
                # The segment ended without naming another: its worker is gone. Keep it in case
                # it was terminated early (nothing more can come), by waiting to be cancelled.
                link.post(self._on_log_end, base, segment)
                return
            segment = p.log_base(following)[1]
            last_event = 0
            link.post(self._on_segment, base, segment)

    def _on_segment(self, base: str, segment: int) -> None:
        follower = self.logs.get(base)
        if follower is not None:
            follower["segment"] = segment
            follower["event_id"] = 0
            self.store.save_cluster_log(base, segment, 0)

    def _on_log_end(self, base: str, segment: int) -> None:
        follower = self.logs.get(base)
        if follower is not None:
            follower["ended"] = True

    def _on_items(self, base: str, segment: int, event_id: int, items: list) -> None:
        follower = self.logs.get(base)
        if follower is None or follower["segment"] != segment:
            return
        follower["event_id"] = event_id
        # The whole batch in one commit, with each run's applied offset: a daemon killed midway
        # applies it again from the stored offsets (events are delivered after the commit).
        touched: dict[str, ClusterRun] = {}
        exits: list[tuple[ClusterRun, Any]] = []
        with self.store.transaction():
            for record in follower["parts"].feed(items):
                state = self.runs.get(record.run)
                if state is None or not state.open:
                    continue
                try:
                    if not state.offsets.accept(record.offset):
                        continue
                except p.GapError as exc:
                    log.error("run %s: %s; its transcript may miss lines", record.run, exc)
                    state.offsets.next = record.offset + 1
                self._apply(state, record)
                touched[state.workflow_id] = state
                if record.op == "exit":
                    exits.append((state, record.arg.get("code")))
            # The transcript entries the records made wait for the session manager's group commit
            # (EventBus.record_soon); they go in this one, with the offsets that say they were
            # applied: a daemon killed before a later commit would otherwise skip them on restart.
            self.daemon.bus.flush()
            for state in touched.values():
                self.store.save_cluster_run(state.workflow_id, state.session_id, state.to_record())
            if not follower["parts"].midway:  # else a restart must read this record's first parts again
                self.store.save_cluster_log(base, segment, event_id)
        for state, code in exits:
            self._finish(state, code, started=code is not None)

    def _apply(self, state: ClusterRun, record: p.Record) -> None:
        run, op, arg = state.run, record.op, record.arg
        if run is None:
            return
        if op == "record":
            run.record(arg[0], arg[1])
        elif op == "assistant":
            run.assistant(arg)
        elif op == "ask":
            run.ask(arg)
        elif op == "withdraw":
            run.withdraw(arg)
        elif op == "turn_done":
            run.turn_done(error=arg.get("error"), cost_usd=arg.get("cost_usd"), turns=arg.get("turns"),
                          text=arg.get("text"))
        elif op == "fail":
            run.fail(arg["error"], stop=bool(arg.get("stop")))
        elif op == "exit":
            if state.process is not None:
                state.process.stderr = arg.get("stderr") or ""
        elif op == "workspace":
            session = self.sessions.sessions.get(state.session_id)
            if session is not None and "path" in arg and self._current(state):
                self.sessions.update(session, cwd=arg["cwd"], workspace={**(session.workspace or {}),
                                                                         "path": arg["path"], "worker": arg["worker"]})
            for hook in self.on_workspace:
                hook(state.session_id, arg)
        elif op == "started":
            session = self.sessions.sessions.get(state.session_id)
            if session is not None and self._current(state) and session.worker != arg.get("worker"):
                self.sessions.update(session, worker=arg.get("worker"))
        elif op == "agent_session":
            run.set_agent_session(arg)
        elif op == "usage":
            run.add_usage(arg)
        elif op == "mcp" and self.nursery is not None:
            # Applied once, in order, like the rest; answered once it has run.  A daemon killed
            # before the answer leaves the worker's call to time out (relay.RELAY_TIMEOUT_S).
            self.nursery.start_soon(self._relay, state, arg)

    async def _relay(self, state: ClusterRun, call: dict) -> None:
        """A call of the session's MCP tools, relayed by its worker: run here as that session, with
        the checks of its scope, and the result (or the error) delivered back to the worker."""
        from bgd.rpc.server import call_as
        answer: dict[str, Any] = {"op": "mcp_result", "call": call.get("call")}
        session = self.sessions.sessions.get(state.session_id)
        try:
            if session is None or not self._current(state):
                raise RpcError(INVALID_STATE, f"session {state.session_id} no longer runs this process")
            scope = p.mcp_scope(session.id, session.origin)
            answer["result"] = await call_as(self.daemon, scope, call.get("method"), call.get("params"))
        except RpcError as exc:
            answer["error"] = exc.to_wire()
        try:
            await self.deliver(state, answer)
        except RpcError as exc:
            log.info("run %s: the answer to %s did not reach the worker: %s", state.workflow_id,
                     call.get("method"), exc.message)

    def _on_outcome(self, workflow_id: str, outcome: dict) -> None:
        state = self.runs.get(workflow_id)
        if state is None or not state.open:
            return
        state.outcome = outcome
        self.store.save_cluster_run(state.workflow_id, state.session_id, state.to_record())
        kind = outcome.get("outcome")
        run = state.run
        if kind == p.STOPPED and run is not None and self._current(state) and not run.stopping:
            # Not a stop of ours: the worker was shut down, or someone cancelled the workflow.
            kind = p.LOST
            outcome = dict(outcome, error=f"the run was stopped on the cluster (worker {outcome.get('worker')!r} "
                                          "shut down, or its workflow was cancelled); reply to start it again")
        if kind in (p.EXITED, p.STOPPED) and outcome.get("records") is not None:
            if state.offsets.next >= outcome["records"]:
                self._finish(state, None, started=False)
            # else: the exit record is still on its way in the log; it finishes the run
            elif self.nursery is not None:
                self.nursery.start_soon(self._finish_later, state, LOST_DRAIN_S)
            return
        if kind == p.LOST or kind == p.REFUSED:
            error = outcome.get("error") or "the run failed on the cluster"
            if self.nursery is not None:
                self.nursery.start_soon(self._fail_after_drain, state, error)
            return
        self._finish(state, None, started=False)

    async def _finish_later(self, state: ClusterRun, delay: float) -> None:
        await trio.sleep(delay)
        if state.open:
            self._finish(state, None, started=False)

    async def _fail_after_drain(self, state: ClusterRun, error: str) -> None:
        """A lost run: read what its worker sent before it went, then fail the session."""
        await self._drain(state)
        if not state.open:
            return
        run = state.run
        if run is not None and self._current(state) and not run.stopping:
            run.fail(error, stop=False)
        self._finish(state, None, started=False)

    async def _drain(self, state: ClusterRun) -> None:
        if not state.log or self.link is None:
            return
        base, _ = p.log_base(state.log)
        follower = self.logs.get(base)
        if follower is None:
            return
        link = self.link

        segment = follower["segment"]

        async def length() -> int:
            client = await link.connected()
            description = await client.get_workflow_handle(f"{base}/{segment}").describe()
            return description.raw_description.workflow_execution_info.history_length

        with trio.move_on_after(LOST_DRAIN_S):
            try:
                target = await link.call(length)
            except Exception:
                return
            while follower.get("seen", (segment, 0)) < (segment, target) and not follower.get("ended"):
                await trio.sleep(0.02)
            await trio.sleep(0.02)  # what was read is handed to trio in order; let it be applied

    def _finish(self, state: ClusterRun, code: int | None, *, started: bool) -> None:
        """The run is over: the session runner hears its process exit."""
        if not state.open:
            return
        state.open = False
        self.runs.pop(state.workflow_id, None)
        self.store.save_cluster_run(state.workflow_id, state.session_id, state.to_record())
        process = state.process
        if process is not None and not process.exited.is_set():
            process.returncode = code
            if not started and state.run is not None:
                # No exit of the agent to interpret (never started, lost, or stopped): what the
                # session is now was said by the records and the outcome.
                state.run.stopping = True
            process.exited.set()
            process.on_exit(code if code is not None else -9)
        self._release_log(state)

    def _release_log(self, state: ClusterRun) -> None:
        if not state.log:
            return
        base, _ = p.log_base(state.log)
        if any(s.log and p.log_base(s.log)[0] == base for s in self.runs.values()):
            return
        follower = self.logs.pop(base, None)
        if follower is not None and follower.get("future") is not None:
            follower["future"].cancel()   # its position stays stored: a later run there resumes from it

    def _current(self, state: ClusterRun) -> bool:
        run = state.run
        return run is not None and self.sessions.runs.get(state.session_id) is run

    # -- deliveries and stop -------------------------------------------------------------------------------

    async def deliver(self, state: ClusterRun, message: dict) -> dict:
        """An answer, a turn or a stop for the run's worker, as a workflow update; returns once the
        worker has it, raises RpcError with the worker's reason when it refuses."""
        link = self._link()

        async def update():
            client = await link.connected()
            return await client.get_workflow_handle(state.workflow_id).execute_update(
                p.ANSWER_UPDATE, message, result_type=dict)

        try:
            return await link.call(update)
        except LinkError as exc:
            raise RpcError(INVALID_STATE, str(exc)) from None
        except Exception as exc:
            raise RpcError(INVALID_STATE, _update_error(exc, state)) from None

    async def cancel(self, state: ClusterRun) -> None:
        if not state.open:
            return
        link = self._link()

        async def cancel():
            client = await link.connected()
            await client.get_workflow_handle(state.workflow_id).cancel()

        try:
            await link.call(cancel)
        except Exception as exc:
            log.warning("stopping %s: %s", state.workflow_id, _short(exc))

    # -- after a restart ---------------------------------------------------------------------------------

    def adopt(self, session) -> bool:
        """On load: a session with an open cluster run keeps its state; its run is followed again
        from the stored offsets.  False when the session has no open run (the runner fails it)."""
        if session.where != "cluster":
            return False
        records = [r for r in self.store.cluster_runs(session.id) if r.get("open")]
        if not records or self.config is None:
            return False
        record = max(records, key=lambda r: r["n"])
        state = ClusterRun(record["workflow_id"], session.id, record["n"], worker=record.get("worker"),
                           queue=record.get("queue"), log=record.get("log"), outcome=record.get("outcome"),
                           offsets=p.Offsets(record.get("applied", 0)))

        def build(run, on_exit):
            state.run = run
            state.process = RemoteProcess(self, state, on_exit)
            run.driver = ClusterDriver(run.driver, self, state)
            return state.process

        if self.sessions.adopt(session, build) is None:
            return False
        self.runs[state.workflow_id] = state
        self._follow_run(state)
        if state.log:
            self._follow_log(state.log)
        return True

    def forget(self, session, why: str) -> None:
        if why == "removed":
            self.store.delete_cluster_runs(session.id)

    # -- status ---------------------------------------------------------------------------------------------

    async def status(self) -> dict:
        config = self.config
        if config is None:
            raise RpcError(INVALID_PARAMS, NOT_CONFIGURED)
        link = self._link()
        mine = {}
        for state in self.runs.values():
            mine.setdefault(state.worker, []).append(state.session_id)

        async def gather() -> dict:
            from temporalio.api.enums.v1 import TaskQueueType
            from temporalio.api.taskqueue.v1 import TaskQueue
            from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest, GetSystemInfoRequest
            client = await link.connected()
            info = await client.workflow_service.get_system_info(GetSystemInfoRequest(),
                                                                 timeout=timedelta(seconds=5))
            described = await client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(namespace=config.namespace, task_queue=TaskQueue(name=config.task_queue),
                                         task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY),
                timeout=timedelta(seconds=5))
            names = sorted({poller.identity for poller in described.pollers if poller.identity})
            workers = []
            if names:
                import uuid
                answers = await client.execute_workflow(
                    p.STATUS_WORKFLOW, [p.worker_queue(config.task_queue, n) for n in names],
                    id=f"bgagents-status/{self.owner}/{uuid.uuid4().hex[:12]}", task_queue=config.task_queue,
                    execution_timeout=timedelta(seconds=15), result_type=list,
                    task_timeout=timedelta(seconds=p.task_timeout_s(config.heartbeat_s)))
                workers = answers
            seen = {poller.identity: poller.last_access_time.ToDatetime().isoformat() + "Z"
                    for poller in described.pollers if poller.identity}
            return {"server_version": info.server_version, "workers": workers, "seen": seen}

        try:
            answer = await link.call(gather)
        except LinkError as exc:
            return {"temporal": config.temporal, "namespace": config.namespace, "task_queue": config.task_queue,
                    "reachable": False, "error": str(exc), "workers": [], "owner": self.owner}
        except Exception as exc:
            return {"temporal": config.temporal, "namespace": config.namespace, "task_queue": config.task_queue,
                    "reachable": False, "error": _short(exc), "workers": [], "owner": self.owner}
        workers = []
        for worker in answer["workers"]:
            name = worker.get("worker") or worker.get("queue", "").rpartition("@")[2]
            if "error" in worker:
                workers.append({"name": name, "reachable": False, "error": worker["error"],
                                "last_seen": answer["seen"].get(name)})
                continue
            runs = [{"session": r["session"], "workflow_id": r["workflow_id"], "mine": r["owner"] == self.owner,
                     "pid": r.get("pid")} for r in worker["runs"]]
            workers.append({"name": name, "reachable": True, "host": worker.get("host"), "slots": worker["slots"],
                            "in_use": worker["in_use"], "free": max(0, worker["slots"] - worker["in_use"]),
                            "runs": runs, "last_seen": answer["seen"].get(name)})
        return {"temporal": config.temporal, "namespace": config.namespace, "task_queue": config.task_queue,
                "reachable": True, "server_version": answer["server_version"], "owner": self.owner,
                "heartbeat_s": config.heartbeat_s, "workers": workers,
                "open_runs": len(self.runs), "waiting": len(mine.get(None, []))}


class ClusterStartError(OSError):
    """A cluster run could not be started (the message says why and what to do)."""


async def _terminate(client, workflow_id: str, reason: str) -> None:
    try:
        await client.get_workflow_handle(workflow_id).terminate(reason[:1000])
    except Exception as exc:  # it is over already, or the server is away: the run times out
        log.warning("ending %s: %s", workflow_id, _short(exc))


def _outcome_of(event, sealed: "codec.ClusterCodec") -> dict | None:
    """A run workflow's closing history event -> its outcome, or None for any other event."""
    if event.HasField("workflow_execution_completed_event_attributes"):
        payloads = event.workflow_execution_completed_event_attributes.result.payloads
        return fastjson.loads(sealed.open_data(payloads[0])) if payloads else {"outcome": p.EXITED}
    if event.HasField("workflow_execution_failed_event_attributes"):
        failure = event.workflow_execution_failed_event_attributes.failure
        return {"outcome": p.REFUSED, "error": f"the run failed on the cluster: {failure.message}"}
    if event.HasField("workflow_execution_timed_out_event_attributes"):
        return {"outcome": p.REFUSED, "error": "the run timed out on the cluster"}
    if event.HasField("workflow_execution_terminated_event_attributes"):
        reason = event.workflow_execution_terminated_event_attributes.reason
        return {"outcome": p.REFUSED, "error": "the run was terminated on the Temporal server"
                + (f" ({reason})" if reason else "")}
    if event.HasField("workflow_execution_canceled_event_attributes"):
        return {"outcome": p.STOPPED}
    if event.HasField("workflow_execution_continued_as_new_event_attributes"):
        return {"outcome": p.REFUSED, "error": "the run continued as new, which bgd does not do"}
    return None


def _update_error(exc: BaseException, state: ClusterRun) -> str:
    cause = exc
    while getattr(cause, "cause", None) is not None:
        cause = cause.cause
    message = getattr(cause, "message", None) or str(cause)
    return message or f"the worker running session {state.session_id} did not take it"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def install(daemon) -> None:
    service = ClusterService(daemon)
    daemon.cluster = service
    daemon.services.append(service.run)
    daemon.sessions.placements["cluster"] = service
    daemon.sessions.on_load.append(service.adopt)
    daemon.sessions.on_session_end.append(service.forget)
    routines = getattr(daemon, "routines", None)
    if routines is not None:
        service.on_workspace.append(routines.on_cluster_workspace)
