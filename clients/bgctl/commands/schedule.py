"""`bgctl schedule explain SPEC [--next N] [--tz ZONE] [--from TIME]` (SPEC §3).

The daemon reads the schedule (`schedule.explain`), so bgctl imports nothing heavy; a schedule it
cannot read is a usage error (exit 2) shown with a caret under the part that is wrong and an example.
"""

from __future__ import annotations


from bgcore.jsonrpc import BAD_SCHEDULE, RpcError

from ..cli_common import ExitStatus, UsageError


def register(sub, add_common) -> None:
    p = sub.add_parser("schedule", help="explain a schedule: its meaning and next fire times",
                       description="bgctl schedule explain SPEC [--next N] [--tz ZONE] [--from TIME] [--json]")
    add_common(p)
    verbs = p.add_subparsers(dest="verb", metavar="explain")
    e = verbs.add_parser("explain", help="what a schedule means and when it fires next")
    add_common(e)
    e.add_argument("--next", "-n", type=int, default=5, help="how many fire times (default 5)")
    e.add_argument("--tz", help="IANA time zone (default: the local zone)")
    e.add_argument("--from", dest="start", metavar="TIME",
                   help="count from this ISO time (without an offset: a wall time in --tz); default now")
    # "+" rather than REMAINDER: options may follow the spec words, as SPEC §3 writes them.
    e.add_argument("spec", nargs="+", metavar="SPEC")
    e.set_defaults(handler=explain)
    p.set_defaults(handler=lambda args, ctx: (_ for _ in ()).throw(
        UsageError("missing verb", "usage: bgctl schedule explain SPEC [--next N] [--tz ZONE] [--from TIME]")))


def schedule_error(exc: RpcError, fallback_example: str = "every 15 minutes") -> UsageError:
    """A BAD_SCHEDULE answer as a usage error: the spec with a caret under the part that is wrong."""
    data = exc.data if isinstance(exc.data, dict) else {}
    spec, position, fragment = data.get("spec"), data.get("position"), data.get("fragment") or ""
    lines = []
    if isinstance(spec, str) and spec.strip() and isinstance(position, int):
        width = max(1, len(fragment) if spec[position:position + len(fragment)] == fragment else 1)
        lines += [f"  {spec}", "  " + " " * position + "^" * width]
    lines.append(f"example: {data.get('example') or fallback_example}")
    return UsageError(exc.message, "\n".join(lines))


def explain(args, ctx) -> int:
    words = list(args.spec)
    if words[:1] == ["--"]:
        words = words[1:]
    spec = " ".join(words).strip()
    if not spec:
        raise UsageError("missing schedule", "example: bgctl schedule explain every 15 minutes")
    if args.next < 0 or args.next > 1000:
        raise UsageError("--next must be between 0 and 1000")
    params = {"spec": spec, "next": args.next, "tz": args.tz, "from": args.start}
    try:
        result = ctx.call("schedule.explain", {k: v for k, v in params.items() if v is not None})
    except RpcError as exc:
        if exc.code == BAD_SCHEDULE:
            raise schedule_error(exc) from None
        if exc.code == -32602:  # a bad --tz or --from is the user's words too
            raise UsageError(exc.message) from None
        raise
    if ctx.json:
        ctx.print_json(result)
        return ExitStatus.OK
    ctx.print(result["human"])
    ctx.print(f"  kind:      {result['kind']}")
    if result.get("cron"):
        ctx.print(f"  cron:      {result['cron']}")
    ctx.print(f"  timezone:  {result['timezone']}")
    if result.get("rounded_from"):
        ctx.print(f"  rounded from {result['rounded_from']!r}")
    if result["next"]:
        ctx.print("  next:")
        for when in result["next"]:
            ctx.print(f"    {when}")
    elif result["kind"] == "manual":
        ctx.print("  next:      only when run by hand")
    else:
        ctx.print("  next:      never again")
    return ExitStatus.OK
