"""Where a routine's sections are in routines.toml's text (tomllib gives no positions): its
`[routines.NAME]` table, its sub-tables, its `[[routines.NAME.triggers]]`, each key's line and column,
and the span of the whole routine when its sections stand together. Pure text functions, used by
routines_file (errors with line and column) and routines_edit (splicing one routine).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .definitions import ANY_HEADER_RE, LineIndex, find_top_key, keys_in, section_span

__all__ = ["Positions", "Section", "find_block"]

_NAME = r'(?:"([^"\n]*)"|\'([^\'\n]*)\'|([A-Za-z0-9_-]+))'
_HEADER_RE = re.compile(rf'^[ \t]*(\[\[?)[ \t]*routines[ \t]*\.[ \t]*{_NAME}[ \t]*((?:\.[^\]\n]*)?)\]', re.M)

@dataclass
class Section:
    offset: int
    sub: str            # "" for [routines.NAME], else the rest of the path ("environment", "triggers", ...)
    array: bool


class Positions:
    """Where each routine's sections and keys are, found by one scan of the text."""

    def __init__(self, text: str):
        self.text = text
        self.index = LineIndex(text)
        self.sections: dict[str, list[Section]] = {}
        for m in _HEADER_RE.finditer(text):
            name = next(g for g in m.group(2, 3, 4) if g is not None)
            sub = m.group(5).strip().lstrip(".").strip().strip('"')
            self.sections.setdefault(name, []).append(Section(m.start(), sub, m.group(1) == "[["))

    def line_col(self, offset: int) -> tuple[int, int]:
        return self.index.line_col(offset)

    def mains(self, name: str) -> list[Section]:
        return [s for s in self.sections.get(name, []) if s.sub == "" and not s.array]

    def header(self, name: str) -> tuple[int | None, int | None]:
        sections = self.mains(name) or self.sections.get(name, [])
        if sections:
            return self.line_col(sections[0].offset)
        return find_top_key(self.text, name) if name else (None, None)

    def section(self, name: str, sub: str, index: int | None = None) -> Section | None:
        found = [s for s in self.sections.get(name, []) if s.sub == sub]
        if index is not None:
            found = [s for s in found if s.array]
            return found[index] if index < len(found) else None
        return found[0] if found else None

    def key(self, name: str, key: str | None, sub: str = "", index: int | None = None) -> tuple[int | None, int | None]:
        """The line and column of `key`'s value in the routine's section `sub` (its `index`-th, for
        triggers), else of that section's header, else of the routine's."""
        section = self.section(name, sub, index)
        if section is None and sub:
            # written inline (`triggers = [...]`, `environment = {...}`): point at that key
            main = self.section(name, "")
            if main is not None:
                start, end = section_span(self.text, main.offset)
                offset = keys_in(self.text, start, end).get(sub.split(".")[0])
                if offset is not None:
                    return self.line_col(offset)
            return self.header(name)
        if section is None:
            return self.header(name)
        if key is not None:
            start, end = section_span(self.text, section.offset)
            offset = keys_in(self.text, start, end).get(key)
            if offset is not None:
                return self.line_col(offset)
        return self.line_col(section.offset)




def find_block(text: str, name: str) -> tuple[int, int] | None:
    """The span of routine `name`'s sections when they stand together (the usual layout), else None."""
    pos = Positions(text)
    sections = pos.sections.get(name)
    if not sections:
        return None
    start = sections[0].offset
    last = sections[-1].offset
    mine = {s.offset for s in sections}
    for m in ANY_HEADER_RE.finditer(text, start, last + 1):
        if m.start() not in mine:
            return None  # another table stands among this routine's sections
    _, end = section_span(text, last)
    return start, end
