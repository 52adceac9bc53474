"""bgctl events and bgctl rpc: the socket protocol, raw."""

from __future__ import annotations

import json
import sys

from ..cli_common import ExitStatus, UsageError
from ..render import event_line


def register(sub, add_common) -> None:
    events = sub.add_parser("events", help="print the daemon's event stream")
    add_common(events)
    events.add_argument("-f", "--follow", action="store_true", help="follow live until Ctrl-C")
    events.add_argument("--since", type=int, default=None, help="start after this seq")
    events.add_argument("--session", help="only this session's events")
    events.set_defaults(handler=run_events)

    rpc = sub.add_parser("rpc", help="call any method and print its result as JSON")
    add_common(rpc)
    rpc.add_argument("method")
    rpc.add_argument("params", nargs="?", help="params as a JSON object")
    rpc.set_defaults(handler=run_rpc)


def run_events(args, ctx) -> int:
    client = ctx.client()
    since = args.since if args.since is not None else (None if args.follow else 0)
    params = {"since": since, "session": args.session}
    answer = client.call("events.subscribe", {k: v for k, v in params.items() if v is not None})
    if answer.get("missed"):
        ctx.err.write("bgctl: some events after that seq are no longer retained\n")
    remaining = answer.get("backlog", 0)
    collected = []
    if not args.follow and remaining == 0:
        if ctx.json:
            ctx.print_json([])
        return ExitStatus.OK
    for note in client.notifications_iter():
        if note.method != "event":
            if note.method == "events.overflow":
                ctx.err.write("bgctl: fell behind the event stream; run again with --since\n")
                return ExitStatus.ERROR
            continue
        event = note.params
        if args.follow:
            ctx.print(json.dumps(event, ensure_ascii=False) if ctx.json else event_line(event))
        else:
            collected.append(event)
            if len(collected) >= remaining:
                break
    if ctx.json:
        ctx.print_json(collected)
    else:
        for event in collected:
            ctx.print(event_line(event))
    return ExitStatus.OK


def run_rpc(args, ctx) -> int:
    params = None
    if args.params is not None:
        text = sys.stdin.read() if args.params == "-" else args.params
        try:
            params = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"params are not valid JSON: {exc}", 'example: bgctl rpc session.get \'{"id": "abcd1234"}\'')
    ctx.print_json(ctx.call(args.method, params))
    return ExitStatus.OK
