"""The generic backend (SPEC §5.2): any command, one process per turn, its stdout as the transcript."""

from __future__ import annotations

from bgd.agents.base import Driver as BaseDriver, Launch, one_line
from bgd.agents.stdout_lines import OversizedLine


class Driver(BaseDriver):
    keeps_process = False
    schedules_wakeups = False
    provides_history = False

    def launch(self, text: str, mcp_config: str | None) -> Launch:
        parts = self.agent.command + self.agent.args
        argv = [part.replace("{prompt}", text) for part in parts]
        placeholder = any("{prompt}" in part for part in parts)
        return Launch(argv, stdin=None if placeholder else text.encode() + b"\n")

    def line(self, line: bytes) -> None:
        if isinstance(line, OversizedLine):
            self.ctl.record("raw", {"text": line[:2000].decode("utf-8", "replace"), "truncated": True,
                                    "bytes": line.total})
            return
        text = line.decode("utf-8", "replace").rstrip("\r")
        self.ctl.record("output", {"text": text})
        if text.strip():
            self.ctl.assistant(one_line(text))

    def exited(self, code: int) -> None:
        if code == 0:
            self.ctl.turn_done(turns=1)
        else:
            tail = self.ctl.stderr_tail()
            self.ctl.turn_done(error=f"agent exited with code {code}" + (f": {tail}" if tail else ""), turns=1)
