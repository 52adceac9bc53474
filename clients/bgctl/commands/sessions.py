"""Session commands: dispatch, ls, show, logs, reply, approve, deny, stop, rm, pin, unpin, rename, resume.

`bgctl.render` is imported where text is printed: `bgctl ls --json` starts without it.
"""

from __future__ import annotations

import json
import os

from ..cli_common import REMAINDER, ExitStatus, UsageError

STATES = ("working", "needs_input", "sleeping", "completed", "failed", "stopped")


def register(sub, add_common) -> None:
    p = sub.add_parser("dispatch", help="start a background session")
    add_common(p)
    p.add_argument("--cwd", default=None, help="working directory (default: here)")
    p.add_argument("--agent", help="agent from config.toml (default: default_agent)")
    p.add_argument("--name")
    p.add_argument("--permission-mode", dest="permission_mode")
    p.add_argument("--model")
    p.add_argument("--attach", action="store_true", help="follow the transcript after dispatching")
    p.add_argument("--on", choices=("local", "cluster"), default=None,
                   help="where the agent runs: here (default) or on the cluster's workers ([cluster] in config.toml)")
    p.add_argument("prompt", nargs=REMAINDER, metavar="PROMPT...")
    p.set_defaults(handler=dispatch)

    p = sub.add_parser("ls", help="list sessions")
    add_common(p)
    p.add_argument("--all", action="store_true", help="include sessions that ended over a day ago")
    p.add_argument("--cwd")
    p.add_argument("--state", choices=STATES)
    p.set_defaults(handler=ls)

    p = sub.add_parser("show", help="one session, with its pending request")
    add_common(p)
    p.add_argument("id")
    p.set_defaults(handler=show)

    p = sub.add_parser("logs", help="a session's transcript")
    add_common(p)
    p.add_argument("id")
    p.add_argument("-f", "--follow", action="store_true", help="follow live until Ctrl-C")
    p.add_argument("--since", type=int, default=-1, help="entries after this entry number")
    p.set_defaults(handler=logs)

    p = sub.add_parser("reply", help="send a follow-up message or answer a question")
    add_common(p)
    p.add_argument("id")
    p.add_argument("text", nargs=REMAINDER, metavar="TEXT...")
    p.set_defaults(handler=reply)

    p = sub.add_parser("approve", help="allow the pending permission request")
    add_common(p)
    p.add_argument("id")
    p.add_argument("--always", action="store_true", help="remember the rule for this session (and task)")
    p.set_defaults(handler=approve)

    p = sub.add_parser("deny", help="deny the pending permission request")
    add_common(p)
    p.add_argument("id")
    p.add_argument("--message", "-m", help="passed to the agent")
    p.set_defaults(handler=deny)

    for name, help_text in (("stop", "stop a session"), ("rm", "stop and delete a session"),
                            ("pin", "pin a session"), ("unpin", "unpin a session")):
        p = sub.add_parser(name, help=help_text)
        add_common(p)
        p.add_argument("id")
        p.set_defaults(handler=simple, verb=name)

    p = sub.add_parser("rename", help="name a session")
    add_common(p)
    p.add_argument("id")
    p.add_argument("name", nargs=REMAINDER, metavar="NAME")
    p.set_defaults(handler=rename)

    p = sub.add_parser("resume", help="continue a stopped or failed session")
    add_common(p)
    p.add_argument("id")
    p.add_argument("prompt", nargs=REMAINDER, metavar="PROMPT...")
    p.set_defaults(handler=resume)


def _words(words: list[str], what: str, example: str) -> str:
    text = " ".join(words).strip()
    if not text:
        raise UsageError(f"missing {what}", f"example: {example}")
    return text


def _print_session(ctx, session: dict, line: str) -> None:
    ctx.print_json(session) if ctx.json else ctx.print(line)


def dispatch(args, ctx) -> int:
    prompt = _words(args.prompt, "prompt", "bgctl dispatch --cwd ~/src/app fix the flaky login test")
    cwd = os.path.abspath(os.path.expanduser(args.cwd)) if args.cwd else os.getcwd()
    if not os.path.isdir(cwd):
        raise UsageError(f"--cwd {args.cwd} is not a directory")
    params = {"prompt": prompt, "cwd": cwd, "agent": args.agent, "name": args.name,
              "permission_mode": args.permission_mode, "model": args.model, "on": args.on}
    session = ctx.call("session.dispatch", {k: v for k, v in params.items() if v is not None})
    from ..render import title
    _print_session(ctx, session, f"backgrounded · {session['id']} · {title(session)}")
    if session["state"] == "failed":
        ctx.err.write(f"bgctl: session {session['id']} failed: {session['error']}\n")
        return ExitStatus.ERROR
    if args.attach and not ctx.json:
        return _follow(ctx, session["id"], -1)
    return ExitStatus.OK


