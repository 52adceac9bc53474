from __future__ import annotations

from datetime import timedelta

from bgcore.jsonrpc import INVALID_PARAMS, RpcError

from bgd import clock
from bgd.events import clip
from bgd.rpc.table import method
from bgd.sessions.manager import STATES

# `session.list` without `all` hides sessions that ended more than this long ago.
RECENT = timedelta(hours=24)


@method("session.dispatch")
async def dispatch(daemon, params, conn):
    """Start a new background session with a prompt in a directory."""
    session = await daemon.sessions.dispatch(
        params.req_str("prompt"), params.req_str("cwd"),
        agent=params.str("agent"), name=params.str("name"),
        permission_mode=params.str("permission_mode"), model=params.str("model"),
        where=params.str("on", "local"))
    return session.to_json()


@method("session.list")
async def list_sessions(daemon, params, conn):
    """Sessions, newest first; ended ones older than a day only with `all`."""
    show_all = params.bool("all")
    cwd = params.str("cwd")
    state = params.str("state")
    if state is not None and state not in STATES:
        raise RpcError(INVALID_PARAMS, f"state must be one of {', '.join(STATES)}")
    cutoff = clock.iso(clock.now() - RECENT)
    result = []
    for session in daemon.sessions.sessions.values():
        if state is not None and session.state != state:
            continue
        if cwd is not None and session.cwd != cwd.rstrip("/") and session.cwd != cwd:
            continue
        ended = session.state in ("completed", "failed", "stopped")
        if not (show_all or state or not ended or session.pinned or session.updated_at >= cutoff):
            continue
        result.append(session.to_json())
    result.sort(key=lambda s: s["created_at"], reverse=True)
    return result


@method("session.get")
async def get(daemon, params, conn):
    """One session, with its pending request when it needs input."""
    return daemon.sessions.get(params.req_str("id")).to_json()


@method("session.transcript")
async def transcript(daemon, params, conn):
    """Transcript entries after `since` (entry numbers start at 0)."""
    session = daemon.sessions.get(params.req_str("id"))
    since = params.int("since", -1)
    limit = params.int("limit")
    full = params.bool("full")
    if limit is not None and limit < 1:
        raise RpcError(INVALID_PARAMS, "limit must be positive")
    entries = daemon.sessions.transcript(session, since, limit)
    if not full:
        for entry in entries:
            entry["data"] = clip(entry["data"])
    return {"id": session.id, "entries": entries,
            "next": entries[-1]["n"] if entries else since}


@method("session.reply")
async def reply(daemon, params, conn):
    """Send a follow-up message, or answer the pending question."""
    session = daemon.sessions.get(params.req_str("id"))
    await daemon.sessions.reply(session, params.req_str("text"))
    return session.to_json()


@method("session.respond")
async def respond(daemon, params, conn):
    """Allow or deny the pending permission request (or answer a question)."""
    session = daemon.sessions.get(params.req_str("id"))
    await daemon.sessions.respond(
        session, params.req_str("decision"), always=params.bool("always"),
        message=params.str("message"), answer=params.str("answer"), request_id=params.str("request_id"))
    return session.to_json()


@method("session.stop")
async def stop(daemon, params, conn):
    """Stop a session: interrupt its turn and end its process and loops."""
    session = daemon.sessions.get(params.req_str("id"))
    await daemon.sessions.stop(session)
    return session.to_json()


@method("session.remove")
async def remove(daemon, params, conn):
    """Stop a session if needed and delete it with its transcript."""
    session = daemon.sessions.get(params.req_str("id"))
    await daemon.sessions.remove(session)
    return {"id": session.id, "removed": True}


@method("session.pin")
async def pin(daemon, params, conn):
    """Pin (or with pinned=false unpin) a session."""
    session = daemon.sessions.get(params.req_str("id"))
    daemon.sessions.update(session, pinned=params.bool("pinned", True))
    return session.to_json()


@method("session.rename")
async def rename(daemon, params, conn):
    """Give a session a name (an empty name clears it)."""
    session = daemon.sessions.get(params.req_str("id"))
    name = params.req_str("name").strip()
    if len(name) > 200:
        raise RpcError(INVALID_PARAMS, "name must be at most 200 characters")
    daemon.sessions.update(session, name=name or None)
    return session.to_json()


@method("session.resume")
async def resume(daemon, params, conn):
    """Continue a stopped, failed or completed session (optionally with a prompt)."""
    session = daemon.sessions.get(params.req_str("id"))
    await daemon.sessions.resume(session, params.str("prompt"))
    for hook in daemon.on_resume:
        hook(session)
    return session.to_json()
