"""`bgctl agents` in a real terminal (tmux): keys in, screen text out.

One flow end to end: dispatch from the view's line, watch the session go
Working → Needs input, approve it with Space then 1, see it Completed; lose
and regain the daemon; quit with q and find the terminal as it was.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid

import pytest

from conftest import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")]


class Tmux:
    """One tmux server of our own (-L), so a person's tmux is never touched."""

    def __init__(self, env: dict, width: int = 80, height: int = 24):
        self.server = f"bgagents-test-{uuid.uuid4().hex[:8]}"
        self.env = env
        self.run("new-session", "-d", "-s", "view", "-x", str(width), "-y", str(height),
                 "bash --norc --noprofile")

    def run(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.server, *args], env=self.env, capture_output=True, text=True,
                              check=True, timeout=10).stdout

    def keys(self, *keys: str, literal: bool = False) -> None:
        self.run("send-keys", "-t", "view", *(["-l"] if literal else []), *keys)

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "view")

    def flag(self, name: str) -> str:
        return self.run("display-message", "-p", "-t", "view", f"#{{{name}}}").strip()

    def wait_for(self, predicate, what: str, timeout: float = 15.0) -> str:
        def shown():
            text = self.screen()
            return [text] if predicate(text) else None
        return wait_until(shown, timeout, f"the screen to show {what}")[0]

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.server, "kill-server"], env=self.env, capture_output=True, timeout=10)


def test_dispatch_approve_and_complete_in_a_real_terminal(running_bgd, tmp_path):
    bgd = running_bgd
    env = dict(bgd.env, TERM="xterm-256color")
    env.pop("NO_COLOR", None)
    term = Tmux(env)
    try:
        term.wait_for(lambda s: s.strip(), "a shell prompt")
        term.keys(f"stty -a > {tmp_path}/before.txt; echo SAVED-BEFORE", "Enter")
        term.wait_for(lambda s: "\nSAVED-BEFORE" in s, "the tty modes saved")
        term.keys(f"cd {bgd.work} && {sys.executable} -m bgctl agents; echo EXITED=$?", "Enter", literal=False)
        term.wait_for(lambda s: "agents · 0 sessions" in s, "the view")
        assert term.flag("alternate_on") == "1"

        # Dispatch from the line; the fake agent works a second, then asks to run a tool.
        term.keys('sleep 1; tool Bash {"command":"ls"}', literal=True)
        term.keys("Enter")
        screen = term.wait_for(lambda s: "Working (1)" in s, "the session working")
        assert "backgrounded ·" in screen
        screen = term.wait_for(lambda s: "Needs input (1)" in s, "the session needing input")
        assert "wants Bash" in screen

        # The new session is selected: peek, then 1 approves.
        term.keys("Space")
        term.wait_for(lambda s: "1 approve" in s and "3 deny" in s, "the permission request in the peek")
        term.keys("1")
        screen = term.wait_for(lambda s: "Completed (1)" in s, "the session completed")
        assert "✓ sleep 1; tool Bas" in screen and "allowed Bash" in screen and "Needs input" not in screen

        # The daemon goes away and comes back: the view says so, and carries on.
        bgd.stop()
        term.wait_for(lambda s: "daemon unreachable — reconnecting…" in s, "the unreachable banner")
        bgd.start()
        term.wait_for(lambda s: "daemon unreachable" not in s and "Completed (1)" in s, "the view reconnected")

        # q quits and gives the terminal back as it was.
        term.keys("q")
        term.wait_for(lambda s: "EXITED=0" in s, "the view exiting with 0")
        assert term.flag("alternate_on") == "0"
        assert term.flag("mouse_any_flag") == "0"
        assert term.flag("cursor_flag") == "1"
        term.keys(f"stty -a > {tmp_path}/after.txt; echo SAVED-AFTER", "Enter")
        term.wait_for(lambda s: "\nSAVED-AFTER" in s, "the tty modes saved")
        after = (tmp_path / "after.txt").read_text()
        assert after == (tmp_path / "before.txt").read_text()      # every tty mode as it was
        assert " icanon " in after and " echo " in after
    finally:
        term.kill()
