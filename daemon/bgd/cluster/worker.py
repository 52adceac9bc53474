"""`bgd worker --temporal HOST:PORT [--slots N] [--name NAME]`: run agents for the cluster (SPEC §14).

An asyncio process (the Temporal SDK's own loop) with two Temporal workers on one client:

- on the shared task queue: the workflows (any worker may run them) and the first process of a
  run, polled only while a slot is free (`AgentSlots`, a custom slot supplier);
- on its own queue, `<task_queue>@<name>`: deliveries to the runs it holds (answers, turns,
  stop), its status, and later processes of conversations it holds (these take a slot inside).

A run's agent is driven by the same backend driver as a local session (bgd.agents), whose `ctl`
calls become records in the owner's transcript log (`LogWriter`, see protocol.py).  The activity
heartbeats every `heartbeat_s`; a cancellation (bgctl stop) or a refused heartbeat (the server
gave the run up) reaches it there.  The worker also watches its own contact with the server: cut
off for a heartbeat timeout, it kills its agents itself, since the server has given their runs up
and a reply may start the conversation again elsewhere; two copies never run.

Everything it sends and reads through Temporal is encrypted with the cluster's key (`--key-file`,
bgd.cluster.codec).  At start it opens the cluster's key check with that key and refuses to start
when it cannot.  A run it cannot open fails (the owning daemon sees why); the worker then checks
its key again, and if it is the one that is wrong it stops asking for work, with a one-line reason
(exit status KEY_EXIT).  A routine run's workspace is cloned here, under `--state-dir`
(bgd.cluster.workspaces).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import socket
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import trio

from temporalio import activity
from temporalio.client import Client
from temporalio.api.common.v1 import Payload
from temporalio.common import RawValue, WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.worker import (CustomSlotSupplier, FixedSizeSlotSupplier, SlotMarkUsedContext, SlotPermit,
                               SlotReleaseContext, SlotReserveContext, Worker, WorkerTuner)
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from bgcore.config import AgentConfig
from bgd.agents.base import driver_class
from bgd.cluster import codec
from bgd.cluster import protocol as p
from bgd.cluster.agent import LocalAgent, WorkerControl
from bgd.cluster.relay import McpRelay
from bgd.cluster.workflows import DELIVER_ACTIVITY, RUN_ACTIVITY, STATUS_ACTIVITY, AgentRun, ClusterStatus
from bgd.cluster.workspaces import Workspaces
from bgd.routines.workspace import CloneFailed, prepare_failure, read_pushes
from bgd.sessions.model import Session

log = logging.getLogger("bgd.worker")
LOG_LIFETIME = timedelta(days=7)   # a log segment whose worker died is closed by Temporal after this
CONTACT_S = 0.5                    # how often the worker checks that the server answers
# The longest the SDK holds a heartbeat back: a run heartbeats every heartbeat_s / 2, so its
# heartbeats reach the server (and a cancellation reaches it) within one heartbeat_s.
HEARTBEAT_THROTTLE = timedelta(seconds=1)
KEY_EXIT = 3    # the key file is missing or not the cluster's: starting again does not help (the unit says so)


class AgentSlots:
    """How many agents may run at once on this worker; shared by both Temporal workers.

    The shared queue's poller reserves a slot before it asks for work (`reserve`); the slot counts as
    running once a run arrives on it (`use`).  A later process of a conversation held here arrives on
    the worker's own queue and needs only a free running slot (`take`), so an idle poller's
    reservation never keeps it waiting; in a race with that poller the worker may run one agent more
    than its slots for as long as the two overlap.  The SDK calls `release` from its own thread,
    hence the lock and call_soon_threadsafe."""

    def __init__(self, slots: int):
        self.slots = slots
        self.running = 0
        self.reserved = 0
        self._lock = threading.Lock()
        self._waiters: list[asyncio.Future] = []
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def used(self) -> int:
        return self.running

    def try_reserve(self) -> bool:
        with self._lock:
            if self.running + self.reserved < self.slots:
                self.reserved += 1
                return True
            return False

    def try_take(self) -> bool:
        with self._lock:
            if self.running < self.slots:
                self.running += 1
                return True
            return False

    async def _wait_for(self, attempt) -> None:
        while not attempt():
            future = asyncio.get_running_loop().create_future()
            with self._lock:
                self._waiters.append(future)
            try:
                await future
            finally:
                with self._lock:
                    if future in self._waiters:
                        self._waiters.remove(future)

    async def reserve(self) -> None:
        await self._wait_for(self.try_reserve)

    async def take(self) -> None:
        await self._wait_for(self.try_take)

    def use(self) -> None:
        with self._lock:
            self.reserved -= 1
            self.running += 1

    def release(self, *, used: bool) -> None:
        with self._lock:
            if used:
                self.running -= 1
            else:
                self.reserved -= 1
            waiters, self._waiters = self._waiters, []
        for future in waiters:
            if self.loop is not None:
                self.loop.call_soon_threadsafe(_resolve, future)

    def give_back(self) -> None:
        self.release(used=True)


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class _SlotSupplier(CustomSlotSupplier):
    """The shared queue's activity slots: polled only while an agent slot is free."""

    def __init__(self, slots: AgentSlots):
        self.slots = slots

    async def reserve_slot(self, ctx: SlotReserveContext) -> SlotPermit:
        await self.slots.reserve()
        return _Permit()

    def try_reserve_slot(self, ctx: SlotReserveContext) -> SlotPermit | None:
        return _Permit() if self.slots.try_reserve() else None

    def mark_slot_used(self, ctx: SlotMarkUsedContext) -> None:
        if isinstance(ctx.permit, _Permit) and not ctx.permit.used:
            ctx.permit.used = True
            self.slots.use()

    def release_slot(self, ctx: SlotReleaseContext) -> None:
        used = isinstance(ctx.permit, _Permit) and ctx.permit.used
        self.slots.release(used=used)


