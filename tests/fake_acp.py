#!/usr/bin/env python3
"""A stand-in ACP agent for tests, built on the official Python SDK (`agent-client-protocol`).

The SDK does the framing, the schema and the dispatch, so what the daemon talks
to is the protocol as its maintainers implement it, not our own reading of it.
Like tests/fake_claude.py, its behaviour is scripted by the prompt text: a
sequence of directives separated by ";" (a ";" inside a JSON object or a quoted
string does not split). Unknown text is said back as an agent message.

Directives:
  say TEXT               one agent message, streamed as several chunks (one
                         per word) with one messageId
  think TEXT             one agent thought
  tool TITLE JSON        a tool call (kind "execute", rawInput JSON), then
                         session/request_permission with the options allow_once,
                         allow_always, reject_once, reject_always; allowed: the
                         call completes and "allowed TITLE" is said; rejected:
                         it fails and "denied TITLE" is said; cancelled: the
                         turn ends with stopReason "cancelled". A title chosen
                         allow_always earlier in the process is not asked again
  tools T1 T2            two tool calls at once, each asking permission (as an
                         agent running tools in parallel does); says "allowed T"
                         or "denied T" for each, in the order the answers came
  plan A | B | C         a plan with those entries (the first in progress)
  sleep SECONDS          work that long; session/cancel ends the turn
  ignore-stop            ignore session/cancel, stdin EOF and SIGTERM/SIGINT/SIGHUP;
                         says "ignoring stop" and sleeps until SIGKILL
  crash CODE             "fake crash" on stderr, then exit CODE at once
  garbage                the line "this is not json" on stdout
  bigline MB             one message chunk of MB megabytes of "x"
  stream N INTERVAL_MS   N completed tool calls titled "line i", INTERVAL_MS
                         apart, each with _meta {"ts": time.time()}
  unsupported            ask the client fs/read_text_file (which it did not
                         offer), then say "client said: CODE MESSAGE"
  cost USD               a usage_update with the session's cost so far
                         increased by USD, and usage in the prompt's response
  mcp TOOL JSON          call TOOL on the first stdio server of mcpServers
                         (the official `mcp` client); says "mcp: TEXT" or
                         "mcp error: MESSAGE"
  stop REASON            end the turn with that stopReason (refusal,
                         max_tokens, max_turn_requests, ...)
  error TEXT             fail the session/prompt request with TEXT

Environment:
  FAKE_ACP_LOG           append one JSON line per message received:
                         {"pid", "method", "params"}; the client's answers to
                         the fake's requests as method "(response)"
  FAKE_ACP_STATE_DIR     keep each session's history there, so session/load
                         works in a later process (it replays the history as
                         session/update notifications, as the protocol says)
  FAKE_ACP_NO_LOAD=1     do not offer loadSession
  FAKE_ACP_RESUME=1      offer sessionCapabilities.resume (session/resume)
  FAKE_ACP_NO_INIT=1     never answer initialize
  FAKE_ACP_PROTOCOL=N    answer initialize with protocolVersion N
  FAKE_ACP_AUTH=METHOD   session/new fails with "Authentication required"
                         until authenticate with METHOD has succeeded
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import acp
from acp import (PROTOCOL_VERSION, Agent, InitializeResponse, LoadSessionResponse, NewSessionResponse,
                 PromptResponse, RequestError, plan_entry, run_agent, start_tool_call, text_block,
                 update_agent_message, update_agent_thought, update_plan, update_tool_call,
                 update_user_message)
from acp.interfaces import Client
from acp.schema import (AgentCapabilities, AuthenticateResponse, AuthMethodAgent, Cost, Implementation,
                        PermissionOption, ResumeSessionResponse, SessionCapabilities, SessionMode,
                        SessionModeState, SessionResumeCapabilities, SetSessionModeResponse, ToolCallUpdate,
                        Usage, UsageUpdate)

VERSION = "0.3.0"
OPTIONS = [
    PermissionOption(option_id="allow", name="Allow once", kind="allow_once"),
    PermissionOption(option_id="always", name="Always allow", kind="allow_always"),
    PermissionOption(option_id="reject", name="Reject", kind="reject_once"),
    PermissionOption(option_id="never", name="Always reject", kind="reject_always"),
]


# The modes claude-code-acp offers (Claude Code's permission modes), minus one, so a missing one shows.
MODES = SessionModeState(current_mode_id="default", available_modes=[
    SessionMode(id="default", name="Default"), SessionMode(id="acceptEdits", name="Accept edits"),
    SessionMode(id="plan", name="Plan")])


def split_directives(text: str) -> list[str]:
    """Split on ';' outside JSON brackets and quotes."""
    out, cur, depth, quote, esc = [], [], 0, None, False
    for ch in text:
        if quote:
            cur.append(ch)
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == quote:
                quote = None
            continue
        if ch in "\"'":
            quote = ch
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth = max(0, depth - 1)
        elif ch == ";" and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur).strip())
    return [d for d in out if d]


def log(method: str, params: Any) -> None:
    path = os.environ.get("FAKE_ACP_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"pid": os.getpid(), "method": method, "params": params}) + "\n")


def die(code: int) -> None:
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


class Cancelled(Exception):
    pass


class History:
    """A session's turns, on disk when FAKE_ACP_STATE_DIR is set (session/load reads them back)."""

    def __init__(self, session_id: str):
        base = os.environ.get("FAKE_ACP_STATE_DIR")
        self.path = Path(base) / f"{session_id}.jsonl" if base else None
        self.items: list[dict] = []

    @classmethod
    def known(cls, session_id: str) -> "History | None":
        history = cls(session_id)
        if history.path is None or not history.path.exists():
            return None
        history.items = [json.loads(line) for line in history.path.read_text().splitlines() if line]
        return history

    def add(self, role: str, text: str) -> None:
        item = {"role": role, "text": text}
        self.items.append(item)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(item) + "\n")


