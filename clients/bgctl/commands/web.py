"""`bgctl web [--open] [--revoke]`: the web page's one-time login link (SPEC §3, §13)."""

from __future__ import annotations

from ..cli_common import ExitStatus


def register(sub, add_common) -> None:
    p = sub.add_parser("web", help="the URL, with a one-time login code, of the web page",
                       description="Print a link that logs this browser in to the web page (valid 5 minutes, "
                                   "once). --revoke ends every login instead.")
    add_common(p)
    p.add_argument("--open", action="store_true", help="open the link in the default browser too")
    p.add_argument("--revoke", action="store_true", help="end every login of the web page, in every browser")
    p.set_defaults(handler=web)


def web(args, ctx) -> int:
    if args.revoke:
        result = ctx.call("web.revoke")
        if ctx.json:
            ctx.print_json(result)
        else:
            count = result.get("revoked", 0)
            ctx.print(f"ended {count} login{'' if count == 1 else 's'} of the web page")
        return ExitStatus.OK
    result = ctx.call("web.login_code")
    if ctx.json:
        ctx.print_json(result)
    else:
        ctx.print(result["url"])
        ctx.err.write(f"open it within {result.get('valid_s', 300) // 60} minutes; it works once\n")
    if args.open:
        import webbrowser
        if not webbrowser.open(result["url"]):
            ctx.err.write("bgctl: no browser could be started; open the link by hand\n")
    return ExitStatus.OK
