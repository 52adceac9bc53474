"""`bgctl routine ...`: routines (SPEC §3, §8), kept in routines.toml by the daemon.

    bgctl routine add NAME --repo URL[#REF]... [--schedule SPEC]... [--api] [--github EVENT[,EVENT]... --filter F=V...]
                      [--agent A] [--model M] [--push PATTERN]... [--network N] [--setup CMD] [--env-file F]
                      [--mcp-config F] [--timeout T] [--overlap P] [--description D] [--prompt-file F] PROMPT...
    bgctl routine ls | show NAME | edit NAME [...same flags] | rm NAME | pause NAME | resume NAME
    bgctl routine run NAME [--text TEXT]
    bgctl routine token NAME
    bgctl routine runs [NAME]
    bgctl routine deliveries

A filter is FIELD=VALUE (equals; true/false for draft, merged and prerelease; a label for labels) or
FIELD:OPERATOR=VALUE with an operator of SPEC §8 (contains, starts_with, matches, one_of and
not_one_of with comma-separated values; labels:include and labels:exclude).
"""

from __future__ import annotations

import os

from bgcore.jsonrpc import BAD_SCHEDULE, RpcError

from ..cli_common import REMAINDER, SUPPRESS, ExitStatus, UsageError, add_common
from ..render import OUTCOME_MARKS, age, one_line
from .schedule import schedule_error

OVERLAPS = ("skip", "buffer_one", "replace", "allow")
EXAMPLE = ('bgctl routine add pr-review --repo https://github.com/acme/api --github pull_request.opened '
           '--filter base=main review the pull request and push fixes to claude/review')


def register(sub, add_common) -> None:
    p = sub.add_parser("routine", help="routines: autonomous runs fired by a schedule, an HTTP call or GitHub",
                       description="bgctl routine add|ls|show|edit|rm|pause|resume|run|token|runs|deliveries")
    add_common(p)
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    p.set_defaults(handler=lambda args, ctx: ls(args, ctx))

    a = verbs.add_parser("add", help="add a routine to routines.toml")
    add_common(a)
    a.add_argument("name")
    _flags(a, edit=False)
    a.set_defaults(handler=add)

    e = verbs.add_parser("edit", help="change a routine's fields or triggers")
    add_common(e)
    e.add_argument("name")
    _flags(e, edit=True)
    e.set_defaults(handler=edit)

    v = verbs.add_parser("ls", help="every routine with its triggers, and the file's errors")
    add_common(v)
    v.set_defaults(handler=ls)

    for verb, help_text in (("show", "one routine"), ("rm", "remove a routine from routines.toml"),
                            ("pause", "stop every trigger of a routine (enabled = false)"),
                            ("resume", "let a paused routine fire again"),
                            ("token", "a new API token, shown once, and the curl line that fires it")):
        v = verbs.add_parser(verb, help=help_text)
        add_common(v)
        v.add_argument("name")
        v.set_defaults(handler=globals()[verb])

    r = verbs.add_parser("run", help="fire a routine now: prints the run id, session id and session URL")
    add_common(r)
    r.add_argument("name")
    r.add_argument("--text", help="context for this run, added to the prompt (as the API's text)")
    r.add_argument("--rebuild", action="store_true", help="run the setup script again instead of its cached result")
    r.set_defaults(handler=run)

    r = verbs.add_parser("runs", help="runs newest first: trigger, status, outcome, session, pushed refs")
    add_common(r)
    r.add_argument("name", nargs="?")
    r.add_argument("--limit", type=int, default=50)
    r.set_defaults(handler=runs)

    d = verbs.add_parser("deliveries", help="recent GitHub deliveries: per routine, matched or which filter said no")
    add_common(d)
    d.add_argument("--limit", type=int, default=30)
    d.set_defaults(handler=deliveries)


