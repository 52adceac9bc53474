"""The Claude Code backend (SPEC §5.1): argv and the meaning of each stdout line.

Pure: it builds command lines and control messages and classifies parsed
lines.  The session runner does the I/O and the state changes.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from bgcore.config import AgentConfig
from bgd.agents.base import one_line  # noqa: F401  (part of this module's vocabulary)

QUESTION_TOOL = "AskUserQuestion"


def build_argv(agent: AgentConfig, *, agent_session_id: str, resume: bool,
               permission_mode: str | None, model: str | None,
               mcp_config: str | None) -> list[str]:
    argv = [*agent.command, *agent.args,
            "-p", "--output-format", "stream-json", "--input-format", "stream-json",
            "--verbose", "--permission-prompt-tool", "stdio"]
    argv += ["--resume", agent_session_id] if resume else ["--session-id", agent_session_id]
    if permission_mode:
        argv += ["--permission-mode", permission_mode]
    if model:
        argv += ["--model", model]
    if mcp_config:
        argv += ["--mcp-config", mcp_config]
    return argv


def user_message(text: str) -> dict:
    return {"type": "user", "message": {"role": "user", "content": [{"type": "text", "text": text}]}}


def interrupt_request() -> dict:
    return {"type": "control_request", "request_id": f"bgd-{secrets.token_hex(6)}",
            "request": {"subtype": "interrupt"}}


def allow_response(request_id: str, updated_input: dict, permissions: list | None = None) -> dict:
    inner: dict[str, Any] = {"behavior": "allow", "updatedInput": updated_input}
    if permissions:
        inner["updatedPermissions"] = permissions
    return {"type": "control_response",
            "response": {"subtype": "success", "request_id": request_id, "response": inner}}


def deny_response(request_id: str, message: str) -> dict:
    return {"type": "control_response",
            "response": {"subtype": "success", "request_id": request_id,
                         "response": {"behavior": "deny", "message": message}}}


def unsupported_response(request_id: str, subtype: str) -> dict:
    return {"type": "control_response",
            "response": {"subtype": "error", "request_id": request_id,
                         "error": f"bgd does not handle control requests of subtype {subtype!r}"}}


# -- classifying stdout lines ---------------------------------------------------

@dataclass
class Init:
    session_id: str | None
    model: str | None


@dataclass
class AssistantText:
    text: str


@dataclass
class PermissionRequest:
    request_id: str
    tool_name: str
    input: dict
    suggestions: list = field(default_factory=list)

    @property
    def waiting_for(self) -> str:
        return "question" if self.tool_name == QUESTION_TOOL else "permission"


@dataclass
class CancelRequest:
    request_id: str


@dataclass
class OtherControlRequest:
    request_id: str
    subtype: str


@dataclass
class TurnResult:
    is_error: bool
    subtype: str
    text: str
    total_cost_usd: float | None
    num_turns: int | None
    session_id: str | None


@dataclass
class Other:
    type: str


Line = Init | AssistantText | PermissionRequest | CancelRequest | OtherControlRequest | TurnResult | Other


def classify(obj: dict) -> Line:
    """What one parsed stdout object means for the session."""
    kind = obj.get("type")
    if kind == "system" and obj.get("subtype") == "init":
        return Init(_str(obj.get("session_id")), _str(obj.get("model")))
    if kind == "assistant":
        text = assistant_text(obj)
        return AssistantText(text) if text else Other("assistant")
    if kind == "control_request":
        request = obj.get("request") or {}
        request_id = str(obj.get("request_id", ""))
        subtype = str(request.get("subtype", ""))
        if subtype == "can_use_tool":
            tool_input = request.get("input")
            return PermissionRequest(request_id, str(request.get("tool_name", "?")),
                                     tool_input if isinstance(tool_input, dict) else {},
                                     list(request.get("permission_suggestions") or []))
        return OtherControlRequest(request_id, subtype)
    if kind == "control_cancel_request":
        return CancelRequest(str(obj.get("request_id", "")))
    if kind == "result":
        cost = obj.get("total_cost_usd")
        turns = obj.get("num_turns")
        text = obj.get("result")
        if not isinstance(text, str):
            errors = obj.get("errors")
            text = "; ".join(map(str, errors)) if isinstance(errors, list) and errors else ""
        return TurnResult(
            is_error=bool(obj.get("is_error")),
            subtype=str(obj.get("subtype", "")),
            text=text,
            total_cost_usd=float(cost) if isinstance(cost, (int, float)) and not isinstance(cost, bool) else None,
            num_turns=turns if isinstance(turns, int) and not isinstance(turns, bool) else None,
            session_id=_str(obj.get("session_id")))
    return Other(str(kind))


def assistant_text(obj: dict) -> str:
    message = obj.get("message")
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts = [block.get("text", "") for block in content
             if isinstance(block, dict) and block.get("type") == "text"]
    return "\n".join(p for p in parts if isinstance(p, str))


def answer_input(request_input: dict, answer: str) -> dict:
    """updatedInput for an AskUserQuestion request answered with `answer`."""
    answers = {}
    for question in request_input.get("questions") or []:
        if isinstance(question, dict) and isinstance(question.get("question"), str):
            answers[question["question"]] = answer
    return {**request_input, "answers": answers}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
