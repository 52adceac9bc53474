"""The owning daemon applying a worker's transcript log (SPEC §14), without Temporal: a page of
records, once applied, is in the store with the offsets and the log position that say so, in the
same commit. A daemon killed right after (before any later turn of its loop) loses nothing: the
next one reads the log on from the stored position and finds every line in the transcript."""

from __future__ import annotations

import json
import sys

import trio

from bgcore.config import AgentConfig
from bgd.agents.claude import Driver as ClaudeDriver
from bgd.cluster import protocol as p
from bgd.cluster.runner import ClusterRun, ClusterService
from bgd.daemon import Daemon
from bgd.sessions.model import Session
from bgd.sessions.run import Run

BASE = "bgagents-log/owner-1/w1/e1"


def _page(run: str, texts: list[str]) -> list:
    """The wire items of a log page: for each line, the transcript record and the last message,
    as a worker's WorkerControl sends them for an agent's text."""
    items: list = []
    for i, text in enumerate(texts):
        items += [json.loads(item) for item in p.encode_record(run, 2 * i, "record", ["assistant", {"text": text}])]
        items += [json.loads(item) for item in p.encode_record(run, 2 * i + 1, "assistant", text)]
    return items


async def test_applied_records_are_stored_with_their_offsets_in_one_commit(tmp_path):
    daemon = Daemon(tmp_path / "bgd.sock", tmp_path / "config", tmp_path / "state")
    try:
        async with trio.open_nursery() as nursery:
            daemon.sessions.nursery = nursery   # as in Daemon.run: the agents' lines wait for the group commit
            session = Session(id="s1", cwd=str(tmp_path), agent="claude", backend="claude", prompt="go",
                              where="cluster")
            daemon.sessions.sessions[session.id] = session
            run = Run(daemon.sessions, session, ClaudeDriver, AgentConfig("claude", "claude", (sys.executable,)))
            daemon.sessions.runs[session.id] = run
            service = ClusterService(daemon)
            state = ClusterRun("wf-1", session.id, 0, run=run, log=f"{BASE}/0")
            service.runs[state.workflow_id] = state
            service.logs[BASE] = {"segment": 0, "event_id": 0, "parts": p.Reassembler()}

            service._on_items(BASE, 0, 7, _page("wf-1", ["line 1", "line 2", "line 3"]))

            # No await since: nothing of the loop's later turns (the session manager's flusher) has run.
            texts = [e["data"]["text"] for e in daemon.store.transcript(session.id)
                     if e["kind"] == "assistant"]
            assert texts == ["line 1", "line 2", "line 3"]
            assert daemon.store.cluster_log_position(BASE) == (0, 7)
            (stored,) = [r for r in daemon.store.cluster_runs(session.id) if r["workflow_id"] == "wf-1"]
            assert stored["applied"] == 6
            assert not daemon.store.db.in_transaction
            nursery.cancel_scope.cancel()
    finally:
        daemon.store.close()