class FakeAgent(Agent):
    def __init__(self, writer: asyncio.StreamWriter):
        self.writer = writer
        self.conn: Client | None = None
        self.sessions: dict[str, History] = {}
        self.cancelled: dict[str, asyncio.Event] = {}
        self.always: set[str] = set()
        self.cost = 0.0
        self.ignore_stop = False
        self.authenticated = not os.environ.get("FAKE_ACP_AUTH")

    def on_connect(self, conn: Client) -> None:
        self.conn = conn

    # -- the agent's methods ----------------------------------------------------------

    async def initialize(self, protocol_version: int, client_capabilities=None, client_info=None,
                         **kwargs: Any) -> InitializeResponse:
        if os.environ.get("FAKE_ACP_NO_INIT"):
            await asyncio.Event().wait()
        capabilities = AgentCapabilities(load_session=not os.environ.get("FAKE_ACP_NO_LOAD"))
        if os.environ.get("FAKE_ACP_RESUME"):
            capabilities.session_capabilities = SessionCapabilities(resume=SessionResumeCapabilities())
        methods = []
        if os.environ.get("FAKE_ACP_AUTH"):
            methods = [AuthMethodAgent(id=os.environ["FAKE_ACP_AUTH"], name="Log in",
                                       description="the fake's only way in")]
        return InitializeResponse(protocol_version=int(os.environ.get("FAKE_ACP_PROTOCOL", PROTOCOL_VERSION)),
                                  agent_capabilities=capabilities, auth_methods=methods,
                                  agent_info=Implementation(name="fake-acp", title="Fake ACP", version=VERSION))

    async def authenticate(self, method_id: str, **kwargs: Any) -> AuthenticateResponse:
        if method_id != os.environ.get("FAKE_ACP_AUTH"):
            raise RequestError(-32602, f"unknown auth method {method_id!r}")
        self.authenticated = True
        return AuthenticateResponse()

    async def new_session(self, cwd: str, mcp_servers=None, **kwargs: Any) -> NewSessionResponse:
        if not self.authenticated:
            raise RequestError.auth_required()
        if not os.path.isabs(cwd):
            raise RequestError.invalid_params({"cwd": "must be absolute"})
        session_id = "fake-" + uuid.uuid4().hex[:12]
        self._open(session_id, History(session_id), mcp_servers)
        return NewSessionResponse(session_id=session_id, modes=MODES)

    async def set_session_mode(self, mode_id: str, session_id: str, **kwargs: Any) -> SetSessionModeResponse:
        if mode_id not in [m.id for m in MODES.available_modes]:
            raise RequestError.invalid_params({"modeId": f"no mode {mode_id}"})
        return SetSessionModeResponse()

    async def load_session(self, cwd: str, session_id: str, mcp_servers=None, **kwargs: Any):
        if os.environ.get("FAKE_ACP_NO_LOAD"):
            raise RequestError.method_not_found("session/load")
        history = History.known(session_id)
        if history is None:
            raise RequestError.resource_not_found(session_id)
        for item in history.items:
            chunk = text_block(item["text"])
            update = update_user_message(chunk) if item["role"] == "user" else update_agent_message(chunk)
            await self.conn.session_update(session_id=session_id, update=update)
        self._open(session_id, history, mcp_servers)
        return LoadSessionResponse()

    async def resume_session(self, session_id: str, cwd: str, mcp_servers=None, **kwargs: Any):
        history = History.known(session_id)
        if history is None:
            raise RequestError.resource_not_found(session_id)
        self._open(session_id, history, mcp_servers)
        return ResumeSessionResponse()

    def _open(self, session_id: str, history: History, mcp_servers) -> None:
        self.sessions[session_id] = history
        self.cancelled[session_id] = asyncio.Event()
        self.mcp_servers = [s for s in (mcp_servers or []) if getattr(s, "command", None)]

    async def cancel(self, session_id: str, **kwargs: Any) -> None:
        if not self.ignore_stop and session_id in self.cancelled:
            self.cancelled[session_id].set()

    async def prompt(self, prompt, session_id: str, **kwargs: Any) -> PromptResponse:
        history = self.sessions.get(session_id)
        if history is None:
            raise RequestError.invalid_params({"sessionId": f"unknown session {session_id}"})
        text = "".join(getattr(block, "text", "") for block in prompt)
        history.add("user", text)
        self.cancelled[session_id] = asyncio.Event()
        self.usage: Usage | None = None
        try:
            for directive in split_directives(text):
                self._check(session_id)
                stop = await self.run(session_id, directive)
                if stop is not None:
                    return PromptResponse(stop_reason=stop, usage=self.usage)
        except Cancelled:
            return PromptResponse(stop_reason="cancelled", usage=self.usage)
        return PromptResponse(stop_reason="end_turn", usage=self.usage)

    # -- directives ---------------------------------------------------------------------

    def _check(self, session_id: str) -> None:
        if self.cancelled[session_id].is_set():
            raise Cancelled()

    async def wait(self, session_id: str, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.cancelled[session_id].wait(), seconds)
        except asyncio.TimeoutError:
            return
        raise Cancelled()

    async def update(self, session_id: str, update, meta: dict | None = None) -> None:
        if meta:
            update.field_meta = meta
        await self.conn.session_update(session_id=session_id, update=update)

    async def say(self, session_id: str, text: str) -> None:
        message_id = str(uuid.uuid4())
        words = text.split(" ")
        for i, word in enumerate(words):
            chunk = update_agent_message(text_block(word if i == len(words) - 1 else word + " "))
            chunk.message_id = message_id
            await self.update(session_id, chunk)
        self.sessions[session_id].add("agent", text)

    async def run(self, session_id: str, directive: str) -> str | None:
        cmd, _, arg = directive.partition(" ")
        arg = arg.strip()
        if cmd == "say":
            await self.say(session_id, arg)
        elif cmd == "think":
            await self.update(session_id, update_agent_thought(text_block(arg)))
        elif cmd == "tool":
            return await self.tool(session_id, arg)
        elif cmd == "tools":
            results = await asyncio.gather(*(self.tool(session_id, title, quiet=True) for title in arg.split()))
            for title, allowed in results:
                await self.say(session_id, f"{'allowed' if allowed else 'denied'} {title}")
        elif cmd == "plan":
            entries = [plan_entry(part.strip(), status="in_progress" if i == 0 else "pending")
                       for i, part in enumerate(arg.split("|"))]
            await self.update(session_id, update_plan(entries))
        elif cmd == "sleep":
            await self.wait(session_id, float(arg or 0))
        elif cmd == "ignore-stop":
            self.ignore_stop = True
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)
            await self.say(session_id, "ignoring stop")
            await asyncio.Event().wait()
        elif cmd == "crash":
            sys.stderr.write("fake crash\n")
            die(int(arg or 1))
        elif cmd == "garbage":
            self.writer.write(b"this is not json\n")
            await self.writer.drain()
        elif cmd == "bigline":
            size = int(float(arg or 10) * 1024 * 1024)
            chunk = update_agent_message(text_block("x" * size))
            chunk.message_id = str(uuid.uuid4())
            await self.update(session_id, chunk)
        elif cmd == "stream":
            parts = arg.split()
            n = int(parts[0]) if parts else 10
            interval = float(parts[1]) / 1000 if len(parts) > 1 else 0.0
            for k in range(1, n + 1):
                if k > 1 and interval:
                    await self.wait(session_id, interval)
                call = start_tool_call(f"line-{k}", f"line {k}", kind="other", status="completed")
                await self.update(session_id, call, {"ts": time.time()})
        elif cmd == "unsupported":
            try:
                await self.conn.read_text_file(session_id=session_id, path="/etc/hostname")
                await self.say(session_id, "client said: ok")
            except RequestError as exc:
                await self.say(session_id, f"client said: {exc.code} {exc}")
        elif cmd == "cost":
            self.cost += float(arg or 0)
            await self.update(session_id, UsageUpdate(session_update="usage_update", used=1000, size=200000,
                                                      cost=Cost(amount=self.cost, currency="USD")))
            self.usage = Usage(total_tokens=150, input_tokens=100, output_tokens=50)
        elif cmd == "mcp":
            await self.mcp(session_id, arg)
        elif cmd == "stop":
            return arg or "end_turn"
        elif cmd == "error":
            raise RequestError(-32603, arg or "fake failure")
        else:
            await self.say(session_id, directive)
        return None

    async def tool(self, session_id: str, arg: str, quiet: bool = False):
        title, _, js = arg.partition(" ")
        try:
            raw_input = json.loads(js) if js.strip() else {}
        except ValueError as exc:
            await self.say(session_id, f"bad tool input: {exc}")
            return None
        call_id = "call-" + uuid.uuid4().hex[:8]
        await self.update(session_id, start_tool_call(call_id, title, kind="execute", status="pending",
                                                      raw_input=raw_input))
        if title not in self.always:
            answer = asyncio.ensure_future(self.conn.request_permission(
                session_id=session_id, options=OPTIONS,
                tool_call=ToolCallUpdate(tool_call_id=call_id, title=title, kind="execute",
                                         status="pending", raw_input=raw_input)))
            cancel = asyncio.ensure_future(self.cancelled[session_id].wait())
            done, _ = await asyncio.wait({answer, cancel}, return_when=asyncio.FIRST_COMPLETED)
            # A cancel while asking: the client must still answer ("cancelled"); wait for it.
            response = await answer
            cancel.cancel()
            outcome = response.outcome
            if outcome.outcome == "cancelled":
                await self.update(session_id, update_tool_call(call_id, status="failed"))
                raise Cancelled()
            chosen = next(o for o in OPTIONS if o.option_id == outcome.option_id)
            if chosen.kind.startswith("reject"):
                await self.update(session_id, update_tool_call(call_id, status="failed"))
                if quiet:
                    return title, False
                await self.say(session_id, f"denied {title}")
                return None
            if chosen.kind == "allow_always":
                self.always.add(title)
        await self.update(session_id, update_tool_call(call_id, status="in_progress"))
        await self.update(session_id, update_tool_call(
            call_id, status="completed", raw_output={"stdout": f"ran {title}"},
            content=[acp.tool_content(text_block(f"ran {title} with {json.dumps(raw_input)}"))]))
        if quiet:
            return title, True
        await self.say(session_id, f"allowed {title}")
        return None

    async def mcp(self, session_id: str, arg: str) -> None:
        from mcp import ClientSession, StdioServerParameters
        from mcp.client.stdio import stdio_client

        tool, _, js = arg.partition(" ")
        try:
            arguments = json.loads(js) if js.strip() else {}
        except ValueError as exc:
            await self.say(session_id, f"mcp error: bad arguments: {exc}")
            return
        if not self.mcp_servers:
            await self.say(session_id, "mcp error: no stdio MCP server in mcpServers")
            return
        server = self.mcp_servers[0]
        params = StdioServerParameters(command=server.command, args=list(server.args),
                                       env={**os.environ, **{e.name: e.value for e in server.env}})
        try:
            async with stdio_client(params) as (read, write):
                async with ClientSession(read, write) as client:
                    await client.initialize()
                    result = await asyncio.wait_for(client.call_tool(tool, arguments), 20)
        except Exception as exc:  # whatever the server did, the turn reports it
            await self.say(session_id, f"mcp error: {exc}")
            return
        text = " ".join(getattr(c, "text", "") for c in result.content)
        failed = getattr(result, "is_error", getattr(result, "isError", False))
        await self.say(session_id, ("mcp error: " if failed else "mcp: ") + text)


def _log_incoming(event) -> None:
    message = event.message
    if event.direction.value != "incoming":
        return
    if "method" in message:
        log(message["method"], message.get("params"))
    else:  # the client's answer to one of our requests
        log("(response)", message.get("result", {"error": message.get("error")}))


async def main() -> None:
    reader, writer = await acp.stdio_streams(limit=64 << 20)
    agent = FakeAgent(writer)
    await run_agent(agent, writer, reader, use_unstable_protocol=True, observers=[_log_incoming])
    # stdin closed: a well-behaved agent exits; one told to ignore stop keeps running.
    while agent.ignore_stop:
        await asyncio.sleep(3600)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: die(143))
    asyncio.run(main())
