"""The Agent Client Protocol (SPEC §5.5), pure: what bgd sends and what the agent's messages mean.

bgd is the ACP client.  This module builds the requests (`initialize`,
`authenticate`, `session/new`, `session/load`, `session/resume`,
`session/prompt`, `session/cancel`), reads their answers, turns the agent's
`session/update` notifications into transcript entries (`Updates`), its
`session/request_permission` into a pending decision with the agent's own
options, and a prompt's `stopReason` into how the turn ended.  No I/O: the
driver in `acp.py` moves the messages (framed by `bgcore.jsonrpc.Peer`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from bgcore.jsonrpc import RpcError

PROTOCOL_VERSION = 1
AUTH_REQUIRED = -32000          # ACP's "authentication required" error code
# bgd offers the agent no file system and no terminal: it uses its own tools (SPEC §5.5).
CLIENT_CAPABILITIES = {"fs": {"readTextFile": False, "writeTextFile": False}, "terminal": False}
MCP_SERVER_NAME = "bgagents"


class AcpError(Exception):
    """The agent cannot be used as it answered: the message is the session's one-line error."""


# -- requests ---------------------------------------------------------------------------

def initialize_params(client_version: str) -> dict:
    return {"protocolVersion": PROTOCOL_VERSION, "clientCapabilities": CLIENT_CAPABILITIES,
            "clientInfo": {"name": "bgagents", "title": "bgagents", "version": client_version}}


def authenticate_params(method_id: str) -> dict:
    return {"methodId": method_id}


def new_session_params(cwd: str, mcp_servers: list[dict]) -> dict:
    return {"cwd": cwd, "mcpServers": mcp_servers}


def load_session_params(session_id: str, cwd: str, mcp_servers: list[dict]) -> dict:
    return {"sessionId": session_id, "cwd": cwd, "mcpServers": mcp_servers}


resume_session_params = load_session_params


def prompt_params(session_id: str, text: str) -> dict:
    return {"sessionId": session_id, "prompt": [{"type": "text", "text": text}]}


def cancel_params(session_id: str) -> dict:
    return {"sessionId": session_id}


def set_mode_params(session_id: str, mode_id: str) -> dict:
    return {"sessionId": session_id, "modeId": mode_id}


def mode_to_set(result: Any, permission_mode: str) -> tuple[str | None, str | None]:
    """The session mode to ask for, so the session's permission mode applies: (mode id or None, a note or None).

    ACP agents name their own modes; bgd asks for the one whose id is the session's permission
    mode (claude-code-acp's are Claude Code's names) and says so when there is none."""
    if permission_mode == "default":
        return None, None
    modes = result.get("modes") if isinstance(result, dict) and isinstance(result.get("modes"), dict) else None
    if modes is None:
        return None, f"the agent offers no session modes, so permission mode {permission_mode!r} does not apply"
    ids = [m["id"] for m in modes.get("availableModes") or [] if isinstance(m, dict) and isinstance(m.get("id"), str)]
    current = modes.get("currentModeId")
    if permission_mode == current:
        return None, None
    if permission_mode in ids:
        return permission_mode, None
    return None, (f"the agent has no mode {permission_mode!r} (it offers {', '.join(ids) or 'none'}); "
                  f"its mode {current!r} applies")


def mcp_servers(mcp_config: str | None) -> list[dict]:
    """ACP's `mcpServers` from a Claude-style MCP config (the JSON `--mcp-config` takes).

    The daemon describes its MCP server once, in that form ({"mcpServers": {NAME:
    {command, args, env}}}); ACP wants a list with `env` as name/value pairs."""
    if not mcp_config:
        return []
    servers = json.loads(mcp_config).get("mcpServers") or {}
    return [{"name": name, "command": spec["command"], "args": [str(a) for a in spec.get("args", [])],
             "env": [{"name": k, "value": str(v)} for k, v in (spec.get("env") or {}).items()]}
            for name, spec in servers.items() if isinstance(spec, dict) and spec.get("command")]


# -- answers ----------------------------------------------------------------------------