def _flags(p, *, edit: bool) -> None:
    p.add_argument("--repo", action="append", metavar="URL[#REF]",
                   help="a repository cloned for every run (git URL or path; #REF picks a branch, tag or commit); "
                        "repeat for more; the first is the working directory" + ("; replaces them all" if edit else ""))
    p.add_argument("--schedule", "-s", action="append", metavar="SPEC",
                   help='a schedule trigger, e.g. "weekdays at 9am" (at least hourly); repeat for more')
    p.add_argument("--api", action="store_true", default=None, help="an API trigger (POST /v1/routines/NAME/fire)")
    p.add_argument("--rate-limit", dest="rate_limit", type=int, metavar="N", help="API fires an hour (default 60)")
    p.add_argument("--github", action="append", metavar="EVENT[,EVENT]",
                   help="a GitHub trigger for these events (pull_request.opened, release.published, ...); "
                        "repeat or separate with commas")
    p.add_argument("--filter", action="append", metavar="FIELD=VALUE",
                   help="a filter of the GitHub trigger: FIELD=VALUE or FIELD:OPERATOR=VALUE")
    p.add_argument("--hourly-cap", dest="hourly_cap", type=int, metavar="N",
                   help="GitHub-started runs an hour (default 20)")
    p.add_argument("--agent")
    p.add_argument("--model")
    p.add_argument("--push", action="append", metavar="PATTERN", help='branches a run may push (default "claude/*")')
    p.add_argument("--network", help="none | trusted | full | DOMAIN,...")
    p.add_argument("--setup", metavar="CMD", help="a setup script run before the agent")
    p.add_argument("--env-file", dest="env_file", metavar="F", help="a dotenv file of secrets for the agent")
    p.add_argument("--mcp-config", dest="mcp_config", metavar="F", help="MCP servers for the runs (JSON)")
    p.add_argument("--timeout", help='how long a run may take (default "4h")')
    p.add_argument("--overlap", choices=OVERLAPS, help="when a run is still going: allow (default), skip, "
                                                       "buffer_one, replace")
    p.add_argument("--timezone", help="IANA zone for the schedules (default: the machine's)")
    p.add_argument("--description")
    p.add_argument("--prompt-file", dest="prompt_file", help="read the prompt from this file at each run")
    p.add_argument("--disabled", dest="enabled", action="store_false", default=None, help="add it paused")
    if edit:
        p.add_argument("--no-schedule", dest="no_schedule", action="store_true", help="remove its schedule triggers")
        p.add_argument("--no-api", dest="no_api", action="store_true", help="remove its API trigger")
        p.add_argument("--no-github", dest="no_github", action="store_true", help="remove its GitHub triggers")
    p.add_argument("prompt", nargs=REMAINDER, metavar="PROMPT...")


def _flags_among_words(args, *, edit: bool) -> list[str]:
    """Flags may also follow NAME or stand among the prompt's words (REMAINDER took them all)."""
    from ..arguments import Spec
    from ..full_parser import build
    spec = Spec(prog=f"bgctl routine {'edit' if edit else 'add'}", add_help=False)
    add_common(spec)
    _flags(spec, edit=edit)
    parser = build(spec)
    parser._actions[-1].nargs = "*"
    words = list(args.prompt)
    tail: list[str] = []
    if "--" in words:
        cut = words.index("--")
        words, tail = words[:cut], words[cut + 1:]
    later = parser.parse_intermixed_args(words)
    for key, value in vars(later).items():
        if key == "prompt" or value is None or value == SUPPRESS or value is False:
            continue
        current = getattr(args, key, None)
        if isinstance(value, list) and isinstance(current, list):
            value = current + value
        setattr(args, key, value)
    return list(later.prompt) + tail


def _path(value: str | None) -> str | None:
    return os.path.abspath(os.path.expanduser(value)) if value else value


def _repo(value: str) -> dict | str:
    url, _, ref = value.partition("#")
    if not url:
        raise UsageError(f"--repo {value!r} has no URL", "example: --repo https://github.com/acme/api#main")
    local = os.path.expanduser(url)
    if not ("://" in url or (":" in url and "@" in url.split(":")[0])) and os.path.exists(local):
        url = os.path.abspath(local)
    return {"url": url, "ref": ref} if ref else url


