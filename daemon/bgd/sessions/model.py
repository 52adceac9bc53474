"""The session record (SPEC §2): what is stored, what clients see, and the states."""

from __future__ import annotations

import secrets
import string
import uuid
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from bgd import clock

STATES = ("working", "needs_input", "sleeping", "completed", "failed", "stopped")
BUSY = ("working", "needs_input")
ID_ALPHABET = string.ascii_lowercase + string.digits


def new_id(taken: set | dict = ()) -> str:
    while True:
        candidate = "".join(secrets.choice(ID_ALPHABET) for _ in range(8))
        if candidate not in taken:
            return candidate


@dataclass
class Session:
    id: str
    cwd: str
    agent: str
    backend: str
    prompt: str
    name: str | None = None
    permission_mode: str = "default"
    model: str | None = None
    origin: str = "dispatch"
    state: str = "working"
    waiting_for: str | None = None
    error: str | None = None
    agent_session_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    created_at: str = field(default_factory=clock.now_iso)
    updated_at: str = field(default_factory=clock.now_iso)
    pid: int | None = None
    pid_started: int | None = None  # its process's start time (agents.process.start_time): that pid, not a reuse
    cost_usd: float | None = None   # None until the agent reports a cost: unknown, never a made-up $0.00
    turns: int = 0
    last_message: str = ""
    pinned: bool = False
    next_wake_at: str | None = None
    pending: dict | None = None
    always_allow: list[str] = field(default_factory=list)
    cost_base: float = 0.0        # cost of earlier processes; result costs are per process
    has_history: bool = False     # the agent knows this conversation: continue with --resume
    loop_runs: int = 0
    env: dict[str, str] = field(default_factory=dict)
    where: str = "local"          # where its process runs: "local" or "cluster" (SPEC §14)
    worker: str | None = None     # on the cluster: the worker that runs (or last ran) it
    run_key: str | None = None    # what its first process is a run of (a routine's fire), for placements
    # Placed elsewhere: the fresh workspace its process makes there first (a routine run's repositories,
    # bgd.cluster.protocol.RunSpec.workspace); once made, also its "path" and "worker".
    workspace: dict | None = None
    usage: dict | None = None       # token counts summed over turns, when the agent reports them
    outcome: str | None = None      # a routine run's outcome (SPEC §8); None for other sessions

    # Bumped whenever any session's state is set (its creation included), so
    # SessionManager.state_counts can keep its tally until something changes.
    state_generation: ClassVar[int] = 0

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "state":
            Session.state_generation += 1
        object.__setattr__(self, name, value)

    PUBLIC = ("id", "name", "cwd", "agent", "state", "waiting_for", "error", "agent_session_id",
              "created_at", "updated_at", "pid", "cost_usd", "turns", "last_message", "pinned",
              "origin", "next_wake_at", "permission_mode", "model", "prompt", "loop_runs", "usage", "outcome", "where", "worker")

    def to_json(self) -> dict:
        data = {key: getattr(self, key) for key in self.PUBLIC}
        if self.cost_usd is not None:
            data["cost_usd"] = round(self.cost_usd, 6)
        if self.pending is not None:
            data["pending"] = self.pending
        return data

    def to_record(self) -> dict:
        # Every field is a plain JSON value and the record is encoded at once:
        # a shallow dict (dataclasses.asdict deep-copies, several times slower).
        return {name: getattr(self, name) for name in _SESSION_FIELDS}

    @classmethod
    def from_record(cls, data: dict) -> "Session":
        return cls(**{k: v for k, v in data.items() if k in _SESSION_FIELDS})


_SESSION_FIELDS = tuple(f.name for f in fields(Session))