@dataclass
class AgentInfo:
    """What `initialize` told us about the agent."""

    protocol_version: int
    name: str = "the agent"
    version: str | None = None
    load_session: bool = False
    resume_session: bool = False
    auth_methods: list[dict] = field(default_factory=list)

    @property
    def continues(self) -> str | None:
        """How this agent continues an earlier conversation: session/resume, session/load, or not at all."""
        return "session/resume" if self.resume_session else "session/load" if self.load_session else None


def read_initialize(result: Any) -> AgentInfo:
    """The agent's answer to `initialize`; AcpError when it is not one bgd can work with."""
    if not isinstance(result, dict) or not _int(result.get("protocolVersion")):
        raise AcpError(f"the agent's answer to initialize has no protocolVersion ({_short(result)}); "
                       "check that the command starts the agent in ACP mode")
    version = result["protocolVersion"]
    info = result.get("agentInfo") if isinstance(result.get("agentInfo"), dict) else {}
    name = str(info.get("title") or info.get("name") or "the agent")
    if version != PROTOCOL_VERSION:
        raise AcpError(f"{name} speaks ACP version {version}, bgd speaks version {PROTOCOL_VERSION}; "
                       "install a version of the agent that supports ACP v1")
    caps = result.get("agentCapabilities") if isinstance(result.get("agentCapabilities"), dict) else {}
    session_caps = caps.get("sessionCapabilities") if isinstance(caps.get("sessionCapabilities"), dict) else {}
    methods = [m for m in result.get("authMethods") or [] if isinstance(m, dict) and isinstance(m.get("id"), str)]
    return AgentInfo(protocol_version=version, name=name,
                     version=info.get("version") if isinstance(info.get("version"), str) else None,
                     load_session=caps.get("loadSession") is True,
                     resume_session=isinstance(session_caps.get("resume"), dict),
                     auth_methods=methods)


def read_session_id(result: Any, method: str) -> str:
    if not isinstance(result, dict) or not isinstance(result.get("sessionId"), str) or not result["sessionId"]:
        raise AcpError(f"the agent's answer to {method} has no sessionId ({_short(result)})")
    return result["sessionId"]


def refusal(method: str, error: RpcError, agent: AgentInfo | None, agent_name: str,
            auth_method: str | None = None) -> str:
    """One line for a request the agent refused: its own message first, then what to do."""
    message = error.message.strip() or f"error {error.code}"
    if isinstance(error.data, dict) and isinstance(error.data.get("details"), str):
        message += f": {error.data['details']}"
    elif isinstance(error.data, str) and error.data.strip():
        message += f": {error.data.strip()}"
    message = one_line(message, 300)
    if error.code == AUTH_REQUIRED and agent is not None:
        offered = ", ".join(f"{m['id']} ({m['name']})" if m.get("name") else m["id"] for m in agent.auth_methods)
        if auth_method:
            return (f"{message} ({method}, after authenticate with {auth_method!r}); check the credentials "
                    f"that method needs in [agents.{agent_name}] env")
        hint = f"; or set auth_method under [agents.{agent_name}] to one of: {offered}" if offered else ""
        return f"{message} ({method}); log in with the agent's own CLI first{hint}"
    return f"{message} ({method})"


# -- session/update -----------------------------------------------------------------------

@dataclass
class Entry:
    """A transcript entry to record."""

    kind: str
    data: dict


@dataclass
class Said:
    """The agent finished a message: the session's last message."""

    text: str


@dataclass
class CostReport:
    """The session's cumulative cost, as the agent reported it."""

    amount: float
    currency: str


Output = Entry | Said | CostReport

_CHUNKS = {"agent_message_chunk": "assistant", "agent_thought_chunk": "thought"}
_TOOL_UPDATES = ("tool_call", "tool_call_update")


