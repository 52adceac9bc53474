"""`bgctl loop` and `bgctl remind`: session-scoped loop tasks (SPEC §6).

    bgctl loop [INTERVAL] [--session ID | --cwd DIR] [PROMPT...]
    bgctl loop ls [--session ID] | bgctl loop stop LOOPID
    bgctl remind [--session ID | --cwd DIR] WHEN-AND-WHAT...

The words are sent as they are: the daemon splits the interval from the prompt (it may lead or
trail) and reads the schedule, so bgctl imports nothing heavy.
"""

from __future__ import annotations

import os

from bgcore.jsonrpc import BAD_SCHEDULE, RpcError

from ..cli_common import REMAINDER, ExitStatus, UsageError
from ..render import one_line

# Flags that may appear anywhere among the words (argparse's REMAINDER would swallow them).
_VALUE_FLAGS = {"--session": "session", "--cwd": "cwd", "--agent": "agent", "--name": "name",
                "--permission-mode": "permission_mode", "--model": "model"}


def register(sub, add_common) -> None:
    p = sub.add_parser("loop", help="run a prompt in a session on an interval (or dynamically)",
                       description="bgctl loop [INTERVAL] [--session ID | --cwd DIR] [PROMPT...]; "
                                   "bgctl loop ls [--session ID]; bgctl loop stop LOOPID")
    add_common(p)
    _add_target_flags(p)
    p.add_argument("words", nargs=REMAINDER, metavar="[INTERVAL] [PROMPT...] | ls | stop LOOPID")
    p.set_defaults(handler=loop)

    p = sub.add_parser("remind", help='a one-shot prompt: "in 45 minutes push the release branch"')
    add_common(p)
    _add_target_flags(p)
    p.add_argument("words", nargs=REMAINDER, metavar="WHEN-AND-WHAT...")
    p.set_defaults(handler=remind)


def _add_target_flags(p) -> None:
    p.add_argument("--session", help="the session the loop joins")
    p.add_argument("--cwd", help="start a new session here for the loop (default: the current directory)")
    p.add_argument("--agent")
    p.add_argument("--name")
    p.add_argument("--permission-mode", dest="permission_mode")
    p.add_argument("--model")


def _take_flags(args, words: list[str]) -> list[str]:
    """Pull the known flags out of the words wherever they stand; `--` ends flag reading."""
    rest, i = [], 0
    while i < len(words):
        word = words[i]
        key, _, inline = word.partition("=")
        if word == "--":
            rest += words[i + 1:]
            break
        if key in _VALUE_FLAGS:
            if inline:
                value = inline
            elif i + 1 < len(words):
                value, i = words[i + 1], i + 1
            else:
                raise UsageError(f"{key} needs a value")
            setattr(args, _VALUE_FLAGS[key], value)
        elif word == "--json":
            args.json = True
        else:
            rest.append(word)
        i += 1
    return rest


def _target(args) -> dict:
    if args.session and args.cwd:
        raise UsageError("give --session or --cwd, not both",
                         "--session joins a running session; --cwd starts a new one")
    if args.session:
        return {"session": args.session}
    cwd = os.path.abspath(os.path.expanduser(args.cwd)) if args.cwd else os.getcwd()
    if not os.path.isdir(cwd):
        raise UsageError(f"--cwd {args.cwd} is not a directory")
    params = {"cwd": cwd}
    for key in ("agent", "name", "permission_mode", "model"):
        if getattr(args, key, None):
            params[key] = getattr(args, key)
    return params


def _call(ctx, method: str, params: dict, example: str):
    try:
        return ctx.call(method, params)
    except RpcError as exc:
        if exc.code == BAD_SCHEDULE:  # the user's words: a usage error (exit 2)
            raise UsageError(exc.message, f"example: {(exc.data or {}).get('example') or example}") from None
        raise


def loop(args, ctx) -> int:
    words = _take_flags(args, list(args.words))
    if words[:1] == ["ls"]:
        return _ls(args, ctx, words[1:])
    if words[:1] == ["stop"]:
        return _stop(args, ctx, words[1:])
    params = {**_target(args), "words": words}
    result = _call(ctx, "loop.create", params, "bgctl loop 5m check the build")
    if ctx.json:
        ctx.print_json(result)
        return ExitStatus.OK
    schedule = result["human"]
    if result.get("rounded_from"):
        schedule += f" (rounded from {result['rounded_from']})"
    if result.get("cron"):
        schedule += f" · cron {result['cron']}"
    ctx.print(f"loop {result['id']} · {schedule} · session {result['session']}")
    if result.get("note"):
        ctx.print(f"note: {result['note']}")
    return ExitStatus.OK


def _ls(args, ctx, rest: list[str]) -> int:
    if rest:
        raise UsageError(f"unexpected {' '.join(rest)!r}", "usage: bgctl loop ls [--session ID] [--json]")
    loops = ctx.call("loop.list", {"session": args.session} if args.session else {})
    if ctx.json:
        ctx.print_json(loops)
        return ExitStatus.OK
    if not loops:
        ctx.print("no loops")
        return ExitStatus.OK
    rows = [("ID", "SESSION", "SCHEDULE", "NEXT", "RUNS", "REASON / PROMPT")]
    for loop in loops:
        nxt = "suspended" if loop["suspended"] else (loop["next_fire_at"] or "after this iteration")
        detail = loop.get("reason") or (loop["prompt"] if loop["prompt"] is not None else "(loop.md)")
        rows.append((loop["id"], loop["session"], one_line(loop["human"], 40), nxt[:19].replace("T", " "),
                     str(loop["runs"]), one_line(detail, 60)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        ctx.print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r[:-1])) + "  " + r[-1])
    return ExitStatus.OK


def _stop(args, ctx, rest: list[str]) -> int:
    if len(rest) != 1:
        raise UsageError("give one loop id", "usage: bgctl loop stop LOOPID (ids: `bgctl loop ls`)")
    result = ctx.call("loop.stop", {"id": rest[0]})
    ctx.print_json(result) if ctx.json else ctx.print(f"stopped loop {result['id']}")
    return ExitStatus.OK


def remind(args, ctx) -> int:
    words = _take_flags(args, list(args.words))
    text = " ".join(words).strip()
    if not text:
        raise UsageError("say when and what", "example: bgctl remind in 45 minutes push the release branch")
    result = _call(ctx, "loop.remind", {**_target(args), "text": text},
                   "bgctl remind in 45 minutes push the release branch")
    if ctx.json:
        ctx.print_json(result)
    else:
        ctx.print(f"reminder {result['id']} · {result['human']} · session {result['session']}")
    return ExitStatus.OK