def _filter(text: str, into: dict) -> None:
    from bgcore.github import FIELDS
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise UsageError(f"--filter {text!r} is not FIELD=VALUE", "example: --filter base=main --filter "
                                                                  "title:matches='.*hotfix.*'")
    field, _, op = key.partition(":")
    kind = FIELDS.get(field, ("text",))[0]
    if kind == "bool":
        if value.lower() not in ("true", "false"):
            raise UsageError(f"--filter {field} takes true or false, not {value!r}")
        into[field] = value.lower() == "true"
        return
    if kind == "labels":
        op = op or "include"
    if not op:
        into[field] = value
        return
    listed = op in ("one_of", "not_one_of", "include", "exclude")
    arg = [v.strip() for v in value.split(",") if v.strip()] if listed else value
    current = into.get(field)
    table = dict(current) if isinstance(current, dict) else ({"equals": current} if current is not None else {})
    if listed and isinstance(table.get(op), list):
        arg = table[op] + arg
    table[op] = arg
    into[field] = table


def _schedule_triggers(args) -> list[dict]:
    return [{"schedule": spec} for spec in args.schedule or []]


def _api_trigger(args) -> dict:
    return {"api": True, **({"rate_limit": args.rate_limit} if args.rate_limit else {})}


def _events(args) -> list[str]:
    return [e.strip() for value in args.github or [] for e in value.split(",") if e.strip()]


def _github_trigger(args, filters: dict) -> dict:
    return {"github": _events(args), **filters, **({"hourly_cap": args.hourly_cap} if args.hourly_cap else {})}


def _params(args, *, edit: bool) -> dict:
    prompt = " ".join(_flags_among_words(args, edit=edit)).strip()
    params: dict = {"name": args.name, "agent": args.agent, "model": args.model, "timeout": args.timeout,
                    "overlap": args.overlap, "timezone": args.timezone, "description": args.description,
                    "prompt_file": _path(args.prompt_file), "enabled": args.enabled, "prompt": prompt or None}
    if args.repo:
        params["repos"] = [_repo(r) for r in args.repo]
    if args.push:
        params["push"] = list(args.push)
    environment = {}
    if args.env_file is not None:
        environment["env_file"] = _path(args.env_file)
    if args.setup is not None:
        environment["setup"] = args.setup
    if args.network is not None:
        network = args.network
        environment["network"] = network if network in ("none", "trusted", "full") else \
            [d.strip() for d in network.split(",") if d.strip()]
    if environment:
        params["environment"] = environment
    if args.mcp_config is not None:
        params["connectors"] = {"mcp_config": _path(args.mcp_config)}
    if args.filter and not args.github and not edit:
        raise UsageError("--filter belongs to a GitHub trigger: give --github EVENT as well", f"example: {EXAMPLE}")
    if not edit:
        if not args.repo:
            raise UsageError("missing --repo", f"example: {EXAMPLE}")
        if not prompt and not args.prompt_file:
            raise UsageError("missing prompt", f"example: {EXAMPLE}")
        filters: dict = {}
        for text in args.filter or []:
            _filter(text, filters)
        triggers = _schedule_triggers(args)
        if args.api:
            triggers.append(_api_trigger(args))
        if args.github:
            triggers.append(_github_trigger(args, filters))
        if triggers:
            params["triggers"] = triggers
    return {k: v for k, v in params.items() if v is not None}


def _edited_triggers(args, current: list[dict]) -> list[dict] | None:
    """The routine's triggers after this edit's trigger flags, or None when they stay as they are."""
    kinds_changed = (args.schedule or args.no_schedule or args.api or args.no_api or args.github or args.no_github
                     or args.filter or args.rate_limit or args.hourly_cap)
    if not kinds_changed:
        return None
    by_kind: dict[str, list[dict]] = {"schedule": [], "api": [], "github": []}
    for trigger in current:
        by_kind[trigger["kind"]].append(trigger["toml"])
    if args.schedule or args.no_schedule:
        by_kind["schedule"] = [] if args.no_schedule else _schedule_triggers(args)
    if args.no_api:
        by_kind["api"] = []
    elif args.api or args.rate_limit:
        by_kind["api"] = [_api_trigger(args)]
    if args.no_github:
        by_kind["github"] = []
    elif args.github or args.filter or args.hourly_cap:
        filters: dict = {}
        for text in args.filter or []:
            _filter(text, filters)
        if args.github:
            by_kind["github"] = [_github_trigger(args, filters)]
        elif len(by_kind["github"]) == 1:
            old = by_kind["github"][0]
            kept = {"github": old["github"], **({"hourly_cap": old["hourly_cap"]} if "hourly_cap" in old else {})}
            if args.hourly_cap:
                kept["hourly_cap"] = args.hourly_cap
            by_kind["github"] = [{**kept, **(filters if args.filter else {k: v for k, v in old.items()
                                                                          if k not in ("github", "hourly_cap")})}]
        else:
            raise UsageError("--filter and --hourly-cap change the GitHub trigger: give --github EVENT... too "
                             "(the routine has " + ("none" if not by_kind["github"] else "several") + ")")
    return by_kind["schedule"] + by_kind["api"] + by_kind["github"]