class Updates:
    """`session/update` notifications into transcript entries.

    Chunks of one message (same kind, same messageId) are coalesced into one
    `assistant` (or `thought`) entry, written when the message ends: at a
    chunk of another message, at any other update, and at `flush()` (the
    driver flushes before a permission request and at the end of a turn).
    Tool calls and their updates become `tool` entries, each with the call's
    title and status (an update that omits them carries the last known ones);
    plans become `plan` entries; anything else is kept as an `acp` entry.
    `usage_update` reports cost, which is not a transcript entry.

    While a message streams, its beginning is reported (`Said`) as it grows, up
    to HEAD_CHARS, so the session's last message is live before the entry is
    written; the whole message is reported once more when it ends.
    """

    HEAD_CHARS = 400

    def __init__(self) -> None:
        self._kind: str | None = None
        self._message_id: str | None = None
        self._parts: list[str] = []
        self._size = 0
        self._tools: dict[str, dict] = {}

    def feed(self, params: Any) -> list[Output]:
        update = params.get("update") if isinstance(params, dict) else None
        if not isinstance(update, dict):
            return [Entry("acp", {"method": "session/update", "params": params})]
        kind = update.get("sessionUpdate")
        if kind in _CHUNKS:
            message_id = update.get("messageId") if isinstance(update.get("messageId"), str) else None
            out: list[Output] = []
            if self._parts and (_CHUNKS[kind] != self._kind or message_id != self._message_id):
                out = self.flush()
            self._kind, self._message_id = _CHUNKS[kind], message_id
            text = content_text(update.get("content"))
            self._parts.append(text)
            if self._kind == "assistant" and self._size < self.HEAD_CHARS and text.strip():
                out.append(Said("".join(self._parts)))
            self._size += len(text)
            return out
        out = self.flush()
        if kind in _TOOL_UPDATES:
            out.append(Entry("tool", self._tool(update)))
        elif kind == "plan":
            entries = update.get("entries") if isinstance(update.get("entries"), list) else []
            out.append(Entry("plan", {"entries": entries}))
        elif kind == "usage_update":
            cost = update.get("cost")
            if isinstance(cost, dict) and _number(cost.get("amount")) and isinstance(cost.get("currency"), str):
                out.append(CostReport(float(cost["amount"]), cost["currency"]))
        else:
            out.append(Entry("acp", {"update": update}))
        return out

    def flush(self) -> list[Output]:
        if not self._parts:
            return []
        text = "".join(self._parts)
        kind, message_id = self._kind, self._message_id
        self._parts, self._kind, self._message_id, self._size = [], None, None, 0
        data: dict[str, Any] = {"text": text}
        if message_id:
            data["message_id"] = message_id
        out: list[Output] = [Entry(kind or "assistant", data)]
        if kind == "assistant" and text.strip():
            out.append(Said(text))
        return out

    def _tool(self, update: dict) -> dict:
        call_id = str(update.get("toolCallId", ""))
        known = self._tools.setdefault(call_id, {})
        for key in ("title", "kind", "status"):
            if isinstance(update.get(key), str):
                known[key] = update[key]
        if known.get("status") in ("completed", "failed"):
            del self._tools[call_id]
        data = {"id": call_id, "title": known.get("title", "tool"), "status": known.get("status", "pending")}
        if known.get("kind"):
            data["tool_kind"] = known["kind"]
        for key, name in (("rawInput", "input"), ("rawOutput", "output"), ("locations", "locations"),
                          ("_meta", "meta")):
            if key in update:
                data[name] = update[key]
        text = tool_content_text(update.get("content"))
        if text:
            data["text"] = text
        return data


def content_text(block: Any) -> str:
    """The text of one content block; other blocks as a short [placeholder]."""
    if not isinstance(block, dict):
        return ""
    kind = block.get("type")
    if kind == "text":
        return block.get("text") if isinstance(block.get("text"), str) else ""
    if kind == "resource_link":
        return f"[{block.get('name') or block.get('uri') or 'resource'}]"
    if kind == "resource":
        resource = block.get("resource") if isinstance(block.get("resource"), dict) else {}
        return resource.get("text") if isinstance(resource.get("text"), str) else f"[{resource.get('uri', 'resource')}]"
    return f"[{block.get('mimeType') or kind or 'content'}]"


