"""Edits of routines.toml that keep a person's layout: `bgctl routine add/edit/rm/pause/resume` and a
one-off schedule disabling itself.

Pure text in, text out. An edit finds the routine's own sections (routines_layout), lets tomlkit
re-render only what changes — each table in its own section, so the blank lines and comments after it
stay where they are — and splices the result back; every other byte of the file is kept. A trigger
that goes takes the comment lines right above it along. An unusual layout (a routine's tables
interleaved with another's, triggers written inline) falls back to a full tomlkit parse of the file.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from typing import Any, Callable

from .definitions import section_span, with_comments_above
from .routines_layout import Positions, Section, find_block

__all__ = ["add_routine_text", "edit_routine_text", "find_block", "has_routine", "remove_routine_text",
           "set_trigger_enabled_text"]

_TOP_ORDER = ("description", "prompt", "prompt_file", "repos", "agent", "model", "push", "timeout", "overlap",
              "enabled", "timezone")


def _item(value: Any):
    """A TOML value for tomlkit: tables inside values (filters, repos) written inline."""
    import tomlkit
    if isinstance(value, dict):
        table = tomlkit.inline_table()
        for k, v in value.items():
            table[k] = _item(v)
        return table
    if isinstance(value, (list, tuple)):
        array = tomlkit.array()
        for v in value:
            array.append(_item(v))
        return array
    return value


def _trigger_table(trigger: dict, appended: bool = False):
    import tomlkit
    table = tomlkit.table()
    if appended:  # a blank line above it, as between the others
        table.trivia.indent = "\n"
    for key, value in trigger.items():
        if value is not None:
            table[key] = _item(value)
    return table


def _render(name: str, fields: dict[str, Any]) -> str:
    import tomlkit
    table = tomlkit.table()
    for key in _TOP_ORDER:
        if fields.get(key) is not None:
            table.add(key, _item(fields[key]))
    for sub in ("environment", "connectors"):
        values = {k: v for k, v in (fields.get(sub) or {}).items() if v is not None}
        if values:
            inner = tomlkit.table()
            for k, v in values.items():
                inner.add(k, _item(v))
            table.add(sub, inner)
    if fields.get("triggers"):
        aot = tomlkit.aot()
        for trigger in fields["triggers"]:
            aot.append(_trigger_table(trigger))
        table.add("triggers", aot)
    routines = tomlkit.table(is_super_table=True)
    routines.add(name, table)
    doc = tomlkit.document()
    doc.add("routines", routines)
    return tomlkit.dumps(doc)


def has_routine(text: str, name: str) -> bool:
    if name in Positions(text).sections:
        return True
    try:
        return name in tomllib.loads(text).get("routines", {})
    except (tomllib.TOMLDecodeError, AttributeError):
        return False


def add_routine_text(text: str, name: str, fields: dict[str, Any]) -> str:
    """`text` with a new routine at the end; the rest of the file untouched."""
    block = _render(name, fields)
    if not text.strip():
        return block
    return text.rstrip("\n") + "\n\n" + block


def _edit(text: str, name: str, apply: Callable[[Any], None]) -> str:
    """Apply `apply` to the routine's table, parsing only its block when it stands together."""
    import tomlkit
    span = find_block(text, name)
    if span is None:
        doc = tomlkit.parse(text)  # an unusual layout: the slow, general way
        apply(doc["routines"][name])
        return tomlkit.dumps(doc)
    start, end = span
    doc = tomlkit.parse(text[start:end])
    apply(doc["routines"][name])
    block = tomlkit.dumps(doc)
    if end < len(text) and not block.endswith("\n"):
        block += "\n"
    return text[:start] + block + text[end:]


def _edit_section(text: str, name: str, sub: str, index: int | None, apply: Callable[[Any], None]) -> str | None:
    """Apply `apply` to one section of the routine (its main table, a sub-table, or its `index`-th
    trigger), parsing that section alone so that the comments and blank lines after it stay where
    they are. None when the section is not written as its own table."""
    import tomlkit
    section = Positions(text).section(name, sub, index)
    if section is None or (index is None and section.array):
        return None
    start, end = section_span(text, section.offset)
    doc = tomlkit.parse(text[start:end])
    table = doc["routines"][name]
    for part in sub.split(".") if sub else ():
        table = table[part]
    if index is not None:
        table = table[0]
    apply(table)
    piece = tomlkit.dumps(doc)
    if end < len(text) and not piece.endswith("\n"):
        piece += "\n"
    return text[:start] + piece + text[end:]


