"""What a bare loop says (SPEC §6): loop.md, else the built-in maintenance prompt.

`.claude/loop.md` in the session's directory wins over `~/.claude/loop.md`. The file is read afresh
before every iteration, so an edit reaches the next one; past 25,000 bytes it is cut (at a character
boundary). A file that is not UTF-8 is refused with a message that names it: rather than guess at
its bytes, the daemon tells the person what to fix.
"""

from __future__ import annotations

import os
from pathlib import Path

MAX_BYTES = 25_000
BUILTIN = "built-in"

MAINTENANCE_PROMPT = """\
This is a scheduled maintenance pass on this repository; nobody is watching it live.

1. Finish what is unfinished. If this conversation left work half done, carry it on to a sensible
   stopping point.
2. Look after the pull request of the current branch, if there is one: answer or address new review
   comments, find out why failing checks fail and fix what is ours to fix, and resolve merge conflicts.
3. With what time is left, do cleanup passes: hunt for bugs in the code touched recently, tighten tests,
   remove dead code you are sure is dead.

Start nothing new: no new features, no new branches of work nobody asked for. Do nothing irreversible
(pushing, force-pushing, deleting branches or files outside your own scratch work, closing or merging
anything) unless this conversation has already authorised exactly that. When there is nothing worth
doing, say so in one line and stop.
"""


class LoopPromptError(ValueError):
    """loop.md exists but cannot be used; str() is one line that says what to do."""


def loop_md_paths(cwd: str, home: str | None) -> list[Path]:
    paths = [Path(cwd) / ".claude" / "loop.md"]
    if home:
        paths.append(Path(home) / ".claude" / "loop.md")
    return paths


def read_loop_md(path: Path) -> str:
    """The file's text, cut past MAX_BYTES; LoopPromptError when it is not UTF-8 or unreadable."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES)
    except OSError as exc:
        raise LoopPromptError(f"cannot read {path}: {exc.strerror or exc}; fix its permissions or remove it") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # The cut may split one character: drop that partial character, nothing else.
        if len(data) == MAX_BYTES and exc.start >= MAX_BYTES - 3 and exc.reason == "unexpected end of data":
            return data[:exc.start].decode("utf-8")
        raise LoopPromptError(f"{path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 "
                              f"or remove it to use the built-in prompt") from None


def bare_prompt(cwd: str, home: str | None = None) -> tuple[str, str]:
    """(prompt, where it came from: a loop.md path or "built-in") for a loop without a prompt.
    A loop.md with nothing but whitespace counts as absent."""
    if home is None:
        home = os.environ.get("HOME")
    for path in loop_md_paths(cwd, home):
        if path.is_file():
            text = read_loop_md(path)
            if text.strip():
                return text, str(path)
    return MAINTENANCE_PROMPT, BUILTIN