class _Permit(SlotPermit):
    def __init__(self) -> None:
        super().__init__()
        self.used = False


class LogWriter:
    """This worker's transcript log for one owner: records in, batched signals out, in order."""

    def __init__(self, node: "WorkerNode", owner: str):
        self.node = node
        self.owner = owner
        self.segment = 0
        self.pending: list[bytes] = []   # wire items, as JSON
        self.appended = 0        # wire items handed in
        self.written = 0         # wire items acknowledged by the server
        self.signals = 0         # signals in the current segment
        self.bytes = 0
        self.started = False     # the current segment's workflow exists
        self._wake = asyncio.Event()
        self._written = asyncio.Condition()
        self._task = asyncio.create_task(self._loop())

    @property
    def current(self) -> str:
        return p.log_id(self.owner, self.node.name, self.node.epoch, self.segment)

    def append(self, run: str, offset: int, op: str, arg: Any) -> None:
        items = p.encode_record(run, offset, op, arg)
        self.pending.extend(items)
        self.appended += len(items)
        self._wake.set()

    async def flushed(self, timeout: float | None = None) -> bool:
        """Wait until everything appended so far is in the log; False on timeout."""
        target = self.appended
        async with self._written:
            try:
                await asyncio.wait_for(self._written.wait_for(lambda: self.written >= target), timeout)
                return True
            except asyncio.TimeoutError:
                return False

    async def _loop(self) -> None:
        backoff = 0.1
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.pending:
                payload, count = p.take_batch(self.pending)
                began = time.monotonic()
                try:
                    await self._signal(payload)
                except Exception as exc:  # the server is away: keep the batch, try again
                    log.warning("transcript log %s: cannot send %d records (%s); retrying", self.current,
                                count, exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                del self.pending[:count]
                backoff = 0.1
                self.node.contact()
                self.signals += 1
                self.bytes += len(payload)
                async with self._written:
                    self.written += count
                    self._written.notify_all()
                if self.signals >= self.node.segment_signals or self.bytes >= p.SEGMENT_BYTES:
                    await self._roll_over()
                # FLUSH_S from one signal's start to the next: a slow answer is not waited for twice.
                await asyncio.sleep(max(0.0, p.FLUSH_S - (time.monotonic() - began)))

    async def _signal(self, payload: bytes) -> None:
        client = self.node.client
        arg = RawValue(Payload(metadata={"encoding": b"json/plain"}, data=payload))
        if not self.started:
            await client.start_workflow(
                p.LOG_WORKFLOW, id=self.current, task_queue=p.log_queue(self.node.task_queue),
                start_signal=p.LOG_SIGNAL, start_signal_args=[arg],
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING, execution_timeout=LOG_LIFETIME)
            self.started = True
        else:
            await client.get_workflow_handle(self.current).signal(p.LOG_SIGNAL, arg)

    async def _roll_over(self) -> None:
        old = self.current
        nxt = p.log_id(self.owner, self.node.name, self.node.epoch, self.segment + 1)
        while True:
            try:
                await self.node.client.get_workflow_handle(old).signal(
                    p.LOG_SIGNAL, RawValue(Payload(metadata={"encoding": b"json/plain"},
                                                   data=p.next_segment_payload(nxt))))
                break
            except Exception as exc:
                log.warning("transcript log %s: cannot close it (%s); retrying", old, exc)
                await asyncio.sleep(1.0)
        self.segment += 1
        self.signals = 0
        self.bytes = 0
        self.started = False
        try:
            await self.node.client.get_workflow_handle(old).terminate("segment full; continued in " + nxt)
        except Exception as exc:  # it closes itself after LOG_LIFETIME
            log.info("transcript log %s: not terminated (%s)", old, exc)


class LiveRun:
    """One run this worker holds: its agent process, driver and record counter."""

    def __init__(self, node: "WorkerNode", workflow_id: str, spec: p.RunSpec):
        self.node = node
        self.workflow_id = workflow_id
        self.spec = spec
        self.offset = 0
        self.log = node.log_for(spec.owner)
        self.session = Session.from_record(spec.options["session"])
        agent = spec.options["agent"]
        self.agent_config = AgentConfig(agent["name"], agent["backend"], tuple(agent["command"]),
                                        tuple(agent.get("args", ())), dict(agent.get("env", {})))
        self.ctl = WorkerControl(self.session, self.emit)
        self.ctl._on_fail = self.stop_soon
        self.ctl._on_idle = self._idle_soon
        self.driver = driver_class(spec.backend)(self.agent_config, self.session, self.ctl)
        self.agent: LocalAgent | None = None
        self.relay: McpRelay | None = None
        self.stopping: asyncio.Task | None = None
        self.started_at = time.time()
        self.idle_generation = 0
        self.exit_sent = False
        self._timers: set[asyncio.Task] = set()
        self.held: Path | None = None              # the workspace it works in (node.workspaces)
        self.clones: list[Path] = []               # the clones it made, whose pushes it reports
        self.pushes: tuple[list, list] = ([], [])  # what was reported of them last

    def emit(self, op: str, arg: Any) -> None:
        if self.clones and op in ("turn_done", "fail", "exit"):
            self._report_pushes()
        self.log.append(self.workflow_id, self.offset, op, arg)
        self.offset += 1

    def _report_pushes(self) -> None:
        """What the clones pushed, read as a local run's are (their reflogs and the guard's log: a
        few small files), sent when it changed, before the record that may end the run."""
        pushes = read_pushes(self.clones, tuple(self.spec.workspace.get("push") or ()))
        if pushes != self.pushes:
            self.pushes = pushes
            self.log.append(self.workflow_id, self.offset, "workspace", {"pushed": pushes[0], "refused": pushes[1]})
            self.offset += 1

    async def _make_workspace(self, request: dict) -> str | None:
        """The run's fresh workspace in this worker's state dir; the first clone (the agent's
        directory), or None when it could not be made (the run then ends as a local one would)."""
        workspaces = self.node.workspaces
        run_dir = self.held = workspaces.hold(workspaces.run_dir(self.spec.owner, request["run_id"]))
        try:
            _, clones = await workspaces.prepare(self.spec.owner, request)
        except (CloneFailed, trio.TooSlowError, OSError) as exc:
            status, error = prepare_failure(exc, run_dir)
            log.info("run %s: %s", self.workflow_id, error)
            self.emit("workspace", {"status": status, "error": error})
            self.ctl.fail(error, stop=False)
            return None
        self.clones = [c.path for c in clones]
        self.emit("workspace", {"path": str(run_dir), "cwd": str(clones[0].path), "worker": self.node.name,
                                "repos": [c.to_json() for c in clones]})
        return str(clones[0].path)

    def emit_exit(self) -> None:
        """The run's last record: how the agent process ended (once)."""
        if not self.exit_sent:
            self.exit_sent = True
            self.emit("exit", {"code": self.agent.returncode, "stderr": self.agent.stderr_last_line()})

    async def start(self) -> bool:
        launch = self.spec.launch
        cwd = launch["cwd"]
        if self.spec.workspace is not None:
            cwd = await self._make_workspace(self.spec.workspace)
            if cwd is None or self.ctl.stopping:
                self.exit_sent = True
                self.emit("exit", {"code": None, "stderr": ""})
                return False
            self.session.cwd = cwd   # what the driver tells the agent (ACP's session/new) is the clone here
        else:
            self.held = self.node.workspaces.hold(self.node.workspaces.of(cwd))
        env = dict(os.environ)
        env.update(launch.get("env") or {})
        stdin = launch.get("stdin")
        argv = await self._with_relay(list(launch["argv"]))
        self.agent = LocalAgent(argv, cwd, env, self._line,
                                stdin_text=stdin.encode() if stdin is not None else None)
        self.ctl.agent = self.agent
        try:
            await self.agent.start()
        except OSError as exc:
            await self._ended()
            binary = launch["argv"][0]
            hint = self.driver.install_hint
            if isinstance(exc, FileNotFoundError) and not os.path.isdir(cwd):
                error = (f"directory {cwd!r} does not exist on worker {self.node.name!r}; cluster runs need it "
                         "there too" + (" (the run's workspace was removed after keep_workspaces_days)"
                                        if self.held is not None else ""))
            elif isinstance(exc, FileNotFoundError):
                error = (f"agent binary {binary!r} not found on worker {self.node.name!r}; install it there"
                         + (f" ({hint})" if hint else ""))
            else:
                error = f"cannot start agent {binary!r} on worker {self.node.name!r}: {exc.strerror or exc}"
            self.ctl.fail(error, stop=False)
            self.exit_sent = True
            self.emit("exit", {"code": None, "stderr": ""})
            return False
        self.emit("started", {"worker": self.node.name, "pid": self.agent.pid})
        task = asyncio.get_running_loop().create_task(self._after_exit())
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)
        await self.driver.started(self.spec.text)
        return True

    async def _with_relay(self, argv: list[str]) -> list[str]:
        """The daemon's MCP tools, relayed to the owner (bgd.cluster.relay): the MCP config the owner
        put in the launch becomes this machine's, calling this run's relay socket.  The driver's own
        launch runs here too, with it, for what a driver keeps of its launch (the ACP driver names the
        MCP servers in session/new); the argv stays the owner's, with what the owner added to it."""
        config = self.spec.mcp_config
        if not config:
            return argv
        self.relay = McpRelay(self.session.id, self.session.origin, self.emit)
        await self.relay.start()
        mine = self.relay.config(config)
        self.driver.launch(self.spec.text, mine)
        return [mine if part == config else part for part in argv]

    async def _after_exit(self) -> None:
        await self.agent.exited.wait()
        await self._ended()

    async def _ended(self) -> None:
        self.ctl.end_background()
        if self.relay is not None:
            await self.relay.close()

    def _line(self, line: bytes) -> None:
        self.driver.line(line)

    def _idle_soon(self) -> None:
        """A turn ended: with no new turn within idle_timeout_s, close the agent's stdin so it exits
        (the owner asks for the same; this holds while the owner is away too)."""
        if self.driver.keeps_process:
            task = asyncio.get_running_loop().create_task(self._close_when_idle(self.idle_generation))
            self._timers.add(task)
            task.add_done_callback(self._timers.discard)

    async def _close_when_idle(self, generation: int) -> None:
        await asyncio.sleep(self.spec.idle_timeout_s)
        if self.agent is not None and not self.ctl.in_turn and self.idle_generation == generation:
            await self.agent.close_stdin()

    async def deliver(self, message: dict) -> dict:
        op = message.get("op")
        if op == "stop":
            self.stop_soon()
            return {"ok": True}
        if op == "mcp_result":   # the owner's answer to a relayed call: wanted until the run ends
            return {"ok": self.relay is not None and self.relay.answered(message)}
        if self.ctl.stopping or self.agent is None or self.agent.exited.is_set():
            raise ApplicationError(f"the agent of session {self.session.id} on worker {self.node.name!r} "
                                   "has ended or is stopping", type="RunEnded", non_retryable=True)
        if op == "turn":
            self.ctl.in_turn = True
            self.idle_generation += 1
            return {"ok": await self.driver.turn(message["text"])}
        if op == "answer":
            pending = message["pending"]
            request_id = str(pending.get("request_id"))
            if request_id not in self.ctl.open_requests:
                raise ApplicationError(f"that request of session {self.session.id} was already answered or "
                                       "withdrawn", type="Stale", non_retryable=True)
            self.ctl.open_requests.discard(request_id)
            await self.driver.answer(pending, message["decision"], always=bool(message.get("always")),
                                     message=message.get("message"), answer=message.get("answer"))
            return {"ok": True}
        if op == "close_stdin":
            await self.agent.close_stdin()
            return {"ok": True}
        raise ApplicationError(f"unknown delivery {op!r}", type="BadDelivery", non_retryable=True)

    def stop_soon(self) -> None:
        if self.stopping is None:
            self.ctl.stopping = True
            self.stopping = asyncio.get_running_loop().create_task(self._stop())

    async def _stop(self) -> None:
        if self.agent is None:
            return
        if self.ctl.in_turn and not self.agent.exited.is_set():
            try:
                await self.driver.interrupt()
            except Exception as exc:
                log.info("run %s: interrupt failed: %s", self.workflow_id, exc)
        await self.agent.shutdown(self.spec.stop_grace_s)

    def kill(self) -> None:
        self.ctl.stopping = True
        if self.agent is not None:
            self.agent.kill()


