"""`bgctl task ...`: desktop tasks (SPEC §3, §7), kept in tasks.toml by the daemon.

    bgctl task add NAME --schedule SPEC [--cwd DIR] [--agent A] [--permission-mode M] [--model M]
                   [--worktree] [--overlap P] [--timezone Z] [--description D] [--prompt-file F] PROMPT...
    bgctl task ls | show NAME | edit NAME [...same flags] | rm NAME | pause NAME | resume NAME | run NAME
    bgctl task history NAME
"""

from __future__ import annotations

import os

from bgcore.jsonrpc import BAD_SCHEDULE, RpcError

from ..cli_common import REMAINDER, ExitStatus, UsageError, add_common
from ..render import age, one_line
from .schedule import schedule_error

OVERLAPS = ("skip", "buffer_one", "replace", "allow")


def register(sub, add_common) -> None:
    p = sub.add_parser("task", help="desktop tasks: named schedules that start a fresh session",
                       description="bgctl task add|ls|show|edit|rm|pause|resume|run|history")
    add_common(p)
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    p.set_defaults(handler=lambda args, ctx: ls(args, ctx))

    a = verbs.add_parser("add", help="add a task to tasks.toml")
    add_common(a)
    a.add_argument("name")
    _task_flags(a, edit=False)
    a.set_defaults(handler=add)

    e = verbs.add_parser("edit", help="change a task's fields")
    add_common(e)
    e.add_argument("name")
    _task_flags(e, edit=True)
    e.set_defaults(handler=edit)

    v = verbs.add_parser("ls", help="every task, with its next fire and the file's errors")
    add_common(v)
    v.set_defaults(handler=ls)

    for verb, help_text in (("show", "one task"), ("rm", "remove a task from tasks.toml"),
                            ("pause", "stop a task firing (enabled = false)"),
                            ("resume", "let a paused task fire again"), ("run", "fire a task now"),
                            ("history", "every run and skipped run, newest first")):
        v = verbs.add_parser(verb, help=help_text)
        add_common(v)
        v.add_argument("name")
        if verb == "history":
            v.add_argument("--limit", type=int, default=1000)
        v.set_defaults(handler=globals()[{"rm": "rm", "run": "run"}.get(verb, verb)])


def _task_flags(p, *, edit: bool) -> None:
    p.add_argument("--schedule", "-s", help='e.g. "weekdays at 9am", "every 2 hours", cron')
    p.add_argument("--cwd", help="the directory each run works in (default: here)" if not edit else None)
    p.add_argument("--agent")
    p.add_argument("--permission-mode", dest="permission_mode")
    p.add_argument("--model")
    p.add_argument("--worktree", action="store_true", default=None, help="each run in its own git worktree")
    if edit:
        p.add_argument("--no-worktree", dest="worktree", action="store_false")
    p.add_argument("--overlap", choices=OVERLAPS, help="when a run is still going: skip (default), "
                                                       "buffer_one, replace, allow")
    p.add_argument("--timezone", help="IANA zone for the schedule (default: the machine's)")
    p.add_argument("--description")
    p.add_argument("--prompt-file", dest="prompt_file", help="read the prompt from this file at each run")
    p.add_argument("--disabled", dest="enabled", action="store_false", default=None, help="add it paused")
    p.add_argument("prompt", nargs=REMAINDER, metavar="PROMPT...")


def _flags_among_words(args, *, edit: bool) -> list[str]:
    """Flags may also follow NAME or stand among the prompt's words (REMAINDER took them all)."""
    from ..arguments import Spec
    from ..full_parser import build
    spec = Spec(prog=f"bgctl task {'edit' if edit else 'add'}", add_help=False)
    add_common(spec)
    _task_flags(spec, edit=edit)
    parser = build(spec)
    parser._actions[-1].nargs = "*"  # the prompt words, intermixed with the flags
    words = list(args.prompt)
    tail: list[str] = []
    if "--" in words:  # everything after `--` is prompt, even `--model`
        cut = words.index("--")
        words, tail = words[:cut], words[cut + 1:]
    later = parser.parse_intermixed_args(words)
    for key, value in vars(later).items():
        if key != "prompt" and value is not None:
            setattr(args, key, value)
    return list(later.prompt) + tail


def _params(args, *, edit: bool) -> dict:
    prompt = " ".join(_flags_among_words(args, edit=edit)).strip()
    params = {"name": args.name, "schedule": args.schedule, "agent": args.agent,
              "permission_mode": args.permission_mode, "model": args.model, "worktree": args.worktree,
              "overlap": args.overlap, "timezone": args.timezone, "description": args.description,
              "prompt_file": args.prompt_file, "enabled": args.enabled, "prompt": prompt or None}
    if args.cwd is not None or not edit:
        cwd = os.path.abspath(os.path.expanduser(args.cwd)) if args.cwd else os.getcwd()
        if not os.path.isdir(cwd):
            raise UsageError(f"--cwd {args.cwd} is not a directory")
        params["cwd"] = cwd
    if not edit and not args.schedule:
        raise UsageError("missing --schedule", 'example: bgctl task add nightly-deps --schedule "weekdays at 02:30" '
                                               "update the lockfile and run the tests")
    if not edit and not prompt and not args.prompt_file:
        raise UsageError("missing prompt", 'example: bgctl task add nightly-deps --schedule "weekdays at 02:30" '
                                           "update the lockfile and run the tests")
    return {k: v for k, v in params.items() if v is not None}


