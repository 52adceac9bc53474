"""The Claude Code backend (SPEC §5.1): `claude -p` in stream-json, permission prompts over stdio.

The wire format (argv, control messages, what each line means) is the pure
`claude_lines`; this driver maps it onto the session runner's `RunControl`.
"""

from __future__ import annotations

from bgd import fastjson
from bgd.agents import claude_lines as claude
from bgd.agents.base import Driver as BaseDriver, Launch, one_line
from bgd.agents.stdout_lines import OversizedLine


class Driver(BaseDriver):
    def launch(self, text: str, mcp_config: str | None) -> Launch:
        session = self.session
        argv = claude.build_argv(self.agent, agent_session_id=session.agent_session_id,
                                 resume=session.has_history, permission_mode=session.permission_mode,
                                 model=session.model, mcp_config=mcp_config)
        # Scheduling is the daemon's job (loops, tasks): the CLI's own cron stays off.
        return Launch(argv, env={"CLAUDE_CODE_DISABLE_CRON": "1"})

    async def started(self, text: str) -> None:
        if not await self.ctl.write(claude.user_message(text)):
            self.ctl.fail("the agent closed its input before the prompt could be sent; "
                          f"see `bgctl logs {self.session.id}`", stop=False)

    async def turn(self, text: str) -> bool:
        return await self.ctl.write(claude.user_message(text))

    def line(self, line: bytes) -> None:
        ctl = self.ctl
        if isinstance(line, OversizedLine):
            ctl.record("raw", {"text": line[:2000].decode("utf-8", "replace"), "truncated": True,
                               "bytes": line.total})
            ctl.fail(f"the agent printed a line of {line.total} bytes, over bgd's limit; "
                     "it was cut from the transcript")
            return
        try:
            obj = fastjson.loads(line)
            if not isinstance(obj, dict):
                raise ValueError("not an object")
        except (ValueError, RecursionError):
            text = line.decode("utf-8", "replace")
            ctl.record("raw", {"text": text[:4000]})
            ctl.fail(f"the agent printed a non-JSON line on stdout ({one_line(text, 80)!r}); "
                     f"check that [agents.{self.session.agent}] runs Claude Code")
            return
        ctl.record("agent", obj)
        if ctl.stopping:
            return  # only the transcript hears from a process being stopped
        msg = claude.classify(obj)
        if isinstance(msg, claude.AssistantText):
            ctl.assistant(one_line(msg.text))
        elif isinstance(msg, claude.PermissionRequest):
            ctl.ask({"request_id": msg.request_id, "tool_name": msg.tool_name, "input": msg.input,
                     "suggestions": msg.suggestions, "kind": msg.waiting_for})
        elif isinstance(msg, claude.CancelRequest):
            ctl.withdraw(msg.request_id)
        elif isinstance(msg, claude.OtherControlRequest):
            ctl.send(claude.unsupported_response(msg.request_id, msg.subtype))
        elif isinstance(msg, claude.TurnResult):
            error = None
            if msg.is_error:
                error = one_line(msg.text) or msg.subtype or "the agent reported an error"
            ctl.turn_done(error=error, cost_usd=msg.total_cost_usd, turns=msg.num_turns, text=msg.text)

    async def answer(self, pending: dict, decision: str, *, always: bool, message: str | None,
                     answer: str | None) -> None:
        if decision == "allow":
            updated = pending["input"]
            if answer is not None:
                updated = claude.answer_input(pending["input"], answer)
            # The CLI suggests rules for its settings files; "always" here means
            # this conversation (and, for tasks, the daemon remembers the tool).
            permissions = ([dict(rule, destination="session") for rule in pending.get("suggestions") or []
                            if isinstance(rule, dict)] if always else None)
            response = claude.allow_response(pending["request_id"], updated, permissions)
        else:
            response = claude.deny_response(pending["request_id"], message or "Denied by the user")
        await self.ctl.write(response)

    async def interrupt(self) -> None:
        await self.ctl.write(claude.interrupt_request())
