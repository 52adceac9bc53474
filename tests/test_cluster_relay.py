"""A cluster worker's side of a run without Temporal (SPEC §14): the ACP driver on the worker's
asyncio loop against tests/fake_acp.py, and the relay that carries a session's MCP tool calls to
the owning daemon (records out, `mcp_result` deliveries in, refusals, the timeout)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from bgcore.config import AgentConfig
from bgcore.jsonrpc import AGENT_UNAVAILABLE, PERMISSION_DENIED, RpcError
from bgd.agents.acp import Driver as AcpDriver
from bgd.agents.mcp_server import SERVER_NAME, DaemonLink, mcp_config_for
from bgd.cluster.agent import LocalAgent, WorkerControl
from bgd.cluster.relay import McpRelay
from bgd.sessions.model import Session

FAKE_ACP = Path(__file__).parent / "fake_acp.py"
WAIT_S = 30.0   # a deadline for the fake agent's real process, never a measured time


async def _until(predicate, what: str):
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while not (found := predicate()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no {what} within {WAIT_S:g} s")
        await asyncio.sleep(0.01)
    return found


def _of(records: list, op: str) -> list:
    return [arg for kind, arg in records if kind == op]


class _Daemon:
    socket_path = "/run/owner/bgd.sock"


def test_the_acp_driver_runs_on_asyncio_with_a_permission_and_its_mcp_tools(tmp_path):
    """The driver the daemon runs on trio, on asyncio as a worker runs it: its calls become records;
    its MCP server's call is relayed (a record) and answered (a delivery)."""
    session = Session(id="s1", cwd=str(tmp_path), agent="fake", backend="acp", prompt="")
    prompt = ('say hello there; tool Bash {"command": "ls"}; '
              'mcp schedule_wakeup {"delay_seconds": 120, "reason": "waiting for CI"}; cost 0.25')

    async def main() -> list:
        records: list = []
        ctl = WorkerControl(session, lambda op, arg: records.append((op, arg)))
        driver = AcpDriver(AgentConfig("fake", "acp", (sys.executable, str(FAKE_ACP))), session, ctl)
        relay = McpRelay(session.id, session.origin, ctl._emit)
        await relay.start()
        try:
            launch = driver.launch(prompt, relay.config(mcp_config_for(_Daemon(), session)))
            agent = LocalAgent(launch.argv, session.cwd, dict(os.environ, **launch.env), driver.line)
            ctl.agent = agent
            await agent.start()
            await driver.started(prompt)
            (pending,) = await _until(lambda: _of(records, "ask"), "permission request")
            assert pending["kind"] == "permission" and pending["request_id"] in ctl.open_requests
            await driver.answer(pending, "allow", always=False, message=None, answer=None)
            (call,) = await _until(lambda: _of(records, "mcp"), "relayed call")
            assert call["method"] == "loop.wakeup" and call["params"]["session"] == "s1"
            assert relay.answered({"call": call["call"], "result": {
                "loop": {"id": "L1"}, "delay_seconds": 120, "next_wake_at": "soon"}})
            assert not relay.answered({"call": call["call"], "result": {}})   # answered once
            await _until(lambda: _of(records, "turn_done"), "end of the turn")
            await agent.shutdown(2.0)
        finally:
            ctl.end_background()
            await relay.close()
        return records

    records = asyncio.run(main())
    ops = [op for op, _ in records]
    assert _of(records, "agent_session") and _of(records, "agent_session")[0].startswith("fake-")
    said = _of(records, "assistant")   # as the message streams in: "hello", "hello there", ...
    assert "hello there" in said and "allowed Bash" in said, said
    assert said[-1].startswith("mcp: next wake of loop L1 in 120 s"), said
    (done,) = _of(records, "turn_done")
    assert done["error"] is None and done["cost_usd"] == pytest.approx(0.25)
    assert ops.index("ask") < ops.index("mcp") < ops.index("turn_done")


def test_the_relay_takes_only_the_mcp_servers_calls_for_its_own_session(tmp_path):
    async def main() -> None:
        records: list = []
        relay = McpRelay("s1", "task:nightly", lambda op, arg: records.append((op, arg)))
        await relay.start()
        link = DaemonLink(relay.socket_path, timeout=10)

        async def call(method: str, params: dict):
            return await asyncio.to_thread(link.call, method, params)

        try:
            assert os.stat(relay.directory).st_mode & 0o777 == 0o700
            for method, params, why in (("session.dispatch", {"prompt": "x"}, "not available"),
                                        ("loop.wakeup", {"session": "other"}, "its own session"),
                                        ("task.edit", {"name": "weekly"}, "its own task")):
                with pytest.raises(RpcError, match=why) as refused:
                    await call(method, params)
                assert refused.value.code == PERMISSION_DENIED
            assert records == []   # nothing refused reaches the owner
            answer = asyncio.ensure_future(call("task.edit", {"name": "nightly", "prompt": "say hi"}))
            (relayed,) = await _until(lambda: _of(records, "mcp"), "relayed call")
            assert relayed == {"call": 1, "method": "task.edit", "params": {"name": "nightly", "prompt": "say hi"}}
            relay.answered({"call": 1, "error": {"code": -32001, "message": "no task 'nightly'"}})
            with pytest.raises(RpcError, match="no task 'nightly'"):
                await answer
        finally:
            await relay.close()
        assert relay.directory is None

    asyncio.run(main())


def test_a_call_the_owner_never_answers_fails_with_the_reason(tmp_path):
    async def main() -> None:
        records: list = []
        relay = McpRelay("s1", None, lambda op, arg: records.append((op, arg)), timeout_s=0.2)
        await relay.start()
        try:
            with pytest.raises(RpcError, match="did not answer routine.report_outcome within 0.2 s") as late:
                await relay.call("routine.report_outcome", {"session": "s1", "status": "done", "summary": "x"})
            assert late.value.code == AGENT_UNAVAILABLE and "restarting" in late.value.message
            # The owner's answer after that (it came back) finds nobody waiting: it is dropped.
            assert not relay.answered({"call": 1, "result": {"id": "r1", "outcome": "done"}})
        finally:
            await relay.close()

    asyncio.run(main())


def test_the_config_points_only_the_daemons_server_at_the_relay(tmp_path):
    session = Session(id="s1", cwd=str(tmp_path), agent="claude", backend="claude", prompt="")
    owner = json.loads(mcp_config_for(_Daemon(), session))
    owner["mcpServers"][SERVER_NAME]["args"].append("--routine")
    owner["mcpServers"]["github"] = {"command": "github-mcp", "env": {"TOKEN": "t"}}

    async def main() -> dict:
        relay = McpRelay("s1", None, lambda op, arg: None)
        await relay.start()
        try:
            return json.loads(relay.config(json.dumps(owner))) | {"socket": relay.socket_path}
        finally:
            await relay.close()

    mine = asyncio.run(main())
    own = mine["mcpServers"][SERVER_NAME]
    assert own["command"] == sys.executable and own["args"][-3:] == ["--session", "s1", "--routine"]
    assert own["env"]["BGD_SOCKET"] == mine["socket"] != _Daemon.socket_path
    assert mine["mcpServers"]["github"] == owner["mcpServers"]["github"]
