"""The daemon's MCP server (daemon/bgd/mcp_server.py): its tools in process, then as the real stdio
process against a real daemon (through the fake agent's MCP client)."""

from __future__ import annotations

import json
from pathlib import Path
import os
import sys
from datetime import datetime

import pytest

from bgcore.jsonrpc import NOT_FOUND, RpcError
from bgd.agents.mcp_server import SERVER_NAME, build_server, mcp_config_for

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from fake_claude import mcp_call  # noqa: E402


class FakeLink:
    def __init__(self, answers=None):
        self.calls = []
        self.answers = answers or {}

    def call(self, method, params):
        self.calls.append((method, params))
        answer = self.answers.get(method)
        if isinstance(answer, Exception):
            raise answer
        return answer


LOOP = {"id": "abcdefgh", "human": "every 5 minutes", "next_fire_at": "2026-01-01T00:05:00+00:00", "runs": 0,
        "prompt": "check"}


async def test_the_five_tools_are_offered():
    server = build_server("s1", FakeLink())
    names = {tool.name for tool in await server.list_tools()}
    assert names == {"schedule_wakeup", "cron_create", "cron_list", "cron_delete", "update_scheduled_task"}


async def test_each_tool_is_one_daemon_call_for_its_session():
    link = FakeLink({"loop.wakeup": {"loop": LOOP, "delay_seconds": 120, "next_wake_at": "T"},
                     "loop.create": LOOP, "loop.list": [LOOP], "loop.stop": LOOP})
    server = build_server("s1", link)
    await server.call_tool("schedule_wakeup", {"delay_seconds": 120, "reason": "waiting for CI"})
    await server.call_tool("cron_create", {"cron": "*/5 * * * *", "prompt": "check", "recurring": False})
    await server.call_tool("cron_list", {})
    await server.call_tool("cron_delete", {"id": "abcdefgh"})
    assert link.calls == [
        ("loop.wakeup", {"session": "s1", "delay_seconds": 120, "reason": "waiting for CI", "stop": False}),
        ("loop.create", {"session": "s1", "cron": "*/5 * * * *", "prompt": "check", "recurring": False}),
        ("loop.list", {"session": "s1"}),
        ("loop.stop", {"id": "abcdefgh", "session": "s1"}),
    ]


async def test_a_daemon_error_is_a_tool_error_with_its_message():
    from mcp.server.mcpserver.exceptions import ToolError
    link = FakeLink({"loop.wakeup": RpcError(NOT_FOUND, "no session 's1' (it does not exist or was removed)")})
    server = build_server("s1", link)
    with pytest.raises(ToolError, match="was removed"):
        await server.call_tool("schedule_wakeup", {"delay_seconds": 60, "reason": "x"})


async def test_update_scheduled_task_needs_a_task_run():
    from mcp.server.mcpserver.exceptions import ToolError
    link = FakeLink({"session.get": {"id": "s1", "origin": "dispatch"}})
    with pytest.raises(ToolError, match="not started by a desktop task"):
        await build_server("s1", link).call_tool("update_scheduled_task", {"prompt": "x"})
    link = FakeLink({"session.get": {"id": "s1", "origin": "task:nightly"}, "task.edit": {}})
    await build_server("s1", link).call_tool("update_scheduled_task", {"schedule": "daily at 9am"})
    assert link.calls[-1] == ("task.edit", {"name": "nightly", "schedule": "daily at 9am"})


def test_mcp_config_names_this_server_for_the_session(tmp_path):
    class D:
        socket_path = tmp_path / "bgd.sock"

    class S:
        id = "k3v9q0ab"
    server = json.loads(mcp_config_for(D, S))["mcpServers"][SERVER_NAME]
    assert server["command"] == sys.executable
    assert server["args"] == ["-m", "bgd.agents.mcp_server", "--session", "k3v9q0ab"]
    assert server["env"]["BGD_SOCKET"] == str(tmp_path / "bgd.sock")
    # The path holds the folders the packages are in, never a package folder (bgd/http would
    # shadow the standard library's http module in the server's process).
    roots = server["env"]["PYTHONPATH"].split(os.pathsep)[:2]
    assert all((Path(root) / "bgd").is_dir() or (Path(root) / "bgcore").is_dir() for root in roots)
    assert not any((Path(root) / "__init__.py").exists() for root in roots)


# -- the real process ------------------------------------------------------------------


def _conf(bgd, session_id):
    return {"command": sys.executable, "args": ["-m", "bgd.agents.mcp_server", "--session", session_id],
            "env": {"BGD_SOCKET": str(bgd.socket)}}


def test_cron_tools_manage_the_sessions_loops(running_bgd):
    session = running_bgd.dispatch("say hi")
    running_bgd.wait_state(session["id"], "completed")
    conf = _conf(running_bgd, session["id"])
    ok, text = mcp_call(conf, "cron_create", {"cron": "*/15 * * * *", "prompt": "say tick", "recurring": True})
    assert ok, text
    [loop] = running_bgd.rpc("loop.list", {"session": session["id"]})
    assert loop["cron"] == "*/15 * * * *" and loop["runs"] == 0 and loop["source"] == "mcp"
    assert datetime.fromisoformat(loop["next_fire_at"]).minute % 15 == 0  # not at once: on the cron
    ok, text = mcp_call(conf, "cron_create", {"cron": "0 9 * * *", "prompt": "say once", "recurring": False})
    assert ok and len(running_bgd.rpc("loop.list", {"session": session["id"]})) == 2
    ok, text = mcp_call(conf, "cron_list", {})
    assert ok and loop["id"] in text and "say once" in text
    ok, text = mcp_call(conf, "cron_delete", {"id": loop["id"]})
    assert ok
    [left] = running_bgd.rpc("loop.list", {"session": session["id"]})
    assert left["kind"] == "once"
    ok, text = mcp_call(conf, "cron_create", {"cron": "every tuesday-ish", "prompt": "x"})
    assert not ok and "could not read" in text
    # another session's loop cannot be deleted from here
    other = running_bgd.dispatch("say other")
    ok, text = mcp_call(_conf(running_bgd, other["id"]), "cron_delete", {"id": left["id"]})
    assert not ok and "no loop" in text


def test_update_scheduled_task_edits_the_task_of_the_run(running_bgd):
    from bgd.rpc.table import METHODS
    from bgd import features; features.register_methods()
    if "task.edit" not in METHODS or "task.add" not in METHODS:
        pytest.skip("desktop tasks (task.edit) are not in this daemon yet")
    prompt = 'mcp update_scheduled_task {"schedule": "weekdays at 9:30", "prompt": "say changed"}'
    try:
        running_bgd.rpc("task.add", {"name": "nightly", "schedule": "manual", "cwd": str(running_bgd.work),
                                     "prompt": prompt})
        run = running_bgd.rpc("task.run", {"name": "nightly"})
    except RpcError as exc:
        pytest.skip(f"desktop tasks are not usable yet: {exc.message}")
    session_id = run.get("session") or run.get("session_id") or (run.get("run") or {}).get("session")
    if not isinstance(session_id, str):
        session_id = next(s["id"] for s in running_bgd.rpc("session.list") if s["origin"] == "task:nightly")
    session = running_bgd.wait_state(session_id, "completed", "failed", timeout=30)
    assert session["last_message"] == "mcp: task nightly updated", session
    task = running_bgd.rpc("task.get", {"name": "nightly"})
    assert "say changed" in json.dumps(task) and "9:30" in json.dumps(task)