def _call(ctx, method: str, params: dict):
    try:
        return ctx.call(method, params)
    except RpcError as exc:
        if exc.code == BAD_SCHEDULE:
            raise schedule_error(exc) from None
        if exc.code == -32602:
            raise UsageError(exc.message) from None
        raise


def _triggers_text(routine: dict) -> str:
    parts = []
    for t in routine["triggers"]:
        if t["kind"] == "schedule":
            parts.append(t["schedule"] + (" (off)" if not t["enabled"] else ""))
        elif t["kind"] == "api":
            parts.append("api" + (" (off)" if not t["enabled"] else ""))
        else:
            parts.append("github " + ",".join(t["github"]) + (" (off)" if not t["enabled"] else ""))
    return "; ".join(parts) or "by hand only"


def _next(routine: dict) -> str | None:
    times = [t["next_at"] for t in routine["triggers"] if t.get("next_at")]
    return min(times) if times else None


def add(args, ctx) -> int:
    routine = _call(ctx, "routine.add", _params(args, edit=False))
    if ctx.json:
        ctx.print_json(routine)
    else:
        ctx.print(f"added {routine['name']} · {_triggers_text(routine)}" +
                  (f" · next {_next(routine)[:16].replace('T', ' ')}" if _next(routine) else ""))
        if any(t["kind"] == "api" for t in routine["triggers"]) and not routine["token"]["set"]:
            ctx.print(f"make its API token with: bgctl routine token {routine['name']}")
    return ExitStatus.OK


def edit(args, ctx) -> int:
    params = _params(args, edit=True)
    current = ctx.call("routine.get", {"name": args.name})
    triggers = _edited_triggers(args, current["triggers"])
    if triggers is not None:
        params["triggers"] = triggers
    if len(params) == 1:
        raise UsageError("nothing to change", f"example: bgctl routine edit {args.name} --schedule hourly")
    routine = _call(ctx, "routine.edit", params)
    ctx.print_json(routine) if ctx.json else ctx.print(f"changed {routine['name']} · {_triggers_text(routine)}")
    return ExitStatus.OK


def ls(args, ctx) -> int:
    result = ctx.call("routine.list")
    if ctx.json:
        ctx.print_json(result)
        return ExitStatus.OK
    routines = result["routines"]
    if not routines:
        ctx.print(f"no routines (add one with `bgctl routine add`, or edit {result['file']})")
    else:
        rows = [("NAME", "STATUS", "TRIGGERS", "NEXT", "REPO")]
        for r in routines:
            status = r["status"] + (" (running)" if r.get("running") else "")
            rows.append((r["name"], status, one_line(_triggers_text(r), 50),
                         (_next(r) or "-")[:16].replace("T", " "), one_line(r["repos"][0]["url"], 40)))
        ctx.print(_table(rows))
    for error in result["errors"]:
        ctx.print(f"error: {error['message']}")
    if result["errors"]:
        ctx.print("the last valid definition of each routine keeps working until the file is fixed")
    return ExitStatus.OK


