"""The agent-backend seam: what every backend implements, and what the session runner gives it.

A backend is a `Driver` subclass in its own module under `bgd.agents`, listed in
`BACKENDS` below and named by `backend = "..."` under `[agents.NAME]` in
config.toml.  The session runner (`bgd.sessions.manager`) makes one driver per
agent process and never asks which backend it is: it starts the process the
driver describes, hands it every stdout line, and forwards a person's answers and
stop requests.  The driver turns lines into transcript entries and state changes
through its `RunControl` (`ctl`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from bgcore.config import AgentConfig
    from bgd.sessions.model import Session

# backend name -> module holding its `Driver` subclass (named `Driver`)
BACKENDS = {
    "claude": "bgd.agents.claude",
    "command": "bgd.agents.command",
    "acp": "bgd.agents.acp",
}


@dataclass
class Launch:
    """How to start the agent process: argv (never a shell), bytes for its stdin, extra environment."""

    argv: list[str]
    stdin: bytes | None = None      # written once, then stdin is closed (a one-shot command)
    env: dict[str, str] = field(default_factory=dict)


class RunControl(Protocol):
    """What the session runner offers a driver for one process (see sessions/run.py).

    Every call is ignored once the process is no longer the session's current one."""

    session: "Session"
    stopping: bool                       # a stop was asked for: only the transcript hears the agent now

    def record(self, kind: str, data: Any) -> None: ...       # a transcript entry
    def assistant(self, text: str) -> None: ...               # the agent said something (last_message)
    def ask(self, pending: dict) -> None: ...                 # needs_input; see Driver.answer
    def withdraw(self, request_id: str) -> None: ...          # the agent withdrew its request
    def turn_done(self, *, error: str | None = None, cost_usd: float | None = None,
                  turns: int | None = None, text: str | None = None) -> None: ...
    def fail(self, error: str, *, stop: bool = True) -> None: ...   # the session failed (and the process is stopped)
    def died(self, code: int) -> None: ...                    # the process exited on its own
    def stderr_tail(self) -> str: ...                         # the last line the agent wrote on stderr
    def send(self, obj: dict) -> None: ...                    # one JSON line to stdin, in the background
    async def write(self, obj: dict) -> bool: ...             # one JSON line to stdin; False if it is closed
    def start_soon(self, fn, *args: Any) -> None: ...         # background work of the driver (a handshake)
    def set_agent_session(self, agent_session_id: str) -> None: ...  # the agent's own id for the conversation
    def add_usage(self, tokens: dict | None) -> None: ...     # a turn's token counts, summed on the session


class Driver:
    """One agent process of one session.  Subclasses override what their protocol needs.

    `pending` (given to ctl.ask and back to answer) is a JSON object: request_id, tool_name,
    input, kind ("permission" | "question"), and whatever else the backend needs to answer
    (suggestions, options); clients show it as is."""

    keeps_process = True        # the process lives between turns; a new turn is written to it
    schedules_wakeups = True    # the agent can call the daemon's MCP tools (dynamic loops, §6)
    provides_history = True     # a restarted process continues the conversation (resume)

    def __init__(self, agent: "AgentConfig", session: "Session", ctl: RunControl):
        self.agent = agent
        self.session = session
        self.ctl = ctl

    @property
    def install_hint(self) -> str:
        """How to install the binary, named in the "not found" error ([agents.NAME] install)."""
        return self.agent.install

    def launch(self, text: str, mcp_config: str | None) -> Launch:
        """The process to start for a turn whose text is `text`."""
        raise TypeError(f"{type(self).__name__} does not define launch()")

    async def started(self, text: str) -> None:
        """The process is running: send the first turn (or do a handshake first)."""

    async def turn(self, text: str) -> bool:
        """A new turn on the live process; False when this backend needs a new process."""
        return False

    def line(self, line: bytes) -> None:
        """One stdout line (an `OversizedLine` when it was cut)."""

    async def answer(self, pending: dict, decision: str, *, always: bool, message: str | None,
                     answer: str | None) -> None:
        """A person's (or a hook's) answer to `pending`: decision is "allow" or "deny"."""

    async def interrupt(self) -> None:
        """A stop was asked for mid-turn: ask the agent to end the turn (before the grace and kill)."""

    def exited(self, code: int) -> None:
        """The process ended on its own (not stopped)."""
        self.ctl.died(code)


def one_line(text: str, limit: int = 200) -> str:
    for line in text.splitlines():
        if line.strip():
            line = line.strip()
            return line if len(line) <= limit else line[:limit - 1] + "…"
    return ""


def driver_class(backend: str) -> type[Driver]:
    return import_module(BACKENDS[backend]).Driver
