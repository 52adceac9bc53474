"""bgctl daemon start | stop | status | restart."""

from __future__ import annotations

import os
import time

from ..client import Client, DaemonUnreachable, spawn_daemon
from ..cli_common import ExitStatus


def register(sub, add_common) -> None:
    parser = sub.add_parser("daemon", help="start, stop or inspect the daemon")
    add_common(parser)
    parser.add_argument("action", choices=["start", "stop", "status", "restart"])
    parser.set_defaults(handler=run)


def _status(ctx) -> dict | None:
    try:
        client = Client.connect(getattr(ctx.args, "socket", None), spawn=False)
    except DaemonUnreachable:
        return None
    with client:
        return client.call("daemon.status")


def _start(ctx) -> dict:
    from bgcore import paths
    status = _status(ctx)
    if status is not None:
        return dict(status, already_running=True)
    spawn_daemon(paths.socket_path(getattr(ctx.args, "socket", None)))
    status = _status(ctx)
    if status is None:
        raise DaemonUnreachable("bgd started but does not answer")
    return dict(status, already_running=False)


def _stop(ctx, timeout: float = 30.0) -> dict | None:
    try:
        client = Client.connect(getattr(ctx.args, "socket", None), spawn=False)
    except DaemonUnreachable:
        return None
    with client:
        answer = client.call("daemon.shutdown")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # Under systemd socket activation the socket never goes quiet: the next
        # connection starts a new bgd.  The old pid being gone is what counts: a daemon
        # stops answering before it has closed its store and let go of its lock, and a
        # bgd started meanwhile would find it still running (`daemon restart`).
        status = _status_quiet(ctx)
        if status is not None and status.get("pid") != answer["pid"]:
            return answer
        if status is None and not _running(answer["pid"]):
            return answer
        time.sleep(0.05)
    raise DaemonUnreachable(f"bgd (pid {answer['pid']}) did not stop within {timeout:.0f}s")


def _running(pid: int) -> bool:
    """Whether process `pid` is still there (a zombie, exited and not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # another user's process: the pid was reused, the daemon (ours) is gone
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return True   # no /proc (macOS): alive as far as kill(0) can tell


def _status_quiet(ctx):
    try:
        return _status(ctx)
    except Exception:
        return None


def run(args, ctx) -> int:
    if args.action == "status":
        status = _status(ctx)
        if status is None:
            raise DaemonUnreachable("bgd is not running")
        if ctx.json:
            ctx.print_json(status)
        else:
            counts = ", ".join(f"{n} {state}" for state, n in status["counts"].items() if n) or "no sessions"
            ctx.print(f"bgd {status['version']} running · pid {status['pid']} · up {status['uptime_s']:.0f}s · "
                      f"{status['socket']}\n{counts}")
            if status.get("config_error"):
                ctx.print(f"config error (last good config in use): {status['config_error']}")
            http = status.get("http") or {}
            if http.get("listening"):
                ctx.print(f"http: {http['url']}")
            elif http.get("error"):
                ctx.print(f"http: not listening: {http['error']}")
        return ExitStatus.OK
    if args.action == "start":
        status = _start(ctx)
        if ctx.json:
            ctx.print_json(status)
        else:
            verb = "already running" if status["already_running"] else "started"
            ctx.print(f"bgd {verb} · pid {status['pid']} · {status['socket']}")
        return ExitStatus.OK
    if args.action == "stop":
        answer = _stop(ctx)
        if ctx.json:
            ctx.print_json({"stopped": answer is not None, "pid": answer and answer["pid"]})
        else:
            ctx.print(f"bgd stopped (pid {answer['pid']})" if answer else "bgd is not running")
        return ExitStatus.OK
    # restart
    _stop(ctx)
    status = _start(ctx)
    if ctx.json:
        ctx.print_json(status)
    else:
        ctx.print(f"bgd restarted · pid {status['pid']}")
    return ExitStatus.OK
