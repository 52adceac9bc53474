"""The daemon's MCP tools (SPEC §5.4): a stdio MCP server each Claude session gets via --mcp-config.

    python -m bgd.agents.mcp_server --session ID [--socket PATH] [--routine]

It owns no state and no timers: every tool is one call to a daemon method (`loop.wakeup`,
`loop.create`, `loop.list`, `loop.stop`, `task.edit`, `routine.report_outcome`) over the daemon socket with the shared
codec, so the daemon is the one place loops live. It runs on the official `mcp` package (anyio);
the socket calls are short and blocking, so they run in a worker thread.

The daemon (and a cluster worker, which relays a session's calls to its owning daemon: bgd.cluster.relay)
imports only `mcp_config_for`, `server_env`, `DAEMON_METHODS` and `SERVER_NAME` from here; `mcp` itself
is imported when the server starts, never in the daemon.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from bgcore import paths
from bgcore.jsonrpc import NEED_DATA, FrameReader, Response, RpcError, encode_request

SERVER_NAME = "bgagents"
INSTRUCTIONS = """\
Tools of bgagents, the daemon that runs this session in the background. The daemon, not you, owns
every timer: use these tools instead of sleeping or any built-in scheduler.
- In a loop without a fixed interval (a "dynamic" loop), end every iteration by calling
  schedule_wakeup with how long to wait (60-3600 seconds) and a short reason, or with stop=true when
  the loop's work is done. An iteration that does neither gets one fallback wake 20 minutes later;
  if that one does not reschedule either, the loop ends.