def edit_routine_text(text: str, name: str, changes: dict[str, Any]) -> str:
    """Set (or, for None, delete) fields of routine `name`, keeping its comments and layout.

    `changes` has the file's shape: top-level fields, `environment` and `connectors` as tables of
    changes, `triggers` as the whole new list (triggers that stay are left as written; a trigger that
    goes takes the comment lines right above it along). Each table is edited in its own section, so
    what follows it (blank lines, the comment above the next table) stays put."""
    import tomlkit

    changes = dict(changes)
    new_triggers = changes.pop("triggers") if "triggers" in changes else _UNCHANGED
    if new_triggers is not _UNCHANGED:
        text, new_triggers = _drop_triggers(text, name, list(new_triggers or []))
    top = {k: v for k, v in changes.items() if k not in ("environment", "connectors")}

    def set_keys(values: dict) -> Callable[[Any], None]:
        def apply(table) -> None:
            for key, value in values.items():
                if value is None:
                    if key in table:
                        del table[key]
                else:
                    table[key] = _item(value)
        return apply

    if top:
        edited = _edit_section(text, name, "", None, set_keys(top))
        text = edited if edited is not None else _edit(text, name, set_keys(top))
    for sub in ("environment", "connectors"):
        if sub not in changes:
            continue
        values = changes[sub]
        section = Positions(text).section(name, sub)
        current = _current_table(text, name, sub)
        remaining = {k: v for k, v in (current or {}).items() if not (values is None or (k in values and values[k] is None))}
        remaining.update({k: v for k, v in (values or {}).items() if v is not None})
        if not remaining:
            if current is not None:
                text = _remove_sub(text, name, sub, section)
            continue
        if section is not None:
            edited = _edit_section(text, name, sub, None, set_keys(values or {}))
            if edited is not None:
                text = edited
                continue

        def add(table, sub=sub, remaining=remaining) -> None:
            if sub in table:
                del table[sub]
            inner = tomlkit.table()
            for k, v in remaining.items():
                inner.add(k, _item(v))
            table[sub] = inner

        text = _edit(text, name, add)
    if new_triggers is not _UNCHANGED:
        text = _edit(text, name, lambda table: _replace_triggers(table, new_triggers))
    return text


def _current_table(text: str, name: str, sub: str) -> dict | None:
    try:
        value = tomllib.loads(text)["routines"][name].get(sub)
    except (tomllib.TOMLDecodeError, KeyError, AttributeError):
        return None
    return value if isinstance(value, dict) else None


def _remove_sub(text: str, name: str, sub: str, section: "Section | None") -> str:
    """Remove a sub-table that has nothing left (its section with the comments above it)."""
    if section is None:
        return _edit(text, name, lambda table: table.pop(sub, None))
    start, end = section_span(text, section.offset)
    start = with_comments_above(text, start)
    if start > 0 and text[start - 2:start] == "\n\n" and (text[end:end + 1] == "\n" or end == len(text)):
        start -= 1
    return text[:start] + text[end:]


_UNCHANGED = object()


def _drop_triggers(text: str, name: str, new: list[dict]) -> tuple[str, Any]:
    """Cut the trigger sections that `new` no longer has out of the text (with their comments); return
    the text and what is left to do: the triggers to add, or the whole list when the layout is unusual."""
    span = find_block(text, name)
    if span is None:
        return text, new
    start, end = span
    block = text[start:end]
    try:
        old = tomllib.loads(block)["routines"][name].get("triggers", [])
    except (tomllib.TOMLDecodeError, KeyError, AttributeError):
        return text, new
    pos = Positions(block)
    arrays = [s for s in pos.sections.get(name, []) if s.sub == "triggers" and s.array]
    if len(arrays) != len(old):  # written inline (`triggers = [...]`): rewrite the list
        return text, new
    remaining = list(new)
    drop = []
    for i, trigger in enumerate(old):
        if trigger in remaining:
            remaining.remove(trigger)
        else:
            drop.append(i)
    sections = pos.sections[name]
    for i in reversed(drop):
        section = arrays[i]
        k = sections.index(section)
        cut_start = with_comments_above(block, section.offset)
        last = section
        for later in sections[k + 1:]:  # sub-tables of this trigger ([routines.x.triggers.title])
            if later.sub.startswith("triggers.") and not later.array:
                last = later
            else:
                break
        _, cut_end = section_span(block, last.offset)
        if cut_start > 0 and block[cut_start - 2:cut_start] == "\n\n" and (
                block[cut_end:cut_end + 1] == "\n" or cut_end == len(block)):
            cut_start -= 1
        block = block[:cut_start] + block[cut_end:]
    return text[:start] + block + text[end:], _Append(remaining)


@dataclass
class _Append:
    triggers: list[dict]


def _replace_triggers(table, new: "list[dict] | _Append") -> None:
    import tomlkit
    if isinstance(new, _Append):
        if not new.triggers:
            return
        old = table.get("triggers")
        if old is None:
            aot = tomlkit.aot()
            for trigger in new.triggers:
                aot.append(_trigger_table(trigger))
            table["triggers"] = aot
        else:
            for trigger in new.triggers:
                old.append(_trigger_table(trigger, appended=len(old) > 0))
        return
    if "triggers" in table:
        del table["triggers"]
    if new:
        aot = tomlkit.aot()
        for trigger in new:
            aot.append(_trigger_table(trigger))
        table["triggers"] = aot


def set_trigger_enabled_text(text: str, name: str, index: int, enabled: bool) -> str:
    """Write `enabled = false` (or remove it, for true) in the routine's `index`-th trigger."""
    def apply(trigger) -> None:
        if enabled:
            if "enabled" in trigger:
                del trigger["enabled"]
        else:
            trigger["enabled"] = False

    edited = _edit_section(text, name, "triggers", index, apply)
    if edited is not None:
        return edited
    return _edit(text, name, lambda table: apply(table["triggers"][index]))


def remove_routine_text(text: str, name: str) -> str:
    import tomlkit
    span = find_block(text, name)
    if span is None:
        doc = tomlkit.parse(text)
        del doc["routines"][name]
        return tomlkit.dumps(doc)
    start, end = span
    start = with_comments_above(text, start)
    rest = text[end:]
    head = text[:start]
    if head.endswith("\n\n") and (rest.startswith("\n") or not rest):
        head = head[:-1]
    return head + rest
