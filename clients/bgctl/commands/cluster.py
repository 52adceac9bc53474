"""`bgctl cluster status [--json]`: the Temporal server, its workers, their slots and runs (SPEC §14)."""

from __future__ import annotations

from ..cli_common import ExitStatus


def register(sub, add_common) -> None:
    p = sub.add_parser("cluster", help="the cluster of workers ([cluster] in config.toml)",
                       description="bgctl cluster status")
    add_common(p)
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    p.set_defaults(handler=status)
    s = verbs.add_parser("status", help="the server, each worker with its free slots, and the runs on it")
    add_common(s)
    s.set_defaults(handler=status)


def status(args, ctx) -> int:
    answer = ctx.call("cluster.status", {})
    if ctx.json:
        ctx.print_json(answer)
        return ExitStatus.OK if answer.get("reachable") else ExitStatus.ERROR
    ctx.print(status_text(answer))
    return ExitStatus.OK if answer.get("reachable") else ExitStatus.ERROR


def status_text(answer: dict) -> str:
    head = f"temporal {answer['temporal']} · namespace {answer['namespace']} · task queue {answer['task_queue']}"
    if not answer.get("reachable"):
        return f"{head}\n  unreachable: {answer.get('error')}"
    lines = [head + f" · server {answer.get('server_version') or '?'}",
             f"this daemon: {answer['owner']} · {answer['open_runs']} open run(s)"
             + (f", {answer['waiting']} waiting for a worker" if answer.get("waiting") else "")]
    workers = answer.get("workers") or []
    if not workers:
        lines.append("no workers connected (start one: bgd worker --temporal HOST:PORT)")
        return "\n".join(lines)
    rows = [("WORKER", "SLOTS", "USED", "FREE", "RUNS")]
    for worker in workers:
        if not worker.get("reachable"):
            rows.append((worker["name"], "?", "?", "?", f"not answering: {worker.get('error')}"))
            continue
        runs = ", ".join(r["session"] + ("" if r.get("mine") else " (another daemon's)") for r in worker["runs"])
        rows.append((worker["name"], str(worker["slots"]), str(worker["in_use"]), str(worker["free"]), runs or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines += ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r[:-1])) + "  " + r[-1] for r in rows]
    return "\n".join(lines)