class WorkerNode:
    def __init__(self, client: Client, *, name: str, slots: int, task_queue: str, state_dir: Path,
                 segment_signals: int = p.SEGMENT_SIGNALS):
        self.client = client
        self.workspaces = Workspaces(state_dir, name)
        self.segment_signals = segment_signals
        self.name = name
        self.task_queue = task_queue
        self.queue = p.worker_queue(task_queue, name)
        self.epoch = secrets.token_hex(4)
        self.slots = AgentSlots(slots)
        self.logs: dict[str, LogWriter] = {}
        self.live: dict[str, LiveRun] = {}
        self.last_contact = time.monotonic()

    def contact(self) -> None:
        self.last_contact = time.monotonic()

    def log_for(self, owner: str) -> LogWriter:
        writer = self.logs.get(owner)
        if writer is None:
            writer = self.logs[owner] = LogWriter(self, owner)
        return writer

    # -- activities ------------------------------------------------------------------

    @activity.defn(name=RUN_ACTIVITY)
    async def run(self, spec_json: dict) -> dict:
        spec = p.RunSpec.from_json(spec_json)
        info = activity.info()
        workflow_id = info.workflow_id
        own_queue = info.task_queue == self.queue
        if own_queue:
            # A later process of a conversation held here: wait for a slot, heartbeating.
            waiting = asyncio.create_task(self.slots.take())
            while not waiting.done():
                activity.heartbeat({"waiting": True})
                await asyncio.wait([waiting], timeout=spec.heartbeat_s / 2)
        try:
            return await self._run(workflow_id, spec)
        finally:
            if own_queue:
                self.slots.give_back()

    async def _run(self, workflow_id: str, spec: p.RunSpec) -> dict:
        live = LiveRun(self, workflow_id, spec)
        self.live[workflow_id] = live
        beat = asyncio.create_task(self._heartbeat(live))
        try:
            await self.client.get_workflow_handle(workflow_id).signal(
                p.CLAIM_SIGNAL, {"worker": self.name, "queue": self.queue, "log": live.log.current})
            self.contact()
            log.info("run %s (session %s of %s) claimed", workflow_id, spec.session_id, spec.owner)
            if await live.start():
                await live.agent.exited.wait()
                if live.stopping is not None:
                    await live.stopping
                live.emit_exit()
            await live.log.flushed()
            return {"outcome": p.EXITED, "worker": self.name, "records": live.offset}
        except asyncio.CancelledError:
            details = activity.cancellation_details()
            if details is not None and details.cancel_requested:
                live.stop_soon()
                await asyncio.shield(self._finish_stop(live))
                return {"outcome": p.STOPPED, "worker": self.name, "records": live.offset}
            # The server no longer takes this run's heartbeats (it gave the run up), or this
            # worker is shutting down: the agent must not outlive the run.
            why = ("its heartbeats were refused" if details is not None and (details.not_found or details.timed_out)
                   else "the worker is shutting down")
            log.warning("run %s: %s; killing its agent", workflow_id, why)
            live.kill()
            if live.agent is not None:
                await asyncio.shield(live.agent.exited.wait())
            raise
        finally:
            beat.cancel()
            del self.live[workflow_id]
            if live.held is not None:
                self.workspaces.release(live.held)

    async def _finish_stop(self, live: LiveRun) -> None:
        if live.stopping is not None:
            await live.stopping
        if live.agent is not None and live.agent.returncode is not None:
            live.emit_exit()
        await live.log.flushed(timeout=live.spec.heartbeat_s * 3)

    async def _heartbeat(self, live: LiveRun) -> None:
        """From the claim to the end of the run, whatever it is doing (starting the agent included)."""
        while True:
            activity.heartbeat({"records": live.offset})
            await asyncio.sleep(live.spec.heartbeat_s / 2)

    @activity.defn(name=DELIVER_ACTIVITY)
    async def deliver(self, workflow_id: str, message: dict) -> dict:
        live = self.live.get(workflow_id)
        if live is None:
            if message.get("op") == "stop":
                return {"ok": True}
            raise ApplicationError(f"worker {self.name!r} no longer runs {workflow_id}", type="RunEnded",
                                   non_retryable=True)
        return await live.deliver(message)

    @activity.defn(name=STATUS_ACTIVITY)
    async def status(self) -> dict:
        return {"worker": self.name, "queue": self.queue, "slots": self.slots.slots, "in_use": self.slots.used,
                "epoch": self.epoch, "pid": os.getpid(), "host": socket.gethostname(),
                "runs": [{"workflow_id": wf, "session": live.spec.session_id, "owner": live.spec.owner,
                          "pid": live.agent.pid if live.agent else None, "started_at": live.started_at}
                         for wf, live in self.live.items()]}

    # -- contact with the server ------------------------------------------------------

    async def watch_contact(self) -> None:
        """Cut off from the server for a run's heartbeat timeout: kill its agent (see the module doc)."""
        while True:
            await asyncio.sleep(CONTACT_S)
            try:
                # wait_for as well: while the server refuses connections the client may retry inside.
                await asyncio.wait_for(self.client.workflow_service.get_system_info(
                    _system_info_request(), timeout=timedelta(seconds=CONTACT_S)), CONTACT_S * 2)
                self.contact()
            except Exception as exc:
                silent = time.monotonic() - self.last_contact
                for live in list(self.live.values()):
                    if silent >= live.spec.heartbeat_s * 3 and not live.ctl.stopping:
                        log.error("run %s: no contact with the Temporal server for %.1f s (%s): killing its agent",
                                  live.workflow_id, silent, exc)
                        live.kill()


