"""Text forms of sessions, transcripts and events for a terminal."""

from __future__ import annotations

import json

STATE_MARKS = {"working": "●", "needs_input": "?", "sleeping": "◌", "completed": "✓", "failed": "✗", "stopped": "■"}


def age(iso: str | None, now: datetime | None = None) -> str:
    if not iso:
        return "-"
    from datetime import datetime, timezone  # here: `bgctl ls --json` needs no datetime

    then = datetime.fromisoformat(iso)
    seconds = max(0, int(((now or datetime.now(timezone.utc)) - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def title(session: dict, width: int = 40) -> str:
    text = session.get("name") or session.get("prompt") or ""
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


# A routine's run is green only when its agent reported it done (SPEC §8: status is not outcome).
OUTCOME_MARKS = {"done": "✓", "nothing_to_do": "–", "failed": "✗", "needs_attention": "!", "unreported": "?"}


def state_cell(s: dict) -> str:
    """The state column: a routine session's outcome beside its state, marked by the outcome."""
    state = s["state"] + (f" ({s['waiting_for']})" if s.get("waiting_for") else "")
    outcome = s.get("outcome")
    if outcome is None or (outcome == "unreported" and s["state"] in ("working", "needs_input", "sleeping")):
        return f"{STATE_MARKS.get(s['state'], ' ')} {state}"
    mark = STATE_MARKS.get(s["state"], " ") if s["state"] not in ("completed",) else OUTCOME_MARKS.get(outcome, "?")
    return f"{mark} {state} · {outcome.replace('_', ' ')}"


def session_table(sessions: list[dict]) -> str:
    if not sessions:
        return "no sessions"
    rows = [("ID", "STATE", "WHERE", "NAME", "AGE", "COST", "DIR", "LAST")]
    for s in sessions:
        rows.append((s["id"], state_cell(s), where_cell(s), title(s, 30), age(s["created_at"]),
                     cost(s), _short_dir(s["cwd"]), one_line(s.get("error") or s.get("last_message") or "", 50)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r[:-1])) + "  " + r[-1] for r in rows)


def where_cell(s: dict) -> str:
    """Where a session's process runs: "here", or on the cluster (with its worker once one took it)."""
    if s.get("where", "local") == "local":
        return "here"
    return f"{s['where']}:{s['worker']}" if s.get("worker") else s["where"]


def session_detail(s: dict) -> str:
    lines = [f"{s['id']}  {state_cell(s)}"]
    for key in ("name", "cwd", "agent", "origin", "permission_mode", "model", "agent_session_id", "created_at",
                "updated_at", "pid", "turns", "next_wake_at", "loop_runs"):
        if s.get(key) not in (None, ""):
            lines.append(f"  {key + ':':18}{s[key]}")
    lines.append(f"  {'runs:':18}{where_cell(s)}")
    lines.append(f"  {'cost:':18}{cost(s, 4)}")
    if s.get("usage"):
        lines.append(f"  {'usage:':18}" + ", ".join(f"{k} {v}" for k, v in s["usage"].items()))
    lines.append(f"  {'pinned:':18}{'yes' if s.get('pinned') else 'no'}")
    lines.append(f"  {'prompt:':18}{one_line(s.get('prompt') or '', 100)}")
    if s.get("last_message"):
        lines.append(f"  {'last message:':18}{s['last_message']}")
    if s.get("error"):
        lines.append(f"  {'error:':18}{s['error']}")
    pending = s.get("pending")
    if pending:
        lines.append("")
        lines.append(pending_text(s["id"], pending))
    return "\n".join(lines)


def cost(s: dict, digits: int = 2) -> str:
    """The session's cost; "unknown" when its agent reports none (never a made-up $0.00)."""
    value = s.get("cost_usd")
    return f"${value:.{digits}f}" if isinstance(value, (int, float)) else "unknown"


def pending_text(session_id: str, pending: dict) -> str:
    if pending.get("kind") == "question":
        questions = [q.get("question", "") for q in pending.get("input", {}).get("questions", []) if isinstance(q, dict)]
        text = "; ".join(questions) or json.dumps(pending.get("input"))
        return f"  waiting for an answer: {text}\n  answer with: bgctl reply {session_id} TEXT"
    text = f"  waiting for permission: {pending.get('tool_name')} {one_line(json.dumps(pending.get('input')), 120)}\n"
    if pending.get("options"):   # the agent's own choices (ACP); approve/deny pick among them by kind
        text += "  the agent offers: " + " · ".join(f"{o.get('name')} ({o.get('kind')})" for o in pending["options"]) + "\n"
    return text + f"  decide with: bgctl approve {session_id} [--always]  |  bgctl deny {session_id} [--message TEXT]"


def transcript_entry(entry: dict) -> str | None:
    kind, data = entry["kind"], entry["data"]
    if data.get("truncated") and kind != "raw":
        return f"· ({data.get('bytes')} bytes, truncated; `bgctl rpc session.transcript` with full=true has it)"
    if kind == "user":
        return f"› {data.get('text', '')}"
    if kind == "output":
        return data.get("text", "")
    if kind == "raw":
        return f"! {one_line(data.get('text', ''), 200)}"
    if kind == "control":
        if data.get("decision") == "allow" and data.get("rule") == "auto":
            answered = f" (answered: {data['answer']})" if data.get("answer") else ""
            return f"✓ auto-allowed {data.get('tool_name')}{answered} (nobody is watching this run)"
        if data.get("decision") == "allow":
            extra = f" ({data['answer']})" if data.get("answer") else (" (always)" if data.get("always") else "")
            return f"✓ allowed {data.get('tool_name')}{extra}"
        return f"✗ denied {data.get('tool_name')}" + (f": {data['message']}" if data.get("message") else "")
    if kind == "daemon":
        if data.get("error"):
            return f"✗ {data['error']}"
        return f"· {data.get('event', '')}" + (f": {data['detail']}" if data.get("detail") else "")
    if kind == "agent":
        return _agent_line(data)
    if kind == "assistant":      # an ACP agent's message (its chunks coalesced)
        return data.get("text", "").strip() or None
    if kind == "thought":
        return f"… {one_line(data.get('text', ''), 200)}"
    if kind == "tool":
        mark = TOOL_MARKS.get(data.get("status"), "⚙")
        line = f"{mark} {data.get('title', 'tool')} [{data.get('status', '?')}]"
        if data.get("input") and data.get("status") == "pending":
            line += " " + one_line(json.dumps(data["input"]), 100)
        if data.get("text") and data.get("status") in ("completed", "failed"):
            line += f"\n  ↳ {one_line(data['text'], 120)}"
        return line
    if kind == "plan":
        marks = {"completed": "✓", "in_progress": "●", "pending": "○"}
        items = [f"  {marks.get(e.get('status'), '○')} {one_line(e.get('content', ''), 100)}"
                 for e in data.get("entries") or [] if isinstance(e, dict)]
        return "\n".join(["· plan"] + items)
    if kind == "acp":            # other ACP traffic, kept for the record
        return None
    return f"· {kind}"


TOOL_MARKS = {"pending": "?", "in_progress": "⚙", "completed": "✓", "failed": "✗"}


def _agent_line(obj: dict) -> str | None:
    kind = obj.get("type")
    if obj.get("truncated"):
        return f"· ({obj.get('bytes')} bytes, truncated; `bgctl rpc session.transcript` with full=true has it)"
    if kind == "system" and obj.get("subtype") == "init":
        return f"· agent started ({obj.get('model', '?')})"
    if kind == "assistant":
        parts = []
        for block in (obj.get("message") or {}).get("content") or []:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text":
                parts.append(block.get("text", ""))
            elif block.get("type") == "tool_use":
                parts.append(f"⚙ {block.get('name')} {one_line(json.dumps(block.get('input')), 100)}")
        return "\n".join(parts) or None
    if kind == "user":
        for block in (obj.get("message") or {}).get("content") or []:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                content = block.get("content")
                if isinstance(content, list):
                    content = " ".join(c.get("text", "") for c in content if isinstance(c, dict))
                return f"  ↳ {one_line(str(content), 120)}"
        return None
    if kind == "control_request":
        request = obj.get("request") or {}
        if request.get("subtype") == "can_use_tool":
            return f"? {request.get('tool_name')} wants {one_line(json.dumps(request.get('input')), 100)}"
        return None
    if kind == "result":
        cost = obj.get("total_cost_usd")
        cost_text = f" · ${cost:.4f}" if isinstance(cost, (int, float)) else ""
        if obj.get("is_error"):
            return f"✗ turn failed: {one_line(str(obj.get('result') or obj.get('subtype')), 200)}{cost_text}"
        return f"✓ turn done{cost_text}"
    return None


def event_line(event: dict) -> str:
    kind = event.get("type", "")
    head = f"{event.get('seq')} {event.get('ts', '')[11:19]} {kind}"
    if kind == "session.updated" or kind == "session.created":
        s = event["session"]
        detail = s["state"] + (f" ({s['waiting_for']})" if s.get("waiting_for") else "")
        return f"{head} {s['id']} {detail}"
    if kind == "session.transcript":
        text = transcript_entry(event["entry"]) or ""
        return f"{head} {event.get('id')} {one_line(text, 100)}"
    rest = {k: v for k, v in event.items() if k not in ("seq", "ts", "type")}
    return f"{head} {one_line(json.dumps(rest), 120)}"


def one_line(text: str, limit: int = 80) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _short_dir(path: str) -> str:
    import os
    home = os.path.expanduser("~")
    if path.startswith(home + "/"):
        path = "~" + path[len(home):]
    return path if len(path) <= 30 else "…" + path[-29:]


def dumps(value) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)
