"""`loop.*`: session-scoped loop tasks (SPEC §6) and the calls behind the MCP tools (§5.4).

Thin: read params, parse schedules, delegate to the LoopRunner (`daemon.loops`).
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

from bgcore.jsonrpc import BAD_SCHEDULE, INVALID_PARAMS, NOT_FOUND, RpcError

from bgd.loops.prompt import LoopPromptError, bare_prompt
from bgd.loops.runner import COMMAND_BACKEND_INTERVAL, COMMAND_BACKEND_NOTE
from bgd.agents.base import driver_class
from bgd.rpc.table import method


def _runner(daemon):
    runner = getattr(daemon, "loops", None)
    if runner is None:
        raise RpcError(INVALID_PARAMS, "loops are not enabled in this daemon")
    return runner


def _schedule_error(exc) -> RpcError:
    return RpcError(BAD_SCHEDULE, str(exc), {"position": exc.position, "fragment": exc.fragment,
                                             "example": exc.example})


def _now(runner) -> datetime:
    return datetime.fromtimestamp(runner.now(), timezone.utc)


def _first_prompt(runner, prompt: str | None, cwd: str) -> str:
    """The prompt of the first iteration; checks loop.md now, so a broken one is refused at once."""
    if prompt is not None:
        return prompt
    try:
        return bare_prompt(cwd, runner.home())[0]
    except LoopPromptError as exc:
        raise RpcError(INVALID_PARAMS, str(exc)) from None


async def _target(daemon, params, first_prompt_for, *, start_text: str):
    """The session named by `session`, or a new one (origin "loop") dispatched, unstarted, in `cwd`."""
    runner = _runner(daemon)
    session_id = params.str("session")
    if session_id is not None:
        if params.str("cwd") is not None:
            raise RpcError(INVALID_PARAMS, "give either session or cwd, not both")
        session = runner.live_session(session_id)
        return session, first_prompt_for(session.cwd, session.backend)
    cwd = params.str("cwd")
    if cwd is None:
        raise RpcError(INVALID_PARAMS, "missing param 'session' or 'cwd' (the loop's session, or a directory "
                                       "to start one in)")
    if not os.path.isabs(cwd) or not os.path.isdir(cwd):
        raise RpcError(INVALID_PARAMS, f"cwd {cwd!r} must be an absolute path of an existing directory")
    agent = daemon.config.agent(params.str("agent"))
    backend = agent.backend if agent is not None else "claude"
    prepared = first_prompt_for(cwd, backend)
    session = await daemon.sessions.dispatch(
        start_text if start_text else prepared[2], cwd, agent=params.str("agent"), name=params.str("name"),
        permission_mode=params.str("permission_mode"), model=params.str("model"), origin="loop", start=False)
    return session, prepared


@method("loop.create")
async def create(daemon, params, conn):
    """Create a loop task in a session (or in a new session in cwd); its first iteration runs at once."""
    from bgcore.schedule import ScheduleError, parse_interval, parse_schedule, split_loop_args

    runner = _runner(daemon)
    words = params.list("words")
    interval_text, prompt = params.str("interval"), params.str("prompt")
    if words is not None:
        if not all(isinstance(w, str) for w in words):
            raise RpcError(INVALID_PARAMS, "param 'words' must be an array of strings")
        interval_text, prompt = split_loop_args(words)
    prompt = prompt if prompt and prompt.strip() else None
    cron = params.str("cron")
    recurring = params.bool("recurring", True)

    schedule = None
    try:
        if cron is not None:
            if prompt is None:
                raise RpcError(INVALID_PARAMS, "a cron loop needs a prompt")
            schedule = parse_schedule(cron, now=_now(runner), tz=runner.tz)
            if schedule.kind != "cron":
                raise RpcError(BAD_SCHEDULE, f"{cron!r} is not a cron schedule; write 5 fields such as '*/10 * * * *'")
        elif interval_text is not None:
            schedule = parse_interval(interval_text)
    except ScheduleError as exc:
        raise _schedule_error(exc) from None

    def prepare(cwd: str, backend: str):
        sched, note = schedule, None
        if sched is None and cron is None and not driver_class(backend).schedules_wakeups:
            sched, note = parse_interval(COMMAND_BACKEND_INTERVAL), COMMAND_BACKEND_NOTE
        return sched, note, _first_prompt(runner, prompt, cwd)

    session, (sched, note, _) = await _target(daemon, params, prepare, start_text="")
    if cron is not None:
        if recurring:
            loop = runner.create_fixed(session, sched, prompt, run_now=False, source="mcp")
        else:
            from bgcore.schedule import Schedule, next_fire_time
            at = next_fire_time(sched, _now(runner), runner.tz)
            once = Schedule(cron, "once", None, at, f"once at {at:%Y-%m-%d %H:%M} ({sched.human})")
            loop = runner.create_once(session, once, prompt, source="mcp")
    elif sched is not None:
        loop = runner.create_fixed(session, sched, prompt, note=note)
    else:
        loop = runner.create_dynamic(session, prompt)
    await runner.run_due()
    return {**loop.to_json(), "session_state": session.state}


@method("loop.remind")
async def remind(daemon, params, conn):
    """A one-shot reminder in a session (or a new one in cwd): "in 45 minutes push the release branch"."""
    from bgcore.schedule import ScheduleError, parse_when_and_what

    runner = _runner(daemon)
    text = params.req_str("text")
    try:
        schedule, prompt = parse_when_and_what(text, now=_now(runner), tz=runner.tz)
    except ScheduleError as exc:
        raise _schedule_error(exc) from None
    session, _ = await _target(daemon, params, lambda cwd, backend: (None, None, prompt), start_text=prompt)
    loop = runner.create_once(session, schedule, prompt)
    return {**loop.to_json(), "session_state": session.state}


@method("loop.list")
async def list_loops(daemon, params, conn):
    """Loop tasks, of one session or all, oldest first (a stopped session's loops are `suspended`)."""
    runner = _runner(daemon)
    session_id = params.str("session")
    loops = runner.book.loops.values()
    if session_id is not None:
        session = daemon.sessions.get(session_id)
        loops = [loop for loop in loops if loop.session_id == session.id]
    return [loop.to_json() for loop in sorted(loops, key=lambda l: (l.created_at, l.id))]


@method("loop.stop")
async def stop(daemon, params, conn):
    """End a loop task (with `session`: only if it belongs to that session)."""
    runner = _runner(daemon)
    loop_id = params.req_str("id")
    loop = runner.book.get(loop_id)
    if loop is None:
        matches = [l for l in runner.book.loops.values() if loop_id and l.id.startswith(loop_id)]
        loop = matches[0] if len(matches) == 1 else None
    session_id = params.str("session")
    if loop is not None and session_id is not None and loop.session_id != runner.live_session(session_id).id:
        loop = None
    if loop is None:
        raise RpcError(NOT_FOUND, f"no loop {loop_id!r}; `bgctl loop ls` lists them")
    runner.stop(loop, "stopped")
    return {**loop.to_json(), "stopped": True}


@method("loop.wakeup")
async def wakeup(daemon, params, conn):
    """The agent picks its dynamic loop's next wake (schedule_wakeup), or ends the loop with stop."""
    runner = _runner(daemon)
    session = runner.live_session(params.req_str("session"))
    stop_loop = params.bool("stop")
    delay = params.num("delay_seconds")
    if delay is None and not stop_loop:
        raise RpcError(INVALID_PARAMS, "missing param 'delay_seconds' (a number of seconds, 60-3600)")
    reason = (params.str("reason") or "").strip()
    if not reason and not stop_loop:
        raise RpcError(INVALID_PARAMS, "missing param 'reason' (a few words the user sees)")
    return runner.wakeup(session, delay or 0, reason, params.str("prompt"), stop_loop)
