"""The bgagents.* commands of workspace/executeCommand: their arguments, turned into daemon calls.

Pure: each function takes the command's `arguments` array and returns the daemon
method and params (or raises CommandArgsError, which the server answers as
invalid params).  Every command takes either positional arguments or one object
of named ones, e.g. `["k3v9q0ab", "yes"]` or `[{"id": "k3v9q0ab", "text": "yes"}]`.
"""

from __future__ import annotations

from typing import Any

from bgcore.schedule import split_loop_args

DISPATCH = "bgagents.dispatch"
LIST = "bgagents.list"
REPLY = "bgagents.reply"
APPROVE = "bgagents.approve"
DENY = "bgagents.deny"
STOP = "bgagents.stop"
OPEN_TRANSCRIPT = "bgagents.openTranscript"
LOOP = "bgagents.loop"
COMMANDS = (DISPATCH, LIST, REPLY, APPROVE, DENY, STOP, OPEN_TRANSCRIPT, LOOP)

_DISPATCH_FIELDS = ("prompt", "cwd", "agent", "name", "permission_mode", "model")


class CommandArgsError(ValueError):
    """The command's arguments cannot be used; the message says what a call looks like."""


def _named(args: list | None, positional: tuple[str, ...], usage: str) -> dict[str, Any]:
    args = list(args or [])
    if len(args) == 1 and isinstance(args[0], dict):
        return dict(args[0])
    if len(args) > len(positional):
        raise CommandArgsError(f"too many arguments; usage: {usage}")
    return {name: value for name, value in zip(positional, args) if value is not None}


def _req_str(named: dict, key: str, usage: str) -> str:
    value = named.get(key)
    if not isinstance(value, str) or not value.strip():
        raise CommandArgsError(f"{key} is required; usage: {usage}")
    return value


def _opt(named: dict, key: str, kind: type, usage: str) -> Any:
    value = named.get(key)
    if value is not None and not isinstance(value, kind):
        raise CommandArgsError(f"{key} must be {'true or false' if kind is bool else 'a string'}; usage: {usage}")
    return value


def dispatch(args: list | None, default_cwd: str) -> tuple[str, dict]:
    usage = 'bgagents.dispatch ["PROMPT"] or [{"prompt", "cwd"?, "agent"?, "name"?, "permission_mode"?, "model"?}]'
    named = _named(args, ("prompt", "cwd"), usage)
    params = {"prompt": _req_str(named, "prompt", usage), "cwd": _opt(named, "cwd", str, usage) or default_cwd}
    for key in _DISPATCH_FIELDS[2:]:
        if _opt(named, key, str, usage):
            params[key] = named[key]
    return "session.dispatch", params


def list_sessions(args: list | None) -> tuple[str, dict]:
    usage = 'bgagents.list [] or [{"all"?, "state"?, "cwd"?}]'
    named = _named(args, ("all",), usage)
    params: dict[str, Any] = {}
    if _opt(named, "all", bool, usage):
        params["all"] = True
    for key in ("state", "cwd"):
        if _opt(named, key, str, usage):
            params[key] = named[key]
    return "session.list", params


def reply(args: list | None, session: dict | None) -> tuple[str, dict]:
    """With a `request_id`, answers exactly that request (refused if it is stale);
    without, a plain `session.reply`.  `session` is what bgls knows of it, if anything."""
    usage = 'bgagents.reply ["ID", "TEXT"] or ["ID", "TEXT", "REQUEST_ID"] or [{"id", "text", "request_id"?}]'
    named = _named(args, ("id", "text", "request_id"), usage)
    session_id, text = _req_str(named, "id", usage), _req_str(named, "text", usage)
    request_id = _opt(named, "request_id", str, usage)
    if not request_id:
        return "session.reply", {"id": session_id, "text": text}
    waiting_for = (session or {}).get("waiting_for")
    if waiting_for == "permission":  # a reply to a permission request denies it, with the text as the reason
        return "session.respond", {"id": session_id, "decision": "deny", "message": text, "request_id": request_id}
    return "session.respond", {"id": session_id, "decision": "allow", "answer": text, "request_id": request_id}


def approve(args: list | None) -> tuple[str, dict]:
    usage = 'bgagents.approve ["ID"] or ["ID", ALWAYS] or [{"id", "always"?, "request_id"?, "answer"?}]'
    named = _named(args, ("id", "always"), usage)
    params: dict[str, Any] = {"id": _req_str(named, "id", usage), "decision": "allow"}
    if _opt(named, "always", bool, usage):
        params["always"] = True
    for key in ("request_id", "answer"):
        if _opt(named, key, str, usage):
            params[key] = named[key]
    return "session.respond", params


def deny(args: list | None) -> tuple[str, dict]:
    usage = 'bgagents.deny ["ID"] or ["ID", "MESSAGE"] or [{"id", "message"?, "request_id"?}]'
    named = _named(args, ("id", "message"), usage)
    params: dict[str, Any] = {"id": _req_str(named, "id", usage), "decision": "deny"}
    for key in ("message", "request_id"):
        if _opt(named, key, str, usage):
            params[key] = named[key]
    return "session.respond", params


def stop(args: list | None) -> tuple[str, dict]:
    usage = 'bgagents.stop ["ID"] or [{"id"}]'
    return "session.stop", {"id": _req_str(_named(args, ("id",), usage), "id", usage)}


def session_id(args: list | None, command: str) -> str:
    usage = f'{command} ["ID"] or [{{"id"}}]'
    return _req_str(_named(args, ("id",), usage), "id", usage)


def loop(args: list | None, default_cwd: str) -> tuple[str, dict]:
    """`["5m check the build"]` (read like `bgctl loop`), or `[{"interval"?, "prompt"?, "session"? | "cwd"?}]`."""
    usage = 'bgagents.loop [] or ["[INTERVAL] [PROMPT]"] or [{"interval"?, "prompt"?, "session"? | "cwd"?}]'
    args = list(args or [])
    if len(args) == 1 and isinstance(args[0], dict):
        named = dict(args[0])
    elif len(args) <= 1 and all(isinstance(a, str) for a in args):
        interval, prompt = split_loop_args(args[0].split()) if args else (None, "")
        named = {"interval": interval, "prompt": prompt or None}
    else:
        raise CommandArgsError(f"unexpected arguments; usage: {usage}")
    params: dict[str, Any] = {}
    for key in ("interval", "prompt", "session", "cwd"):
        if _opt(named, key, str, usage):
            params[key] = named[key]
    if "session" in params and "cwd" in params:
        raise CommandArgsError(f"give session or cwd, not both; usage: {usage}")
    if "session" not in params and "cwd" not in params:
        params["cwd"] = default_cwd
    return "loop.create", params
