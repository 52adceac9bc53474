"""The Agent Client Protocol backend (SPEC §5.5): Gemini CLI, Qwen Code, OpenCode, Codex, goose, ...

bgd is the ACP client of the agent process.  The messages and what they mean
are the pure `acp_lines`; the framing is `bgcore.jsonrpc.Peer` (both sides
send requests on the one stream).  This driver moves them: it runs the
handshake (`initialize`, `authenticate` only when the agent demands it and a
method is configured, then `session/resume`, `session/load` or `session/new`)
in the background so a dispatch answers at once, sends each turn as a
`session/prompt`, and maps the agent's notifications and requests onto the
session runner's `RunControl`.

It runs on the daemon's trio loop and on a cluster worker's asyncio loop
(bgd.cluster.worker), so its own waiting is anyio's, which works on both.
"""

from __future__ import annotations

from typing import Any

import anyio

from bgcore.jsonrpc import METHOD_NOT_FOUND, PARSE_ERROR, Notification, Peer, RemoteProtocolError, Reply, Request, RpcError

from bgd import __version__, fastjson
from bgd.agents import acp_lines as acp
from bgd.agents.base import Driver as BaseDriver, Launch, one_line
from bgd.agents.stdout_lines import OversizedLine


class _Gone(Exception):
    """The process ended while a request of ours was outstanding."""


