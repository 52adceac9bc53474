"""What tasks.toml and routines.toml share: finding where things are in the text (tomllib gives no
positions), and splicing one definition's sections without touching the rest of the file.

Pure text functions; the files' own modules (tasks_file, routines_file) hold their rules.
"""

from __future__ import annotations

import re
import tomllib
from bisect import bisect_right

__all__ = ["ANY_HEADER_RE", "KEY_RE", "LineIndex", "decode_error", "find_top_key", "keys_in", "section_span",
           "with_comments_above"]

ANY_HEADER_RE = re.compile(r"^[ \t]*\[", re.M)
KEY_RE = re.compile(r'^[ \t]*("?)([A-Za-z0-9_-]+)\1[ \t]*=[ \t]*', re.M)


class LineIndex:
    """Offsets to (line, column), both from 1, by one scan for newlines done on first use."""

    def __init__(self, text: str):
        self.text = text
        self._starts: list[int] | None = None

    def line_col(self, offset: int) -> tuple[int, int]:
        if self._starts is None:
            self._starts = [0] + [m.end() for m in re.finditer("\n", self.text)]
        i = bisect_right(self._starts, offset) - 1
        return i + 1, offset - self._starts[i] + 1


def section_span(text: str, header_offset: int) -> tuple[int, int]:
    """[start, end) of the section whose header line starts at `header_offset`: up to the next header
    (or the end of the file), leaving the comments and blank lines after its last key to what follows."""
    line_end = text.find("\n", header_offset)
    nxt = ANY_HEADER_RE.search(text, line_end + 1) if line_end >= 0 else None
    end = nxt.start() if nxt else len(text)
    while line_end >= 0:
        prev = text.rfind("\n", header_offset, end - 1)
        if prev < 0 or prev < line_end:
            break
        line = text[prev + 1:end].strip()
        if line and not line.startswith("#"):
            break
        end = prev + 1
    return header_offset, end


def with_comments_above(text: str, start: int) -> int:
    """`start` moved up over the comment lines right above it (they belong to what follows)."""
    while start > 0:
        prev = text.rfind("\n", 0, start - 1) + 1
        if not text[prev:start].lstrip().startswith("#"):
            break
        start = prev
    return start


def keys_in(text: str, start: int, end: int) -> dict[str, int]:
    """Offsets of the values of the plain keys in text[start:end] (first occurrence of each)."""
    found: dict[str, int] = {}
    for m in KEY_RE.finditer(text, start, end):
        found.setdefault(m.group(2), m.end())
    return found


def decode_error(exc: tomllib.TOMLDecodeError, text: str) -> tuple[int | None, int | None, str]:
    """tomllib's error as (line, column, message without the position)."""
    message = str(exc)
    m = re.search(r"\(at line (\d+), column (\d+)\)", message)
    if m:
        return int(m[1]), int(m[2]), message[:m.start()].strip()
    if "end of document" in message:
        return text.count("\n") + 1, None, message
    return None, None, message


def find_top_key(text: str, key: str) -> tuple[int | None, int | None]:
    """Where a top-level key or table named `key` is first written."""
    m = re.search(rf'^[ \t]*\[*[ \t]*"?{re.escape(key)}\b', text, re.M)
    if not m:
        return None, None
    line = text.count("\n", 0, m.start()) + 1
    return line, m.start() - (text.rfind("\n", 0, m.start()) + 1) + 1
