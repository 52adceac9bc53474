"""The Temporal workflows of the cluster (SPEC §14): one per run, and the status round.

Workflow code is replayed, so it only decides; everything that touches the world is an activity
run by `bgd worker` (bgd.cluster.worker):

- `AgentRun` runs the `bgagents.run` activity, which drives one agent process from start to exit.
  The activity is taken from the shared task queue by a worker with a free slot (or, for a later
  process of a conversation, from that worker's own queue), is never retried (an agent run is not
  safe to repeat), heartbeats every `heartbeat_s`, and is lost after three missed heartbeats.  The
  worker that took it signals `claimed` with its name and queue; answers, turns and stop then go
  there as `bgagents.deliver` activities, from the `deliver` update, so a client is answered only
  once the worker has the message (or has refused it).  Cancelling the workflow (bgctl stop) first
  delivers a stop at once, then cancels the activity, which also reaches the agent at its next
  heartbeat if the delivery could not; the workflow ends only when the agent process has.
- `ClusterStatus` asks every connected worker, on its own queue, for its slots and runs.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, TimeoutError, TimeoutType

with workflow.unsafe.imports_passed_through():
    from bgd.cluster import protocol as p

ONCE = RetryPolicy(maximum_attempts=1)
RUN_ACTIVITY = "bgagents.run"
DELIVER_ACTIVITY = "bgagents.deliver"
STATUS_ACTIVITY = "bgagents.status"
RUN_LIMIT = timedelta(days=30)


@workflow.defn(name=p.RUN_WORKFLOW)
class AgentRun:
    def __init__(self) -> None:
        self.claim: dict | None = None
        self.ended = False
        self.heartbeat_s = 10.0

    @workflow.signal(name=p.CLAIM_SIGNAL)
    def claimed(self, claim: dict) -> None:
        self.claim = claim

    @workflow.query(name="claim")
    def current_claim(self) -> dict | None:
        return self.claim

    @workflow.update(name=p.ANSWER_UPDATE)
    async def deliver(self, message: dict) -> dict:
        await workflow.wait_condition(lambda: self.claim is not None or self.ended)
        if self.ended or self.claim is None:
            raise ApplicationError("the agent process of this run has already ended", type="RunEnded",
                                   non_retryable=True)
        return await self._deliver(message)

    @deliver.validator
    def _check_deliver(self, message: dict) -> None:
        if self.ended:
            raise ApplicationError("the agent process of this run has already ended", type="RunEnded",
                                   non_retryable=True)
        if not isinstance(message, dict) or not isinstance(message.get("op"), str):
            raise ApplicationError("a delivery needs an op", type="BadDelivery", non_retryable=True)

    async def _deliver(self, message: dict) -> dict:
        assert self.claim is not None
        try:
            return await workflow.execute_activity(
                DELIVER_ACTIVITY, args=[workflow.info().workflow_id, message], task_queue=self.claim["queue"],
                schedule_to_close_timeout=timedelta(seconds=self.heartbeat_s * 3), retry_policy=ONCE,
                result_type=dict)
        except ActivityError as exc:
            cause = exc.cause
            if isinstance(cause, ApplicationError):
                raise ApplicationError(cause.message, type=cause.type or "Refused", non_retryable=True) from None
            raise ApplicationError(f"worker {self.claim['worker']!r} did not take it within "
                                   f"{self.heartbeat_s * 3:g} s", type="Unreachable", non_retryable=True) from None

    @workflow.run
    async def run(self, spec_json: dict) -> dict:
        spec = p.RunSpec.from_json(spec_json)
        self.heartbeat_s = spec.heartbeat_s
        timeout = timedelta(seconds=spec.heartbeat_s * 3)
        pinned = spec.worker is not None
        queue = (p.worker_queue(workflow.info().task_queue, spec.worker) if pinned else workflow.info().task_queue)
        activity = workflow.start_activity(
            RUN_ACTIVITY, spec_json, task_queue=queue, start_to_close_timeout=RUN_LIMIT, heartbeat_timeout=timeout,
            schedule_to_start_timeout=timeout if pinned else None, retry_policy=ONCE,
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED, result_type=dict)
        try:
            try:
                return await asyncio.shield(activity)
            except asyncio.CancelledError:
                # bgctl stop: reach the agent at once on its worker, and cancel the activity too
                # (it hears that at its next heartbeat if the delivery could not get through).
                if self.claim is not None:
                    try:
                        await self._deliver({"op": "stop"})
                    except ApplicationError:
                        pass
                activity.cancel()
                try:
                    result = await activity
                except ActivityError:
                    result = {}
                return {**result, "outcome": p.STOPPED, "worker": self._worker()}
        except ActivityError as exc:
            return self._failed(exc, spec)
        finally:
            self.ended = True

    def _worker(self) -> str | None:
        return self.claim["worker"] if self.claim else None

    def _failed(self, exc: ActivityError, spec: p.RunSpec) -> dict:
        cause = exc.cause
        worker = self._worker() or spec.worker
        if isinstance(cause, TimeoutError):
            if cause.type == TimeoutType.SCHEDULE_TO_START:
                error = (f"worker {spec.worker!r}, which holds this conversation, is not connected; start it "
                         "again (`bgctl cluster status` lists the workers)")
            else:
                error = p.lost_error(worker, spec.heartbeat_s * 3)
            return {"outcome": p.LOST, "worker": worker, "error": error}
        if isinstance(cause, CancelledError):
            return {"outcome": p.STOPPED, "worker": worker}
        message = cause.message if isinstance(cause, ApplicationError) else str(cause or exc)
        return {"outcome": p.REFUSED, "worker": worker, "error": message}


@workflow.defn(name=p.STATUS_WORKFLOW)
class ClusterStatus:
    @workflow.run
    async def run(self, queues: list[str]) -> list[dict]:
        async def ask(queue: str) -> dict:
            try:
                return await workflow.execute_activity(
                    STATUS_ACTIVITY, task_queue=queue, schedule_to_close_timeout=timedelta(seconds=5),
                    retry_policy=ONCE, result_type=dict)
            except ActivityError as exc:
                return {"queue": queue, "error": str(exc.cause or exc)}
        return list(await asyncio.gather(*(ask(q) for q in queues)))