def _system_info_request():
    from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
    return GetSystemInfoRequest()


async def serve(address: str, *, name: str, slots: int, namespace: str, task_queue: str,
                stop: asyncio.Event, state_dir: Path, key: bytes, key_path: Path,
                segment_signals: int = p.SEGMENT_SIGNALS) -> None:
    loop = asyncio.get_running_loop()
    refused: list[str] = []
    checks: set[asyncio.Task] = set()

    async def recheck(message: str) -> None:
        # A run sealed with another key: this worker's key or its owner's is not the cluster's.
        try:
            await codec.check_cluster_key(client, sealed, task_queue, create=False)
        except codec.KeyMismatch as exc:   # this worker's: it stops asking for work, saying why
            if not refused:
                refused.append(str(exc))
                log.error("%s", exc)
            stop.set()
            return
        except Exception as exc:
            log.warning("cannot check this worker's key against the cluster's (%s)", exc)
        log.error("%s (this worker's key is the cluster's: the run came from an owning daemon with another key "
                  "file, and it failed)", message)

    def mismatch(message: str) -> None:
        def start() -> None:
            if checks:
                return   # one check at a time
            task = loop.create_task(recheck(message))
            checks.add(task)
            task.add_done_callback(checks.discard)
        loop.call_soon_threadsafe(start)

    sealed = codec.ClusterCodec(key, path=key_path, who=f"worker {name!r}")
    client = await Client.connect(address, namespace=namespace, identity=name,
                                  data_converter=codec.data_converter(sealed))
    # Before asking for work: a worker whose key is not the cluster's does not start.
    try:
        if not await codec.check_cluster_key(client, sealed, task_queue, create=False):
            log.info("no owning daemon has used task queue %s yet: the key is checked with its first run",
                     task_queue)
    except codec.KeyMismatch:
        raise
    except Exception as exc:   # the first run it cannot open says so instead
        log.warning("cannot read the cluster's key check (%s); starting without it", exc)
    sealed.on_mismatch = mismatch
    node = WorkerNode(client, name=name, slots=slots, task_queue=task_queue, state_dir=state_dir,
                      segment_signals=segment_signals)
    node.slots.loop = loop
    throttle = HEARTBEAT_THROTTLE
    tuner = WorkerTuner.create_composite(
        workflow_supplier=FixedSizeSlotSupplier(50), activity_supplier=_SlotSupplier(node.slots),
        local_activity_supplier=FixedSizeSlotSupplier(1), nexus_supplier=FixedSizeSlotSupplier(1))
    # The workflows import only bgd.cluster.protocol (pure): pass bgd through the sandbox rather
    # than re-import it for every workflow run.
    runner = SandboxedWorkflowRunner(restrictions=SandboxRestrictions.default.with_passthrough_modules("bgd"))
    # No workflow cache: a run's workflow task then never waits on the sticky queue of a worker
    # that died (that would add a second to noticing it); its history is a few dozen events.
    shared = Worker(client, task_queue=task_queue, workflows=[AgentRun, ClusterStatus], activities=[node.run],
                    workflow_runner=runner, tuner=tuner, max_cached_workflows=0,
                    max_concurrent_activity_task_polls=1, identity=name, max_heartbeat_throttle_interval=throttle,
                    default_heartbeat_throttle_interval=throttle,
                    graceful_shutdown_timeout=timedelta(seconds=1))
    own = Worker(client, task_queue=node.queue, activities=[node.run, node.deliver, node.status],
                 max_concurrent_activities=max(100, slots * 4), identity=name,
                 max_heartbeat_throttle_interval=throttle, default_heartbeat_throttle_interval=throttle,
                 graceful_shutdown_timeout=timedelta(seconds=1))
    log.info("worker %s serving %s on %s (namespace %s, %d slots)", name, task_queue, address, namespace, slots)
    watcher = asyncio.create_task(node.watch_contact())
    keeper = asyncio.create_task(node.workspaces.housekeep())
    async with shared, own:
        print(f"bgd worker {name}: ready on {address} ({task_queue}, {slots} slots)", flush=True)
        await stop.wait()
        log.info("stopping: ending %d agent(s)", len(node.live))
        for live in list(node.live.values()):
            live.stop_soon()
        for live in list(node.live.values()):
            if live.stopping is not None:
                await live.stopping
    watcher.cancel()
    keeper.cancel()
    if refused:
        raise codec.KeyMismatch(refused[0])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="bgd worker", description="Run cluster agents for bgagents (SPEC §14, docs/cluster.md).",
        epilog="A routine run (where = \"cluster\") is cloned here, under --state-dir, and its workspace kept "
               "[routines] keep_workspaces_days after its agent ends; a desktop task or `bgctl dispatch --on "
               "cluster` runs in the directory it names, which this machine must have at the same path. "
               "Without a readable key file the worker does not start (exit status 3).")
    parser.add_argument("--temporal", required=True, metavar="HOST:PORT", help="the Temporal server's frontend")
    parser.add_argument("--slots", type=int, default=4, help="agents run at once on this worker (default 4)")
    parser.add_argument("--name", default=None, help="this worker's name, unique in the cluster (default: host name)")
    parser.add_argument("--namespace", default="default", help="Temporal namespace (default: default)")
    parser.add_argument("--task-queue", default="bgagents", help="the shared task queue (default: bgagents)")
    parser.add_argument("--log-segment-signals", type=int, default=p.SEGMENT_SIGNALS, metavar="N",
                        help=f"signals per transcript-log segment before the next one (default {p.SEGMENT_SIGNALS})")
    parser.add_argument("--key-file", default=None, metavar="PATH",
                        help="the cluster's key, a copy of the owning daemon's [cluster] key_file "
                             f"(default: {codec.default_key_path()})")
    parser.add_argument("--state-dir", default=None, metavar="DIR",
                        help="where routine runs' workspaces are cloned, under runs/ "
                             f"(default: {default_state_dir()})")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s bgd-worker[%(process)d] %(levelname)s %(name)s: %(message)s")
    name = args.name or socket.gethostname().split(".")[0]
    if not p.valid_name(name):
        parser.error(f"--name {name!r}: use letters, digits, '-', '_' and '.' (at most 100)")
    if args.slots < 1:
        parser.error("--slots must be at least 1")
    if args.log_segment_signals < 1:
        parser.error("--log-segment-signals must be at least 1")
    key_path = Path(os.path.expanduser(args.key_file)) if args.key_file else codec.default_key_path()
    try:
        key = codec.read_key(key_path)
    except codec.KeyFileError as exc:
        print(f"bgd worker: {exc}; copy the owning daemon's key file ([cluster] key_file, default "
              "<config dir>/cluster.key) here, or give its copy with --key-file PATH (on the owning daemon's "
              "machine, `bgctl cluster status` makes it)", file=sys.stderr)
        return KEY_EXIT
    state_dir = Path(os.path.expanduser(args.state_dir)) if args.state_dir else default_state_dir()

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(args.temporal, name=name, slots=args.slots, namespace=args.namespace,
                    task_queue=args.task_queue, stop=stop, state_dir=state_dir, key=key, key_path=key_path,
                    segment_signals=args.log_segment_signals)

    try:
        asyncio.run(run())
        code = 0
    except codec.KeyMismatch as exc:
        print(f"bgd worker: {exc}", file=sys.stderr)
        code = KEY_EXIT
    except RuntimeError as exc:  # the SDK's "failed client connect" and the like
        print(f"bgd worker: {exc}", file=sys.stderr)
        code = 1
    # Everything of ours is done and flushed here.  The SDK's core threads may still call into
    # Python while the interpreter finalizes, which aborts it now and then ("PyGILState_Release",
    # status 134): leave without finalizing, with the status the worker chose.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def default_state_dir() -> Path:
    from bgcore.paths import state_dir
    return state_dir() / "worker"
