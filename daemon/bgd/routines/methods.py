"""`routine.*`: routines (SPEC §8). Thin: the work is in runner.RoutineService (`daemon.routines`) and
editing.py."""

from __future__ import annotations

from bgcore.jsonrpc import INVALID_PARAMS, INVALID_STATE, RpcError
from bgcore.routines_file import FIELDS
from bgd.rpc.table import method


def _routines(daemon):
    service = getattr(daemon, "routines", None)
    if service is None:
        raise RpcError(INVALID_STATE, "routines are not enabled in this daemon")
    return service


def _fields(params) -> dict:
    return {key: params.raw[key] for key in FIELDS if key in params.raw}


def _limit(params, default: int) -> int:
    limit = params.int("limit", default)
    if not 1 <= limit <= 100_000:
        raise RpcError(INVALID_PARAMS, "limit must be between 1 and 100000")
    return limit


@method("routine.list")
def list_routines(daemon, params, conn):
    """Every routine in routines.toml with its triggers and next fires, plus the file's errors if any."""
    from bgd.routines.editing import list_json
    return list_json(_routines(daemon))


@method("routine.get")
def get(daemon, params, conn):
    """One routine, with its env_file's keys (values shown as ***) and whether it has a token."""
    from bgd.routines.editing import routine_json
    service = _routines(daemon)
    return routine_json(service, service.file.get(params.req_str("name")), full=True)


@method("routine.add")
def add(daemon, params, conn):
    """Add a routine to routines.toml (comments and layout of the rest are kept)."""
    from bgd.routines import editing
    return editing.add(_routines(daemon), params.req_str("name"), _fields(params))


@method("routine.edit")
def edit(daemon, params, conn):
    """Change fields of a routine; `triggers` replaces its triggers; an empty string clears a field."""
    from bgd.routines import editing
    return editing.edit(_routines(daemon), params.req_str("name"), _fields(params))


@method("routine.remove")
def remove(daemon, params, conn):
    """Remove a routine from routines.toml (its runs stay in the history)."""
    from bgd.routines import editing
    return editing.remove(_routines(daemon), params.req_str("name"))


@method("routine.pause")
def pause(daemon, params, conn):
    """Set enabled = false: no trigger fires it until resumed."""
    from bgd.routines import editing
    return editing.set_enabled(_routines(daemon), params.req_str("name"), False)


@method("routine.resume")
def resume(daemon, params, conn):
    """Set enabled = true again (times missed while paused are not caught up)."""
    from bgd.routines import editing
    return editing.set_enabled(_routines(daemon), params.req_str("name"), True)


@method("routine.run")
async def run(daemon, params, conn):
    """Fire a routine now, by hand; answers once its session exists (or it is queued or failed).
    `rebuild`: build its cached setup again first."""
    from bgd.routines import editing
    return await editing.run(_routines(daemon), params.req_str("name"), params.str("text"),
                             params.bool("rebuild", False))


@method("routine.token")
def token(daemon, params, conn):
    """A new API token for a routine, returned this once (only its hash is kept; the old one is revoked)."""
    from bgd.routines import editing
    return editing.token(_routines(daemon), params.req_str("name"))


@method("routine.runs")
def runs(daemon, params, conn):
    """Run records, newest first: trigger, status, outcome, session, pushed refs (of one routine or all)."""
    return _routines(daemon).runs(params.str("name"), _limit(params, 100))


@method("routine.get_run")
def get_run(daemon, params, conn):
    """One run record by its id."""
    return _routines(daemon).run_record(params.req_str("id"))


@method("routine.deliveries")
def deliveries(daemon, params, conn):
    """Recent GitHub deliveries, newest first, with per routine whether it matched or which filter said no."""
    return _routines(daemon).deliveries(_limit(params, 50))


@method("routine.report_outcome")
def report_outcome(daemon, params, conn):
    """The outcome of a routine's run, as its agent reports it (the MCP tool report_outcome)."""
    return _routines(daemon).report_outcome(params.req_str("session"), params.req_str("status"),
                                            params.req_str("summary"), params.list("links"))