- cron_create / cron_list / cron_delete manage this session's scheduled prompts (at most 50).
- update_scheduled_task changes the desktop task that started this session (schedule or prompt)."""
ROUTINE_INSTRUCTIONS = """
- This session is an autonomous run of a routine: nobody is watching. When you are done, call
  report_outcome once with status "done" (you did what was asked), "nothing_to_do", "failed" or
  "needs_attention" (a person must look), a one-line summary, and links (pull requests, commits) if
  any. A run that does not report shows as "unreported", never as a success."""


# The daemon methods the tools call, each with the parameter that names the session (for
# task.edit: the task that started it). Nothing else is relayed for a cluster session's tools.
DAEMON_METHODS = {"loop.wakeup": "session", "loop.create": "session", "loop.list": "session",
                  "loop.stop": "session", "session.get": "id", "task.edit": "name",
                  "routine.report_outcome": "session"}


# -- the daemon side ----------------------------------------------------------------

@functools.cache
def _package_roots() -> tuple[str, ...]:
    """The folders holding the bgd and bgcore packages (never a package's own folder: bgd/http
    would shadow the standard library's http); worked out once, as they do not move."""
    import bgd
    return tuple(sorted({str(Path(bgd.__file__).resolve().parents[1]), str(Path(paths.__file__).resolve().parents[1])}))


def mcp_config_for(daemon, session) -> str:
    """The --mcp-config value for a Claude session: inline JSON naming this server."""
    config = {"mcpServers": {SERVER_NAME: {
        "command": sys.executable,
        "args": ["-m", "bgd.agents.mcp_server", "--session", session.id],
        "env": server_env(str(daemon.socket_path)),
    }}}
    return json.dumps(config)


def server_env(socket_path: str) -> dict[str, str]:
    """The environment this server runs in on this machine: the socket it calls, where bgd is."""
    roots = list(_package_roots())
    pythonpath = os.pathsep.join(roots + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    return {"BGD_SOCKET": socket_path, "PYTHONPATH": pythonpath}


# -- the server side ----------------------------------------------------------------

class DaemonLink:
    """One blocking request per call on a fresh connection: tool calls are rare and short."""

    def __init__(self, socket_path: str, timeout: float = 30.0):
        self.socket_path = socket_path
        self.timeout = timeout

    def call(self, method: str, params: dict) -> Any:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            try:
                sock.connect(self.socket_path)
            except OSError as exc:
                raise RpcError(-32003, f"the bgagents daemon does not answer on {self.socket_path} "
                                       f"({exc.strerror or exc})") from None
            sock.sendall(encode_request(method, params, 1))
            reader = FrameReader(64 << 20)
            while True:
                frame = reader.next_frame()
                if frame is NEED_DATA:
                    data = sock.recv(1 << 16)
                    if not data:
                        raise RpcError(-32003, "the bgagents daemon closed the connection")
                    reader.receive_data(data)
                    continue
                if isinstance(frame, Response) and frame.id == 1:
                    if frame.error is not None:
                        raise frame.error
                    return frame.result
        finally:
            sock.close()


def _loop_line(loop: dict) -> str:
    when = loop.get("next_fire_at") or "after the current iteration"
    prompt = loop.get("prompt") if loop.get("prompt") is not None else "(loop.md / maintenance prompt)"
    return f"{loop['id']}  {loop['human']}  next: {when}  runs: {loop['runs']}  prompt: {prompt[:80]}"


def build_server(session_id: str, link: DaemonLink, routine: bool = False):
    """The MCPServer with the five tools (six for a routine's run: report_outcome), each bound to `session_id`."""
    import anyio.to_thread
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    server = MCPServer(SERVER_NAME, instructions=INSTRUCTIONS + (ROUTINE_INSTRUCTIONS if routine else ""),
                       log_level="WARNING")

    async def call(method: str, params: dict) -> Any:
        try:
            return await anyio.to_thread.run_sync(link.call, method, params)
        except RpcError as exc:
            raise ToolError(exc.message) from None

    @server.tool(description="Schedule this session's next loop iteration (dynamic loops): wait "
                             "delay_seconds (clamped to 60-3600) and run again; reason is shown to the "
                             "user. prompt replaces the loop's prompt from then on. stop=true ends the loop.")
    async def schedule_wakeup(delay_seconds: int, reason: str, prompt: str | None = None,
                              stop: bool = False) -> str:
        params = {"session": session_id, "delay_seconds": delay_seconds, "reason": reason, "stop": stop}
        if prompt:
            params["prompt"] = prompt
        result = await call("loop.wakeup", params)
        if result.get("stopped"):
            return f"loop {result['loop']['id']} stopped"
        return (f"next wake of loop {result['loop']['id']} in {result['delay_seconds']} s "
                f"(at {result['next_wake_at']}): {reason}")

    @server.tool(description="Schedule a prompt in this session on a 5-field cron (local time). "
                             "recurring=false fires once at the next match, then deletes itself. "
                             "Recurring ones expire after 7 days. At most 50 per session.")
    async def cron_create(cron: str, prompt: str, recurring: bool = True) -> str:
        loop = await call("loop.create", {"session": session_id, "cron": cron, "prompt": prompt,
                                          "recurring": recurring})
        return f"created {loop['id']}: {loop['human']}, first at {loop['next_fire_at']}"

    @server.tool(description="List this session's scheduled prompts (loop tasks).")
    async def cron_list() -> str:
        loops = await call("loop.list", {"session": session_id})
        return "\n".join(_loop_line(loop) for loop in loops) or "no scheduled prompts"

    @server.tool(description="Delete one of this session's scheduled prompts by its id.")
    async def cron_delete(id: str) -> str:
        await call("loop.stop", {"id": id, "session": session_id})
        return f"deleted {id}"

    @server.tool(description="Change the desktop task that started this session: its schedule "
                             "(e.g. 'weekdays at 9:30') and/or its prompt, from the next run on.")
    async def update_scheduled_task(schedule: str | None = None, prompt: str | None = None) -> str:
        if schedule is None and prompt is None:
            raise ToolError("give schedule, prompt or both")
        session = await call("session.get", {"id": session_id})
        origin = session.get("origin") or ""
        if not origin.startswith("task:"):
            raise ToolError(f"this session was not started by a desktop task (origin {origin!r}); "
                            "only a task's run can change its task")
        params = {"name": origin[len("task:"):]}
        if schedule is not None:
            params["schedule"] = schedule
        if prompt is not None:
            params["prompt"] = prompt
        await call("task.edit", params)
        return f"task {params['name']} updated"

    if routine:
        @server.tool(description="Report what this routine run achieved, once, at the end: status is "
                                 "\"done\", \"failed\", \"nothing_to_do\" or \"needs_attention\"; summary is "
                                 "one line; links are URLs of what it made (pull requests, commits).")
        async def report_outcome(status: str, summary: str, links: list[str] | None = None) -> str:
            params = {"session": session_id, "status": status, "summary": summary}
            if links:
                params["links"] = links
            run = await call("routine.report_outcome", params)
            return f"outcome of run {run['id']} recorded: {run['outcome']}"

    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bgd.agents.mcp_server", description=__doc__.splitlines()[0])
    parser.add_argument("--session", required=True, help="the session these tools act for")
    parser.add_argument("--socket", help="daemon socket (default: $BGD_SOCKET)")
    parser.add_argument("--routine", action="store_true", help="a routine's run: add the report_outcome tool")
    args = parser.parse_args(argv)
    server = build_server(args.session, DaemonLink(str(paths.socket_path(args.socket))), routine=args.routine)
    server.run("stdio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
