"""What the owning daemon and the workers agree on (SPEC §14), with no I/O and no Temporal import.

Names.  Runs are placed on the shared task queue (`[cluster] task_queue`); a worker also polls its
own queue, `<task_queue>@<name>`, where everything that must reach a run it claimed goes (answers,
turns, stop, and a session's later processes, whose conversation lives on that machine).

Workflow ids come from the run, so a second start of the same run is refused by Temporal itself:
a session's n-th agent process is `bgagents/<owner>/<session>/<n>`; the first process of a routine run
fired by a GitHub delivery is `bgagents/routine/<routine>/github/<delivery id>` (`keyed_run_id`).

The transcript log.  A run's records (what its agent driver reports: transcript entries, state
changes, the exit) are numbered from 0 per run and shipped in batches, as signals, to a log workflow
per (owner, worker process): `bgagents-log/<owner>/<worker>/<epoch>/<segment>`.  No worker runs
those workflows (their task queue, `<task_queue>.logs`, is never polled): a signal to a workflow
that has no task in flight is appended to its history at once, and the owning daemon follows that
history with long polls.  A segment is closed after SEGMENT_SIGNALS signals or SEGMENT_BYTES, with
a last signal naming the next one, so no history approaches Temporal's limits.  docs/cluster.md has
the measurements behind this.

A run with a workspace request (`RunSpec.workspace`) also sends "workspace" records: the workspace
made on the worker (its path, its clones) or why it could not be (`status`, `error`), and, before each
`turn_done`, `fail` and `exit`, what its clones pushed when that changed (`pushed`, `refused`).

An "mcp" record is a call of the session's MCP tools made on the worker (`mcp_scope` says which it
may be); the owner answers it with an "mcp_result" delivery.

A record larger than CHUNK_BYTES travels as parts; `Reassembler` puts them back together, and the
owner applies each record once, by its offset.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterator

from bgd.agents.mcp_server import DAEMON_METHODS
from bgd.rpc.scope import Scope

try:  # the daemon's and the worker's fast JSON; the standard library gives the same text otherwise
    import orjson

    def _dumps(value: Any) -> bytes:
        return orjson.dumps(value)
except ImportError:  # pragma: no cover
    def _dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()

RUN_WORKFLOW = "bgagents.AgentRun"
STATUS_WORKFLOW = "bgagents.ClusterStatus"
LOG_WORKFLOW = "bgagents.TranscriptLog"
LOG_SIGNAL = "records"
CLAIM_SIGNAL = "claimed"
ANSWER_UPDATE = "deliver"

BATCH_BYTES = 900_000        # one signal's records, well under Temporal's 2 MB payload limit
CHUNK_BYTES = 512_000        # a record longer than this travels in parts
SEGMENT_SIGNALS = 1000       # signals per log segment (each is one history event)
SEGMENT_BYTES = 16 << 20     # bytes per log segment (Temporal refuses histories over 50 MB)
FLUSH_S = 0.05               # the shortest time from one signal of a log to the next


def task_timeout_s(heartbeat_s: float) -> float:
    """A run workflow's workflow-task timeout.  A task taken by a worker that then dies holds the
    workflow until it times out (Temporal's default is 10 s), and the lost run's outcome cannot be
    written before: at twice the heartbeat it ends before the heartbeat timeout (three heartbeats)
    does, so a killed worker's runs fail within that timeout.  Between 1 s and the default 10 s."""
    return min(10.0, max(1.0, 2 * heartbeat_s))


def worker_queue(task_queue: str, worker: str) -> str:
    return f"{task_queue}@{worker}"


def log_queue(task_queue: str) -> str:
    return f"{task_queue}.logs"


def session_run_id(owner: str, session_id: str, n: int) -> str:
    return f"bgagents/{owner}/{session_id}/{n}"


def keyed_run_id(run_key: str) -> str:
    """The workflow id of a run named by its fire: a routine's is `routine/<name>/github/<delivery id>`
    (or `routine/<name>/<trigger>/<run id>`), so the same delivery makes one run whoever fires it."""
    return f"bgagents/{run_key}"


def log_id(owner: str, worker: str, epoch: str, segment: int) -> str:
    return f"bgagents-log/{owner}/{worker}/{epoch}/{segment}"


def log_base(log: str) -> tuple[str, int]:
    """`log_id(...)` split into the part that names the log and its segment number."""
    base, _, segment = log.rpartition("/")
    return base, int(segment)


def valid_name(name: str) -> bool:
    """A worker or owner name: it goes into task queue names and workflow ids."""
    return bool(name) and len(name) <= 100 and all(c.isalnum() or c in "-_." for c in name)


# -- the run's input and outcome -------------------------------------------------------

@dataclass
class RunSpec:
    """Everything a worker needs to run one agent process for a session (JSON through Temporal)."""

    owner: str
    session_id: str
    backend: str                  # the agent backend that drives the process on the worker
    launch: dict                  # the backend's launch description (argv, env, cwd, stdin)
    text: str                     # the first turn's prompt
    worker: str | None = None     # pin to this worker (a later process of the same conversation)
    heartbeat_s: float = 10.0
    stop_grace_s: float = 5.0
    idle_timeout_s: float = 600.0
    options: dict = field(default_factory=dict)
    # A fresh workspace the worker makes for the run before the agent starts, in its own state dir
    # (a routine run, SPEC §8): {"run_id", "repos": [{"url", "ref"}], "push": [patterns], "keep_s"};
    # the agent then works in its first clone rather than launch["cwd"] (bgd.cluster.workspaces).
    workspace: dict | None = None
    mcp_config: str | None = None  # the MCP config in the launch (argv or driver), as the owner wrote it

    def to_json(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict) -> "RunSpec":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


# Outcomes a run workflow returns: {"outcome": ..., "worker": ..., "records": n, "error": ...}
EXITED = "exited"        # the agent process ended (its exit record is in the log)
LOST = "lost"            # the worker stopped heartbeating: the agent is gone with it
STOPPED = "stopped"      # cancelled (bgctl stop): the agent was interrupted, then ended
REFUSED = "refused"      # the worker could not start the agent (the error says why)


def mcp_scope(session_id: str, origin: str | None) -> Scope:
    """What a cluster session's MCP tools may call, checked on the worker before a call is relayed
    and again by the owner before it runs: the MCP server's methods, for its own session (and, for
    a desktop task's run, task.edit of that task)."""
    task = origin[len("task:"):] if origin and origin.startswith("task:") else None
    return Scope(session_id, DAEMON_METHODS, task=task, who="a cluster session's MCP tools")


def lost_error(worker: str | None, timeout_s: float) -> str:
    who = f"worker {worker!r}" if worker else "the worker that claimed it"
    return (f"{who} stopped heartbeating (nothing for {timeout_s:g} s): it was killed or cut off from "
            "the Temporal server, and its agent with it; reply to start it again")


# -- records and their batches ------------------------------------------------------------

def encode_record(run: str, offset: int, op: str, arg: Any) -> list[bytes]:
    """One record as the JSON of the wire items it travels as (one, or its parts when it is long).

    A wire item is `[run, offset, op, arg]`; a part's op is "part" and its arg
    `{"op", "i", "n", "text"}`, the record's arg JSON cut in pieces."""
    encoded = _dumps(arg)
    if len(encoded) <= CHUNK_BYTES:
        return [_dumps([run, offset, op]).rstrip(b"]") + b"," + encoded + b"]"]
    text = encoded.decode()
    pieces = [text[i:i + CHUNK_BYTES // 4] for i in range(0, len(text), CHUNK_BYTES // 4)]
    return [_dumps([run, offset, "part", {"op": op, "i": i, "n": len(pieces), "text": piece}])
            for i, piece in enumerate(pieces)]


def take_batch(pending: list[bytes], limit: int = BATCH_BYTES) -> tuple[bytes, int]:
    """The longest head of `pending` under `limit` bytes (at least one item): the JSON of the signal
    that carries it, `{"items": [...]}`, and how many items that is (the caller drops them once sent)."""
    size = 0
    count = 0
    for item in pending:
        n = len(item) + 1
        if count and size + n > limit:
            break
        size += n
        count += 1
    return b'{"items":[' + b",".join(pending[:count]) + b"]}", count


def next_segment_payload(next_id: str) -> bytes:
    return _dumps({"next": next_id})


@dataclass
class Record:
    run: str
    offset: int
    op: str
    arg: Any


class Reassembler:
    """Wire items in log order -> whole records (a record's parts arrive consecutively)."""

    def __init__(self) -> None:
        self._parts: dict[tuple[str, int], list[str]] = {}

    @property
    def midway(self) -> bool:
        """A record's first parts are in, its last not yet."""
        return bool(self._parts)

    def feed(self, items: list[list]) -> Iterator[Record]:
        for run, offset, op, arg in items:
            if op != "part":
                yield Record(run, offset, op, arg)
                continue
            key = (run, offset)
            if arg["i"] == 0:
                self._parts[key] = []
            parts = self._parts.get(key)
            if parts is None or len(parts) != arg["i"]:
                # The head of this record was in a segment read before a restart and is gone
                # from memory; its offset is then below what was applied, and it is re-read
                # whole when its segment is read again.
                self._parts.pop(key, None)
                continue
            parts.append(arg["text"])
            if len(parts) == arg["n"]:
                del self._parts[key]
                yield Record(run, offset, arg["op"], json.loads("".join(parts)))


class Offsets:
    """Exactly-once, in-order application of one run's records: which offset comes next."""

    def __init__(self, applied: int = 0):
        self.next = applied

    def accept(self, offset: int) -> bool:
        """True when `offset` is the next one (then it counts as applied); False for a duplicate."""
        if offset < self.next:
            return False
        if offset > self.next:
            raise GapError(f"record {offset} arrived while {self.next} was expected")
        self.next += 1
        return True


class GapError(RuntimeError):
    """A record is missing from a run's log (never expected: the log is written in order)."""