class Driver(BaseDriver):
    keeps_process = True
    schedules_wakeups = True     # every ACP agent takes stdio MCP servers in session/new
    provides_history = False     # set once session/new has given the agent's own session id

    def __init__(self, agent, session, ctl):
        super().__init__(agent, session, ctl)
        self.peer = Peer(loads=fastjson.loads)
        self.updates = acp.Updates()
        self.info: acp.AgentInfo | None = None
        self.acp_session: str | None = None      # the agent's session id, once opened
        self.mcp_config: str | None = None
        self._waiting: dict[Any, tuple[anyio.Event, list]] = {}
        self._prompt_id: Any = None                 # the session/prompt of the turn in progress
        self._permissions: dict[str, Any] = {}      # open request_id -> the agent's request id
        self._queued: list[dict] = []               # permission requests waiting for the one asked now
        self._follow_up: list[str] = []             # deny messages, sent as the next prompt
        self._prompts = 0                           # prompts in this turn (with follow-ups)
        self._replayed: int | None = None           # counting updates while session/load replays
        self._authenticated = False
        self._cost: float | None = None

    # -- the process ---------------------------------------------------------------

    def launch(self, text: str, mcp_config: str | None) -> Launch:
        self.mcp_config = mcp_config
        # The daemon owns every timer (SPEC §5.4): Claude Code under claude-code-acp keeps its cron off.
        return Launch([*self.agent.command, *self.agent.args], env={"CLAUDE_CODE_DISABLE_CRON": "1"})

    async def started(self, text: str) -> None:
        # The handshake can take seconds (or never end): not inside the dispatch call.
        self.ctl.start_soon(self._open_and_prompt, text)

    async def turn(self, text: str) -> bool:
        if self.acp_session is None or self._prompt_id is not None:
            return False
        self._prompts = 0
        return await self._prompt(text)

    def exited(self, code: int) -> None:
        for event, slot in self._waiting.values():
            slot.append(None)
            event.set()
        self._waiting.clear()
        self.ctl.died(code)

    # -- the handshake -------------------------------------------------------------

    async def _open_and_prompt(self, text: str) -> None:
        try:
            with anyio.move_on_after(self.agent.start_timeout_s) as scope:
                result = await self._call("initialize", acp.initialize_params(__version__))
            if scope.cancelled_caught:
                self.ctl.fail(f"the agent did not answer initialize within {self.agent.start_timeout_s:g} s; "
                              f"check that [agents.{self.agent.name}] command starts it in ACP mode "
                              f"({' '.join(self.agent.command)})")
                return
            self.info = acp.read_initialize(result)
            await self._open_session()
            if not self.ctl.stopping:
                self._prompts = 0
                await self._prompt(text)
        except acp.AcpError as exc:
            self.ctl.fail(str(exc))
        except _Gone:
            pass  # exited() has reported it

    async def _open_session(self) -> None:
        servers = acp.mcp_servers(self.mcp_config)
        cwd = self.session.cwd
        earlier = self.session.agent_session_id if self.session.has_history else None
        if earlier is not None:
            how = self.info.continues
            if how is None:
                self._note("fresh ACP session", f"{self.info.name} cannot continue an earlier conversation "
                                                "(it offers neither session/load nor session/resume)")
            else:
                self._replayed = 0 if how == "session/load" else None
                try:
                    result = await self._authed(how, acp.load_session_params(earlier, cwd, servers))
                except acp.AcpError as exc:
                    self._note("fresh ACP session", f"{how} of the earlier conversation failed: {exc}")
                else:
                    self.acp_session = earlier
                    detail = f"{how} {earlier}"
                    if self._replayed:
                        detail += f" ({self._replayed} updates of its history replayed, not recorded again)"
                    self._note("continued", detail)
                    await self._set_mode(result)
                    return
                finally:
                    self._replayed = None
        result = await self._authed("session/new", acp.new_session_params(cwd, servers))
        self.acp_session = acp.read_session_id(result, "session/new")
        self.ctl.set_agent_session(self.acp_session)
        await self._set_mode(result)

    async def _set_mode(self, result: Any) -> None:
        """The session's permission mode, as the agent's session mode of that name."""
        mode, note = acp.mode_to_set(result, self.session.permission_mode)
        if note:
            self._note("permission mode", note)
        if mode:
            try:
                await self._call("session/set_mode", acp.set_mode_params(self.acp_session, mode))
            except RpcError as exc:
                self._note("permission mode", acp.refusal("session/set_mode", exc, self.info, self.agent.name))

    async def _authed(self, method: str, params: dict) -> Any:
        """Call `method`; authenticate first when the agent demands it and a method is configured."""
        try:
            return await self._call(method, params)
        except RpcError as exc:
            auth = self.agent.auth_method
            if exc.code == acp.AUTH_REQUIRED and auth and not self._authenticated:
                try:
                    await self._call("authenticate", acp.authenticate_params(auth))
                except RpcError as auth_exc:
                    raise acp.AcpError(acp.refusal("authenticate", auth_exc, self.info, self.agent.name)) from None
                self._authenticated = True
                return await self._authed(method, params)
            raise acp.AcpError(acp.refusal(method, exc, self.info, self.agent.name,
                                           auth if self._authenticated else None)) from None

    async def _call(self, method: str, params: dict) -> Any:
        """One request, answered: its result, or RpcError with the agent's error."""
        message = self.peer.request(method, params)
        event, slot = anyio.Event(), []
        self._waiting[message["id"]] = (event, slot)
        if not await self.ctl.write(message):
            self._waiting.pop(message["id"], None)
            raise _Gone()
        await event.wait()
        reply = slot[0]
        if reply is None:
            raise _Gone()
        if reply.error is not None:
            raise reply.error
        return reply.result

    async def _prompt(self, text: str) -> bool:
        message = self.peer.request("session/prompt", acp.prompt_params(self.acp_session, text))
        self._prompt_id = message["id"]
        self._prompts += 1
        return await self.ctl.write(message)

    # -- what the agent sends --------------------------------------------------------

    def line(self, line: bytes) -> None:
        ctl = self.ctl
        if isinstance(line, OversizedLine):
            ctl.record("raw", {"text": line[:2000].decode("utf-8", "replace"), "truncated": True,
                               "bytes": line.total})
            ctl.fail(f"the agent printed a line of {line.total} bytes, over bgd's limit; "
                     "it was cut from the transcript")
            return
        try:
            items = self.peer.receive(line)
        except RemoteProtocolError as exc:
            text = line.decode("utf-8", "replace")
            ctl.record("raw", {"text": text[:4000]})
            if exc.code == PARSE_ERROR:
                ctl.fail(f"the agent printed a non-JSON line on stdout ({one_line(text, 80)!r}); an ACP agent "
                         f"prints only protocol messages there: check that [agents.{self.agent.name}] "
                         "starts it in ACP mode")
            return
        for item in items:
            if isinstance(item, Reply):
                self._reply(item)
            elif isinstance(item, Notification):
                self._notification(item)
            elif isinstance(item, Request):
                self._request(item)
            else:  # a response to nothing of ours: kept, otherwise ignored
                ctl.record("raw", {"text": line[:4000].decode("utf-8", "replace"), "error": item.message})

    def _reply(self, reply: Reply) -> None:
        waiting = self._waiting.pop(reply.id, None)
        if waiting is not None:
            event, slot = waiting
            slot.append(reply)
            event.set()
        elif reply.id == self._prompt_id:
            self._prompt_id = None
            self._turn_ended(reply)

    def _notification(self, note: Notification) -> None:
        if note.method != "session/update":
            self.ctl.record("acp", {"method": note.method, "params": note.params})
            return
        if self._replayed is not None:   # session/load replays the history we already hold
            self._replayed += 1
            return
        self._apply(self.updates.feed(note.params))

    def _apply(self, outputs: list) -> None:
        for out in outputs:
            if isinstance(out, acp.Entry):
                self.ctl.record(out.kind, out.data)
            elif isinstance(out, acp.Said):
                self.ctl.assistant(one_line(out.text))
            elif isinstance(out, acp.CostReport):
                if out.currency.upper() == "USD":
                    self._cost = out.amount
                else:
                    self.ctl.record("acp", {"cost": {"amount": out.amount, "currency": out.currency}})

    def _request(self, request: Request) -> None:
        ctl = self.ctl
        if request.method == "session/request_permission":
            self._apply(self.updates.flush())
            request_id = f"acp-{request.id}"
            self._permissions[request_id] = request.id
            if ctl.stopping:
                self._answer_now(request_id, None)
                return
            # A session asks one thing at a time; an agent running tools in parallel may ask several.
            self._queued.append(acp.permission_pending(request_id, request.params))
            if len(self._permissions) == 1:
                ctl.ask(self._queued.pop(0))
            return
        # We declared no file system and no terminal: anything else is not ours to do.
        ctl.record("acp", {"request": request.method, "params": request.params})
        ctl.send(self.peer.error(request.id, RpcError(
            METHOD_NOT_FOUND, f"bgd does not offer {request.method} (it declared no file system or terminal)")))

    def _turn_ended(self, reply: Reply) -> None:
        self._apply(self.updates.flush())
        if reply.error is not None:
            self._follow_up.clear()
            self.ctl.turn_done(error=acp.refusal("session/prompt", reply.error, self.info, self.agent.name),
                               cost_usd=self._cost, turns=self._prompts)
            return
        end = acp.turn_end(reply.result)
        self.ctl.add_usage(end.usage)
        if end.state == "completed" and self._follow_up and not self.ctl.stopping:
            text = "\n".join(self._follow_up)
            self._follow_up.clear()
            self.ctl.record("user", {"text": text, "after": "denied"})
            self.ctl.start_soon(self._prompt, text)
            return
        self._follow_up.clear()
        error = end.error
        if end.state == "stopped" and not self.ctl.stopping:
            error = "the agent cancelled the turn on its own (stopReason cancelled); reply to continue"
        self.ctl.turn_done(error=error, cost_usd=self._cost, turns=self._prompts)

    # -- a person's answers and stop --------------------------------------------------

    async def answer(self, pending: dict, decision: str, *, always: bool, message: str | None,
                     answer: str | None) -> None:
        option = acp.choose_option(pending.get("options") or [], decision, always)
        if decision == "deny" and (message or answer):
            # ACP's answer carries no reason: the agent hears it as the next prompt of this turn.
            self._follow_up.append(message or answer)
        await self._answer(pending["request_id"], option)
        if self._queued:
            self.ctl.ask(self._queued.pop(0))

    def _answer_now(self, request_id: str, option: str | None) -> None:
        wire_id = self._permissions.pop(request_id, None)
        if wire_id is not None:
            self.ctl.send(self.peer.result(wire_id, acp.permission_result(option)))

    async def _answer(self, request_id: str, option: str | None) -> None:
        wire_id = self._permissions.pop(request_id, None)
        if wire_id is not None:
            await self.ctl.write(self.peer.result(wire_id, acp.permission_result(option)))

    async def interrupt(self) -> None:
        # The protocol asks the client to answer every open permission request "cancelled".
        self._queued.clear()
        for request_id in list(self._permissions):
            await self._answer(request_id, None)
        if self.acp_session is not None:
            await self.ctl.write(self.peer.notification("session/cancel", acp.cancel_params(self.acp_session)))

    def _note(self, event: str, detail: str) -> None:
        self.ctl.record("daemon", {"event": event, "detail": detail})
