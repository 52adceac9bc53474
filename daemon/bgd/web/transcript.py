"""A transcript as the session page shows it (SPEC §13): entries -> items.

Pure.  Each stored entry (docs/protocol.md, "Transcript entries") becomes zero or
more items: a person's prompt, assistant text (Markdown, rendered here with raw
HTML disabled), a tool call (folded, with its input, and its result once it
comes), a note, an error.  A tool result arrives in a later entry than its call;
`pair` joins them for a whole page, and a live page gets the result swapped into
the call's slot by id.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from markdown_it import MarkdownIt

RESULT_LIMIT = 20_000   # characters of a tool result shown on the page
INPUT_LIMIT = 20_000    # characters of a tool input shown

# CommonMark with tables and strikethrough; raw HTML off, so an agent's "<script>" is text.
# markdown-it's own link check refuses javascript:, vbscript:, file: and data: links.
_md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}) \
    .enable("table").enable("strikethrough")


def markdown(text: str) -> str:
    return _md.render(text)


def dom_id(value: Any) -> str:
    """A value safe inside an HTML id and a CSS `#id` selector (tool ids come from the agent)."""
    text = str(value)
    if re.fullmatch(r"[A-Za-z0-9_-]{1,80}", text):
        return text
    return "h" + hashlib.sha256(text.encode()).hexdigest()[:20]


@dataclass
class Item:
    kind: str                  # user | text | tool | result | note | output | raw | truncated
    text: str = ""             # plain text (escaped when drawn), or HTML for "text"
    level: str = "muted"       # note: muted | ok | error
    tool_id: str = ""          # tool and result: the slot's dom id
    name: str = ""             # tool: its name
    summary: str = ""          # tool: one line of its input
    input: str = ""            # tool: the whole input, as indented JSON
    result: "Item | None" = None
    is_error: bool = False
    extra: dict = field(default_factory=dict)


def items(entry: dict) -> list[Item]:
    kind, data = entry.get("kind"), entry.get("data")
    if not isinstance(data, dict):
        return []
    if data.get("truncated"):
        return [Item("truncated", f"{data.get('bytes', '?')} bytes, too large to show here "
                                  f"(`bgctl logs --json` has it whole)")]
    if kind == "user":
        return [Item("user", str(data.get("text", "")))]
    if kind == "output":
        return [Item("output", str(data.get("text", "")))]
    if kind == "raw":
        return [Item("raw", str(data.get("text", "")), level="error")]
    if kind == "control":
        return [_control(data)]
    if kind == "daemon":
        if data.get("error"):
            return [Item("note", str(data["error"]), level="error")]
        text = str(data.get("event", "")) + (f": {data['detail']}" if data.get("detail") else "")
        return [Item("note", text)] if text else []
    if kind == "agent":
        return _agent(data)
    if kind == "assistant":      # an ACP agent's message, its chunks coalesced
        text = str(data.get("text", ""))
        return [Item("text", markdown(text))] if text.strip() else []
    if kind == "thought":
        text = str(data.get("text", ""))
        return [Item("thought", text)] if text.strip() else []
    if kind == "tool":
        return [_acp_tool(data)]
    if kind == "plan":
        steps = [{"content": str(e.get("content", "")), "status": str(e.get("status") or "pending")}
                 for e in data.get("entries") or [] if isinstance(e, dict)]
        return [Item("plan", extra={"steps": steps})] if steps else []
    return []


def _acp_tool(data: dict) -> Item:
    """An ACP tool call (pending, in progress) opens a slot; its end (completed, failed) fills it."""
    tool_id = dom_id(data.get("id", ""))
    title = str(data.get("title") or data.get("tool_kind") or "tool")
    status = str(data.get("status") or "pending")
    if status in ("completed", "failed") or data.get("output") is not None:
        output = data.get("output") if data.get("output") is not None else data.get("text", "")
        text = output if isinstance(output, str) else json.dumps(output, indent=2, ensure_ascii=False)
        return Item("result", _clip(text, RESULT_LIMIT), tool_id=tool_id, name=title, is_error=status == "failed",
                    level="error" if status == "failed" else "muted")
    tool_input = data.get("input")
    try:
        whole = json.dumps(tool_input, indent=2, ensure_ascii=False) if tool_input is not None else ""
    except (TypeError, ValueError):
        whole = str(tool_input)
    return Item("tool", tool_id=tool_id, name=title, summary=_summary(tool_input) or status,
                input=_clip(whole, INPUT_LIMIT))


def _control(data: dict) -> Item:
    tool = data.get("tool_name") or "the tool"
    if data.get("decision") == "allow":
        if data.get("answer"):
            return Item("note", f"answered {tool}: {data['answer']}", level="ok")
        how = " (always)" if data.get("always") or data.get("rule") == "always" else ""
        return Item("note", f"allowed {tool}{how}", level="ok")
    return Item("note", f"denied {tool}" + (f": {data['message']}" if data.get("message") else ""), level="error")


def _agent(obj: dict) -> list[Item]:
    kind = obj.get("type")
    if kind == "system" and obj.get("subtype") == "init":
        return [Item("note", f"agent started ({obj.get('model', '?')})")]
    if kind == "assistant":
        out = []
        for block in (obj.get("message") or {}).get("content") or []:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text" and str(block.get("text", "")).strip():
                out.append(Item("text", markdown(str(block["text"]))))
            elif block.get("type") == "tool_use":
                out.append(_tool(block))
        return out
    if kind == "user":
        out = []
        for block in (obj.get("message") or {}).get("content") or []:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                out.append(Item("result", _clip(_result_text(block.get("content")), RESULT_LIMIT),
                                tool_id=dom_id(block.get("tool_use_id", "")), is_error=bool(block.get("is_error")),
                                level="error" if block.get("is_error") else "muted"))
        return out
    if kind == "result":
        cost = obj.get("total_cost_usd")
        cost_text = f" · ${cost:.4f}" if isinstance(cost, (int, float)) and not isinstance(cost, bool) else ""
        if obj.get("is_error"):
            reason = obj.get("result") or obj.get("subtype") or "error"
            return [Item("note", f"turn failed: {reason}{cost_text}", level="error")]
        return [Item("note", f"turn done{cost_text}", level="ok")]
    return []


def _tool(block: dict) -> Item:
    tool_input = block.get("input")
    try:
        whole = json.dumps(tool_input, indent=2, ensure_ascii=False)
    except (TypeError, ValueError):
        whole = str(tool_input)
    return Item("tool", tool_id=dom_id(block.get("id", "")), name=str(block.get("name") or "tool"),
                summary=_summary(tool_input), input=_clip(whole, INPUT_LIMIT))


def _summary(tool_input: Any) -> str:
    """One line of a tool's input: the command, the file, or its first string."""
    if isinstance(tool_input, dict):
        for key in ("command", "file_path", "path", "pattern", "url", "query", "description", "prompt"):
            if isinstance(tool_input.get(key), str):
                return _one_line(tool_input[key])
        for value in tool_input.values():
            if isinstance(value, str):
                return _one_line(value)
        if isinstance(tool_input.get("questions"), list) and tool_input["questions"]:
            question = tool_input["questions"][0]
            if isinstance(question, dict):
                return _one_line(str(question.get("question", "")))
    return ""