def tool_content_text(content: Any) -> str:
    """A tool call's content (blocks, diffs, terminals) as readable text."""
    if not isinstance(content, list):
        return ""
    parts = []
    for item in content:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "content":
            parts.append(content_text(item.get("content")))
        elif item.get("type") == "diff":
            parts.append(f"[diff {item.get('path', '')}]")
        elif item.get("type") == "terminal":
            parts.append(f"[terminal {item.get('terminalId', '')}]")
    return "\n".join(p for p in parts if p)


# -- permission requests ----------------------------------------------------------------------

ALLOW, ALLOW_ALWAYS, REJECT, REJECT_ALWAYS = "allow_once", "allow_always", "reject_once", "reject_always"


def permission_pending(request_id: str, params: Any) -> dict:
    """`session/request_permission` as the session's pending decision, with the agent's own options."""
    params = params if isinstance(params, dict) else {}
    call = params.get("toolCall") if isinstance(params.get("toolCall"), dict) else {}
    options = [{"id": o["optionId"], "name": str(o.get("name") or o["optionId"]), "kind": str(o.get("kind", ""))}
               for o in params.get("options") or []
               if isinstance(o, dict) and isinstance(o.get("optionId"), str)]
    raw_input = call.get("rawInput")
    pending = {"request_id": request_id, "tool_name": str(call.get("title") or call.get("kind") or "tool"),
               "input": raw_input if isinstance(raw_input, dict) else ({} if raw_input is None else {"value": raw_input}),
               "kind": "permission", "options": options}
    if isinstance(call.get("toolCallId"), str):
        pending["tool_call_id"] = call["toolCallId"]
    if isinstance(call.get("kind"), str):
        pending["tool_kind"] = call["kind"]
    return pending


def choose_option(options: list[dict], decision: str, always: bool = False) -> str | None:
    """The agent's option for a person's decision, by kind; None when it offers none that fits.

    approve → allow_once, approve --always → allow_always, deny → reject_once;
    each falls back to its other form (allow_always for approve, reject_always
    for deny) when the agent offers only that one."""
    if decision == "allow":
        order = (ALLOW_ALWAYS, ALLOW) if always else (ALLOW, ALLOW_ALWAYS)
    else:
        order = (REJECT, REJECT_ALWAYS)
    for kind in order:
        for option in options:
            if option.get("kind") == kind:
                return option["id"]
    return None


def permission_result(option_id: str | None) -> dict:
    """The answer to session/request_permission: the chosen option, or `cancelled`."""
    if option_id is None:
        return {"outcome": {"outcome": "cancelled"}}
    return {"outcome": {"outcome": "selected", "optionId": option_id}}


# -- the end of a turn ---------------------------------------------------------------------

STOP_ERRORS = {
    "refusal": "the agent refused to go on (stopReason refusal)",
    "max_tokens": "the agent reached its token limit (stopReason max_tokens); reply to continue",
    "max_turn_requests": "the agent reached its limit of model requests for one turn (stopReason "
                         "max_turn_requests); reply to continue",
}


@dataclass
class TurnEnd:
    state: str                      # completed | failed | stopped
    error: str | None = None
    usage: dict | None = None       # this turn's tokens, when the agent reports them


def turn_end(result: Any) -> TurnEnd:
    """A session/prompt result: `stopReason` to the session's state (SPEC §5.5)."""
    result = result if isinstance(result, dict) else {}
    reason = result.get("stopReason")
    usage = result.get("usage") if isinstance(result.get("usage"), dict) else None
    tokens = {k: v for k, v in (usage or {}).items() if _int(v)} or None
    if reason == "end_turn":
        return TurnEnd("completed", usage=tokens)
    if reason == "cancelled":
        return TurnEnd("stopped", usage=tokens)
    error = STOP_ERRORS.get(reason) if isinstance(reason, str) else None
    return TurnEnd("failed", error or f"the turn ended with stopReason {reason!r}", tokens)


# -- helpers --------------------------------------------------------------------------------

def one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _short(value: Any) -> str:
    return one_line(json.dumps(value, default=str), 120)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
