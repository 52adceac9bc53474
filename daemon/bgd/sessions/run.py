"""One live agent process of a session, and the `RunControl` its backend driver talks to.

Every call from the driver first checks that this run is still the session's
current one, so a stopped or replaced process cannot change the session after
the fact.  The state changes themselves are the manager's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Awaitable, Callable

from bgd.agents.base import Driver

if TYPE_CHECKING:
    from bgd.agents.process import AgentProcess
    from bgd.sessions.manager import SessionManager
    from bgd.sessions.model import Session


class Run:
    def __init__(self, manager: "SessionManager", session: "Session", driver_cls: type[Driver], agent) -> None:
        self.manager = manager
        self.session = session
        self.session_id = session.id
        self.process: "AgentProcess | None" = None
        self.in_turn = True
        self.stopping = False
        self.turn_generation = 0
        self.driver = driver_cls(agent, session, self)
        self.cleanup: "Callable[[], Awaitable[None]] | None" = None   # from SessionManager.wrap_launch

    async def end(self) -> None:
        """The process is over (or never started): undo what wrap_launch set up for it, once."""
        cleanup, self.cleanup = self.cleanup, None
        if cleanup is not None:
            await cleanup()

    @property
    def current(self) -> bool:
        return self.manager._current(self.session, self)

    # -- RunControl ---------------------------------------------------------------

    def record(self, kind: str, data: Any) -> None:
        if self.current:
            self.manager._record_soon(self.session, kind, data)

    def assistant(self, text: str) -> None:
        if self.current and text:
            mask = self.manager.masks.get(self.session.id)
            self.session.last_message = text if mask is None else mask(text)
            self.manager._touched(self.session)

    def ask(self, pending: dict) -> None:
        if self.current and not self.stopping:
            self.manager._ask(self.session, self, pending)

    def withdraw(self, request_id: str) -> None:
        if self.current:
            self.manager._withdraw(self.session, request_id)

    def turn_done(self, *, error: str | None = None, cost_usd: float | None = None,
                  turns: int | None = None, text: str | None = None) -> None:
        if self.current:
            self.manager._turn_done(self.session, self, error=error, cost_usd=cost_usd, turns=turns, text=text)

    def fail(self, error: str, *, stop: bool = True) -> None:
        if self.current:
            self.manager._fail(self.session, error)
            if stop:
                self.manager._stop_run(self)

    def died(self, code: int) -> None:
        if self.current:
            self.manager._died(self.session, self, code)

    def stderr_tail(self) -> str:
        return self.process.stderr_last_line() if self.process is not None else ""

    def send(self, obj: dict) -> None:
        if self.process is not None:
            self.manager.nursery.start_soon(self.process.write_json, obj)

    async def write(self, obj: dict) -> bool:
        if self.process is None:
            return False
        return await self.process.write_json(obj)

    def start_soon(self, fn, *args: Any) -> None:
        self.manager.nursery.start_soon(fn, *args)

    def set_agent_session(self, agent_session_id: str) -> None:
        if self.current:
            self.session.agent_session_id = agent_session_id
            self.session.has_history = True
            self.manager._changed(self.session)

    def add_usage(self, tokens: dict | None) -> None:
        if self.current and tokens:
            usage = dict(self.session.usage or {})
            for key, value in tokens.items():
                if isinstance(value, int) and not isinstance(value, bool):
                    usage[key] = usage.get(key, 0) + value
            self.session.usage = usage
