from __future__ import annotations

from bgcore.jsonrpc import INVALID_PARAMS, RpcError

from bgd.rpc.table import method


@method("events.subscribe")
async def subscribe(daemon, params, conn):
    """Turn the connection into a stream of `event` notifications, after `since` if given."""
    since = params.int("since")
    session_id = params.str("session")
    types = params.list("types")
    if since is not None and since < 0:
        raise RpcError(INVALID_PARAMS, "since must be 0 or a seq from an earlier event")
    if types is not None and not all(isinstance(t, str) for t in types):
        raise RpcError(INVALID_PARAMS, "types must be an array of event type names")
    if session_id is not None:
        session_id = daemon.sessions.get(session_id).id

    def match(event: dict) -> bool:
        if types and not any(event["type"] == t or event["type"].startswith(t + ".") for t in types):
            return False
        if session_id is None:
            return True
        return event.get("id") == session_id or (event.get("session") or {}).get("id") == session_id

    return conn.subscribe(since, match)