def show(args, ctx) -> int:
    r = ctx.call("routine.get", {"name": args.name})
    if ctx.json:
        ctx.print_json(r)
        return ExitStatus.OK
    ctx.print(f"{r['name']}  {r['status']}")
    for key in ("description", "agent", "model", "timezone", "overlap", "prompt_file"):
        if r.get(key):
            ctx.print(f"  {key + ':':16}{r[key]}")
    ctx.print(f"  {'timeout:':16}{r['timeout'] or '4h'}")
    ctx.print(f"  {'push:':16}{', '.join(r['push']) or '(nothing)'}")
    for i, repo in enumerate(r["repos"]):
        ctx.print(f"  {'repos:' if i == 0 else '':16}{repo['url']}" + (f" at {repo['ref']}" if repo.get("ref") else ""))
    env = r["environment"]
    if env.get("env_file"):
        ctx.print(f"  {'env_file:':16}{env['env_file']}")
        info = env.get("env") or {}
        if info.get("error"):
            ctx.print(f"  {'':16}error: {info['error']}")
        for key, value in (info.get("values") or {}).items():
            ctx.print(f"  {'':16}{key}={value}")
    network = env.get("network", "full")
    ctx.print(f"  {'network:':16}" + (", ".join(network) if isinstance(network, list) else network))
    if env.get("setup") or env.get("setup_file"):
        setup = env.get("setup_file") or one_line(env["setup"], 90)
        ctx.print(f"  {'setup:':16}{setup}" + (f" (at most {env['setup_timeout']})" if env.get("setup_timeout") else ""))
    if env.get("grant"):
        ctx.print(f"  {'grant:':16}{', '.join(env['grant'])}")
    if r["connectors"].get("mcp_config"):
        ctx.print(f"  {'mcp_config:':16}{r['connectors']['mcp_config']}")
    for t in r["triggers"]:
        if t["kind"] == "schedule":
            line = f"schedule {t['schedule']} ({t['human']})" + (f", next {t['next_at']}" if t.get("next_at") else "")
        elif t["kind"] == "api":
            line = f"api {t['url']} (at most {t['rate_limit']} an hour; token {'set' if r['token']['set'] else 'not made yet: bgctl routine token ' + r['name']})"
        else:
            filters = ", ".join(f"{k}={v}" for k, v in t["filters"].items())
            line = f"github {', '.join(t['github'])}" + (f" where {filters}" if filters else "") + \
                   f" (at most {t['hourly_cap']} runs an hour)"
        ctx.print(f"  {'trigger:':16}{line}" + ("" if t["enabled"] else " [disabled]"))
    if r.get("prompt"):
        ctx.print(f"  {'prompt:':16}{one_line(r['prompt'], 100)}")
    return ExitStatus.OK


def rm(args, ctx) -> int:
    result = ctx.call("routine.remove", {"name": args.name})
    ctx.print_json(result) if ctx.json else ctx.print(f"removed {args.name} (its runs are kept)")
    return ExitStatus.OK


def pause(args, ctx) -> int:
    routine = ctx.call("routine.pause", {"name": args.name})
    ctx.print_json(routine) if ctx.json else ctx.print(f"paused {args.name}")
    return ExitStatus.OK


def resume(args, ctx) -> int:
    routine = ctx.call("routine.resume", {"name": args.name})
    ctx.print_json(routine) if ctx.json else ctx.print(f"resumed {args.name}")
    return ExitStatus.OK


def token(args, ctx) -> int:
    result = ctx.call("routine.token", {"name": args.name})
    if ctx.json:
        ctx.print_json(result)
        return ExitStatus.OK
    ctx.print(result["token"])
    ctx.err.write("this token is shown once (only its hash is kept) and revokes the previous one; fire with:\n")
    ctx.err.write(result["curl"] + "\n")
    if result.get("note"):
        ctx.err.write(f"note: {result['note']}\n")
    return ExitStatus.OK


def run(args, ctx) -> int:
    rec = ctx.call("routine.run", {"name": args.name, **({"text": args.text} if args.text else {}),
                                   **({"rebuild": True} if args.rebuild else {})})
    if ctx.json:
        ctx.print_json(rec)
    elif rec.get("session_id"):
        ctx.print(f"started · run {rec['id']} · session {rec['session_id']} · {rec['session_url']}")
    elif rec["status"] == "queued":
        ctx.print(f"queued · run {rec['id']} · {rec.get('reason')}")
    else:
        ctx.err.write(f"bgctl: run {rec['id']} of {args.name} did not start: {rec['status']}"
                      + (f": {rec['error']}" if rec.get("error") else "") + "\n")
        return ExitStatus.ERROR
    return ExitStatus.OK