def _result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                parts.append(str(part.get("text", "")))
            elif isinstance(part, dict):
                parts.append(f"[{part.get('type', 'content')}]")
        return "\n".join(parts)
    return "" if content is None else json.dumps(content, ensure_ascii=False)


def _one_line(text: str, limit: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"\n… ({len(text) - limit} more characters)"


def pair(entries: list[dict]) -> list[tuple[dict, list[Item]]]:
    """Every entry with its items, each tool call holding its result; results so placed are dropped."""
    return pair_items([(entry, items(entry)) for entry in entries])


def pair_items(rows: list[tuple[dict, list[Item]]]) -> list[tuple[dict, list[Item]]]:
    """`pair` for entries whose items are made already."""
    calls = {item.tool_id: item for _, row in rows for item in row if item.kind == "tool"}
    out = []
    for entry, row in rows:
        kept = []
        for item in row:
            if item.kind == "result" and item.tool_id in calls and calls[item.tool_id].result is None:
                calls[item.tool_id].result = item
            else:
                kept.append(item)
        out.append((entry, kept))
    return out


# -- the pending request --------------------------------------------------------------------------

def questions(pending: dict) -> list[dict]:
    """The questions of an AskUserQuestion request: [{"question", "options": [{"label", "description"}]}]."""
    found = []
    tool_input = pending.get("input") if isinstance(pending, dict) else None
    listed = tool_input.get("questions") if isinstance(tool_input, dict) else None
    for question in listed if isinstance(listed, list) else []:
        if not isinstance(question, dict):
            continue
        options = [{"label": str(o.get("label", "")), "description": str(o.get("description") or "")}
                   for o in question.get("options") or [] if isinstance(o, dict) and o.get("label")]
        found.append({"question": str(question.get("question", "")), "header": str(question.get("header") or ""),
                      "options": options})
    return found


def pending_input(pending: dict) -> str:
    try:
        return _clip(json.dumps(pending.get("input"), indent=2, ensure_ascii=False), INPUT_LIMIT)
    except (TypeError, ValueError):
        return str(pending.get("input"))
