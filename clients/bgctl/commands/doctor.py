"""`bgctl doctor [--json]`: what works and what does not, each problem with its fix.

Exit 0 when nothing fails (warnings allowed), 1 otherwise.  It never starts the daemon.  The checks
live in `bgctl.health`, imported by the handler, so no other command (nor `bgctl --help`) loads them.
"""

from __future__ import annotations

from ..cli_common import ExitStatus

MARKS = {"ok": "✓", "warn": "!", "fail": "✗"}


def register(sub, add_common) -> None:
    p = sub.add_parser("doctor", help="check the daemon, socket, config, tasks, agents, systemd units and disk",
                       description="Says what works and what does not, each problem with its fix. "
                                   "Exit 0 when nothing fails, 1 otherwise. Never starts the daemon.")
    add_common(p)
    p.set_defaults(handler=run)


def run(args, ctx) -> int:
    from .. import health

    checks = health.run_all(getattr(args, "socket", None))
    ok = not any(check.status == health.FAIL for check in checks)
    if ctx.json:
        ctx.print_json({"ok": ok, "bgctl_version": health.bgctl_version(),
                        "checks": [check.to_json() for check in checks]})
    else:
        width = max(len(check.name) for check in checks)
        for check in checks:
            line = f"{MARKS[check.status]} {check.name:<{width}}  {check.detail}"
            ctx.print(line + (f" — fix: {check.fix}" if check.fix and check.status != health.OK else ""))
        problems = sum(check.status == health.FAIL for check in checks)
        warnings = sum(check.status == health.WARN for check in checks)
        ctx.print("all well" + (f" ({warnings} warning{'s' if warnings > 1 else ''})" if warnings else "")
                  if ok else f"{problems} problem{'s' if problems > 1 else ''}"
                  + (f", {warnings} warning{'s' if warnings > 1 else ''}" if warnings else ""))
    return ExitStatus.OK if ok else ExitStatus.ERROR