def _call(ctx, method: str, params: dict):
    try:
        return ctx.call(method, params)
    except RpcError as exc:
        if exc.code == BAD_SCHEDULE:  # the user's words: a usage error (exit 2)
            raise schedule_error(exc) from None
        if exc.code == -32602:
            raise UsageError(exc.message) from None
        raise


def add(args, ctx) -> int:
    task = _call(ctx, "task.add", _params(args, edit=False))
    if ctx.json:
        ctx.print_json(task)
    else:
        ctx.print(f"added {task['name']} · {task['human']} · next {task['next_at'] or '-'}")
    return ExitStatus.OK


def edit(args, ctx) -> int:
    params = _params(args, edit=True)
    if len(params) == 1:
        raise UsageError("nothing to change", f"example: bgctl task edit {args.name} --schedule hourly")
    task = _call(ctx, "task.edit", params)
    ctx.print_json(task) if ctx.json else ctx.print(f"changed {task['name']} · {task['human']} · "
                                                    f"next {task['next_at'] or '-'}")
    return ExitStatus.OK


def ls(args, ctx) -> int:
    result = ctx.call("task.list")
    if ctx.json:
        if len(result["tasks"]) > 500:  # indenting 10,000 tasks costs more than the rest of the command
            import json
            ctx.out.write(json.dumps(result, ensure_ascii=False) + "\n")
            ctx.out.flush()
        else:
            ctx.print_json(result)
        return ExitStatus.OK
    tasks = result["tasks"]
    if not tasks:
        ctx.print(f"no tasks (add one with `bgctl task add`, or edit {result['file']})")
    else:
        rows = [("NAME", "STATUS", "SCHEDULE", "NEXT", "LAST", "DIR")]
        for t in tasks:
            status = t["status"] + (" (running)" if t.get("running") else "")
            rows.append((t["name"], status, one_line(t["human"], 40), (t["next_at"] or "-")[:16].replace("T", " "),
                         age(t.get("last_fired_at")), _short(t["cwd"])))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        ctx.print("\n".join("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows))
    for error in result["errors"]:
        ctx.print(f"error: {error['message']}")
    if result["errors"]:
        ctx.print("the last valid definition of each task keeps running until the file is fixed")
    return ExitStatus.OK


def _short(path: str) -> str:
    home = os.path.expanduser("~")
    return "~" + path[len(home):] if path == home or path.startswith(home + "/") else path


def show(args, ctx) -> int:
    task = ctx.call("task.get", {"name": args.name})
    if ctx.json:
        ctx.print_json(task)
        return ExitStatus.OK
    ctx.print(f"{task['name']}  {task['status']}")
    for key in ("description", "human", "schedule", "cron", "timezone", "next_at", "cwd", "agent", "permission_mode",
                "model", "worktree", "overlap", "last_fired_at", "last_session", "prompt_file"):
        if task.get(key) not in (None, "", False):
            ctx.print(f"  {key + ':':17}{task[key]}")
    if task.get("always_allow"):
        ctx.print(f"  {'always allowed:':17}{', '.join(task['always_allow'])}")
    if task.get("prompt"):
        ctx.print(f"  {'prompt:':17}{one_line(task['prompt'], 100)}")
    return ExitStatus.OK


def rm(args, ctx) -> int:
    result = ctx.call("task.remove", {"name": args.name})
    ctx.print_json(result) if ctx.json else ctx.print(f"removed {args.name} (its history is kept)")
    return ExitStatus.OK


def pause(args, ctx) -> int:
    task = ctx.call("task.pause", {"name": args.name})
    ctx.print_json(task) if ctx.json else ctx.print(f"paused {args.name}")
    return ExitStatus.OK


def resume(args, ctx) -> int:
    task = ctx.call("task.resume", {"name": args.name})
    ctx.print_json(task) if ctx.json else ctx.print(f"resumed {args.name} · next {task['next_at'] or '-'}")
    return ExitStatus.OK


def run(args, ctx) -> int:
    row = ctx.call("task.run", {"name": args.name})
    if ctx.json:
        ctx.print_json(row)
    elif row.get("status") == "ran":
        ctx.print(f"started · {row['session_id']} · {args.name}")
    elif row.get("status") == "failed":
        ctx.err.write(f"bgctl: the run of {args.name} could not start: {row.get('error')}\n")
        return ExitStatus.ERROR
    else:
        ctx.print(f"{row.get('status')} · {row.get('reason') or ''}".rstrip(" ·"))
    return ExitStatus.OK


def history(args, ctx) -> int:
    runs = ctx.call("task.history", {"name": args.name, "limit": args.limit})
    if ctx.json:
        ctx.print_json(runs)
        return ExitStatus.OK
    if not runs:
        ctx.print(f"{args.name} has not fired yet")
        return ExitStatus.OK
    rows = [("DUE", "STATUS", "DETAIL", "SESSION")]
    for r in runs:
        detail = r.get("reason") or r.get("error") or ""
        if r.get("count", 1) > 1:
            detail += f" (×{r['count']})"
        if r.get("catch_up"):
            detail = (detail + " catch-up").strip()
        if r.get("manual"):
            detail = (detail + " by hand").strip()
        rows.append(((r["due_at"] or "")[:19].replace("T", " "), r["status"], one_line(detail, 60),
                     r.get("session_id") or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    ctx.print("\n".join("  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip() for row in rows))
    return ExitStatus.OK