def status_text(rec: dict) -> str:
    status = rec["status"]
    if rec.get("reason"):
        status += f" ({rec['reason']})"
    if rec.get("count", 1) > 1:
        status += f" ×{rec['count']}"
    return status


def outcome_text(rec: dict) -> str:
    outcome = rec.get("outcome")
    if outcome is None:
        return "-"
    return f"{OUTCOME_MARKS.get(outcome, '')} {outcome.replace('_', ' ')}".strip()


def pushed_text(rec: dict) -> str:
    parts = []
    for p in rec.get("pushed") or []:
        ref = p["ref"].removeprefix("refs/heads/")
        change = "deleted" if p.get("deleted") else f"{p['old'][:7]}→{p['new'][:7]}"
        parts.append(f"{ref} {change}" + ("" if p["allowed"] else " ✗ OUTSIDE push"))
    for p in rec.get("refused_pushes") or []:
        parts.append(f"{p['ref'].removeprefix('refs/heads/')} refused")
    return ", ".join(parts) or "-"


def prepared_text(rec: dict) -> str:
    """How the run was prepared: its setup cache and how long it took (`hit 0.4s`)."""
    seconds = rec.get("prepare_s")
    took = f"{seconds:.1f}s" if isinstance(seconds, (int, float)) else ""
    return " ".join(part for part in (rec.get("cache") or "", took) if part) or "-"


def blocked_text(rec: dict) -> str:
    blocked = rec.get("blocked") or {}
    if not blocked:
        return "-" if rec.get("environment", {}).get("confined") else ""
    total = sum(blocked.values())
    return f"{total} ({len(blocked)} host{'s' if len(blocked) != 1 else ''})"


def runs(args, ctx) -> int:
    records = ctx.call("routine.runs", {"limit": args.limit, **({"name": args.name} if args.name else {})})
    if ctx.json:
        ctx.print_json(records)
        return ExitStatus.OK
    if not records:
        ctx.print(f"{args.name} has not run yet" if args.name else "no routine has run yet")
        return ExitStatus.OK
    rows = [("RUN", "ROUTINE", "TRIGGER", "WHEN", "STATUS", "OUTCOME", "SESSION", "PREPARED", "BLOCKED", "PUSHED")]
    for r in records:
        rows.append((r["id"], r["routine"], r["trigger"], age(r["created_at"]), status_text(r), outcome_text(r),
                     r.get("session_id") or "-", prepared_text(r), blocked_text(r) or "-", pushed_text(r)))
    ctx.print(_table(rows))
    for r in records:
        if r.get("error") and r["status"] not in ("finished",):
            ctx.print(f"{r['id']}: {one_line(r['error'], 160)}")
        if r.get("blocked"):
            hosts = sorted(r["blocked"].items(), key=lambda item: (-item[1], item[0]))
            ctx.print(f"{r['id']}: blocked by network policy: "
                      + ", ".join(f"{host} ×{count}" for host, count in hosts[:10])
                      + (f", and {len(hosts) - 10} more" if len(hosts) > 10 else ""))
    return ExitStatus.OK


def deliveries(args, ctx) -> int:
    records = ctx.call("routine.deliveries", {"limit": args.limit})
    if ctx.json:
        ctx.print_json(records)
        return ExitStatus.OK
    if not records:
        ctx.print("no GitHub delivery yet")
        return ExitStatus.OK
    for d in records:
        event = d["event"] + (f".{d['action']}" if d.get("action") else "")
        dup = f" (+{d['duplicates']} redeliveries, ignored)" if d.get("duplicates") else ""
        ctx.print(f"{d['id']}  {event}  {d.get('repository') or '-'}  {age(d.get('received_at_iso'))}{dup}")
        if not d["results"]:
            ctx.print("  no routine has a GitHub trigger")
        for res in d["results"]:
            if res["matched"] and res.get("status") != "skipped":
                ctx.print(f"  ✓ {res['routine']}: run {res.get('run_id')}")
            elif res["matched"]:
                ctx.print(f"  ! {res['routine']}: matched, skipped ({res.get('reason')})")
            else:
                ctx.print(f"  ✗ {res['routine']}: {res['reason']}")
    return ExitStatus.OK


def _table(rows: list[tuple]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows)