def ls(args, ctx) -> int:
    params = {"all": args.all, "state": args.state}
    if args.cwd:
        params["cwd"] = os.path.abspath(os.path.expanduser(args.cwd))
    sessions = ctx.call("session.list", params)
    if ctx.json:
        ctx.print_json(sessions)
    else:
        from ..render import session_table
        ctx.print(session_table(sessions))
    return ExitStatus.OK


def show(args, ctx) -> int:
    session = ctx.call("session.get", {"id": args.id})
    if ctx.json:
        ctx.print_json(session)
    else:
        from ..render import session_detail
        ctx.print(session_detail(session))
    return ExitStatus.OK


def logs(args, ctx) -> int:
    if args.follow:
        return _follow(ctx, args.id, args.since)
    answer = ctx.call("session.transcript", {"id": args.id, "since": args.since})
    if ctx.json:
        ctx.print_json(answer["entries"])
        return ExitStatus.OK
    from ..render import transcript_entry
    for entry in answer["entries"]:
        text = transcript_entry(entry)
        if text:
            ctx.print(text)
    return ExitStatus.OK


def _follow(ctx, session_id: str, since: int) -> int:
    client = ctx.client()
    session = client.call("session.get", {"id": session_id})
    # Subscribe first, then read the transcript: nothing falls in between, and
    # entry numbers drop what both paths deliver.
    client.call("events.subscribe", {"session": session["id"], "types": ["session.transcript"]})
    last = since
    for entry in client.call("session.transcript", {"id": session["id"], "since": since})["entries"]:
        last = _emit(ctx, entry, last)
    for note in client.notifications_iter():
        if note.method == "event" and note.params.get("type") == "session.transcript":
            last = _emit(ctx, note.params["entry"], last)
    return ExitStatus.OK


def _emit(ctx, entry: dict, last: int) -> int:
    if entry["n"] <= last:
        return last
    if ctx.json:
        ctx.print(json.dumps(entry, ensure_ascii=False))
    else:
        from ..render import transcript_entry
        text = transcript_entry(entry)
        if text:
            ctx.print(text)
    return entry["n"]


def reply(args, ctx) -> int:
    text = _words(args.text, "reply text", f"bgctl reply {args.id} yes, go ahead")
    session = ctx.call("session.reply", {"id": args.id, "text": text})
    _print_session(ctx, session, f"replied · {session['id']} · {session['state']}")
    return ExitStatus.OK


def approve(args, ctx) -> int:
    session = ctx.call("session.respond", {"id": args.id, "decision": "allow", "always": args.always})
    _print_session(ctx, session, f"approved · {session['id']}" + (" · always" if args.always else ""))
    return ExitStatus.OK


def deny(args, ctx) -> int:
    params = {"id": args.id, "decision": "deny"}
    if args.message:
        params["message"] = args.message
    session = ctx.call("session.respond", params)
    _print_session(ctx, session, f"denied · {session['id']}")
    return ExitStatus.OK


def simple(args, ctx) -> int:
    method, params = {
        "stop": ("session.stop", {"id": args.id}),
        "rm": ("session.remove", {"id": args.id}),
        "pin": ("session.pin", {"id": args.id, "pinned": True}),
        "unpin": ("session.pin", {"id": args.id, "pinned": False}),
    }[args.verb]
    result = ctx.call(method, params)
    past = {"stop": "stopped", "rm": "removed", "pin": "pinned", "unpin": "unpinned"}[args.verb]
    _print_session(ctx, result, f"{past} · {result['id']}")
    return ExitStatus.OK


def rename(args, ctx) -> int:
    name = _words(args.name, "name", f"bgctl rename {args.id} login-fix")
    session = ctx.call("session.rename", {"id": args.id, "name": name})
    _print_session(ctx, session, f"renamed · {session['id']} · {session['name']}")
    return ExitStatus.OK


def resume(args, ctx) -> int:
    params = {"id": args.id}
    if args.prompt:
        params["prompt"] = " ".join(args.prompt)
    session = ctx.call("session.resume", params)
    _print_session(ctx, session, f"resumed · {session['id']} · {session['state']}")
    return ExitStatus.OK

