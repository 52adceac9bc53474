"""The pages (GET): the index, one session, tasks, routines, and the login link.

Each builds its context from the daemon's own methods and renders a template;
the event streams (stream.py) use the same context builders to redraw parts.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from bgcore.jsonrpc import RpcError

from bgd import clock
from bgd.web import auth, listing
from bgd.web.app import Web, redirect

ROUTINE_RUNS_SHOWN = 50
TASK_RUNS_SHOWN = 10
TASKS_SHOWN = 200   # the page lists this many tasks in full; `bgctl task ls` has the rest


# -- the index ----------------------------------------------------------------------------------------

def all_sessions(web: Web) -> list[dict]:
    return [s.to_json() for s in web.daemon.sessions.sessions.values()]


async def routine_runs(web: Web, sessions: list[dict]) -> dict[str, dict]:
    """Session id -> its routine run, when there are routine sessions and a routines feature."""
    if not web.has("routine.runs") or not any(listing.routine_name(s) for s in sessions):
        return {}
    try:
        return listing.runs_by_session(await web.call("routine.runs", limit=1000))
    except RpcError:
        return {}


async def groups_context(web: Web, sessions: list[dict], filters: listing.Filters, runs: dict[str, dict],
                         csrf: str, only: set[str] | None = None) -> dict:
    """The index's groups, their rows drawn (`only`: just these groups)."""
    now = clock.now()
    cutoff = listing.cutoff_for(now)
    groups = {}
    for key, members in listing.grouped(sessions, filters, cutoff).items():
        if only is None or key in only:
            groups[key] = await web.rows(members, csrf, now, runs)
    return {"groups": groups, "now": now, "hidden": listing.hidden_count(sessions, filters, cutoff),
            "filters": filters}


async def index(web: Web, request: Request) -> Response:
    filters = listing.Filters.parse(request.query_params)
    seq = web.daemon.bus.seq
    sessions = all_sessions(web)
    runs = await routine_runs(web, sessions)
    config = web.daemon.config
    context = await groups_context(web, sessions, filters, runs, request.state.login.csrf)
    dirs = listing.directories(sessions)
    query = filters.query()
    return web.page("index.html", login=request.state.login, **context,
                    stream_url=f"/events?since={seq}" + (f"&{query}" if query else ""),
                    directories=dirs, agents=sorted(config.agents), default_agent=config.default_agent,
                    default_cwd=(filters.cwd or (dirs[0] if dirs else _home())))


# -- one session --------------------------------------------------------------------------------------

async def session_context(web: Web, session_id: str) -> dict:
    session = await web.call("session.get", id=session_id)
    entries = (await web.call("session.transcript", id=session["id"]))["entries"]
    runs = await routine_runs(web, [session])
    return {"s": session, "drawn": await web.transcript(entries),
            "tail": (entries[-1]["n"] + 1) if entries else 0, "run": runs.get(session["id"]),
            "loops": await _loops(web, session["id"])}


async def _loops(web: Web, session_id: str) -> list[dict]:
    if not web.has("loop.list") or getattr(web.daemon, "loops", None) is None:
        return []
    try:
        return await web.call("loop.list", session=session_id)
    except RpcError:
        return []


async def session(web: Web, request: Request) -> Response:
    login = request.state.login
    seq = web.daemon.bus.seq
    try:
        context = await session_context(web, request.path_params["id"])
    except RpcError as exc:
        return web.page("missing.html", status=404, login=login, message=exc.message)
    session_id = context["s"]["id"]
    if session_id != request.path_params["id"]:  # a prefix or a name: go to the real address
        return redirect(f"/s/{session_id}")
    return web.page("session.html", login=login, **context, stream_url=f"/s/{session_id}/events?since={seq}")


# -- tasks and routines ---------------------------------------------------------------------------------

async def tasks_context(web: Web) -> dict:
    if not web.has("task.list") or getattr(web.daemon, "tasks", None) is None:
        return {"enabled": False}
    listed = await web.call("task.list")
    every = listed.get("tasks", [])
    shown = every[:TASKS_SHOWN]
    histories = {}
    for task in shown:
        try:
            histories[task["name"]] = await web.call("task.history", name=task["name"], limit=TASK_RUNS_SHOWN)
        except RpcError:
            histories[task["name"]] = []
    return {"enabled": True, "file": listed.get("file"), "tasks": shown, "more": len(every) - len(shown),
            "errors": listed.get("errors", []), "histories": histories, "now": clock.now()}


async def tasks(web: Web, request: Request) -> Response:
    seq = web.daemon.bus.seq
    return web.page("tasks.html", login=request.state.login, **await tasks_context(web),
                    stream_url=f"/tasks/events?since={seq}")


async def routines_context(web: Web) -> dict:
    """Whatever the routine.* methods say, when the daemon has them."""
    if not web.has("routine.list"):
        return {"enabled": False}
    try:
        listed = await web.call("routine.list")
    except RpcError as exc:
        return {"enabled": False, "error": exc.message}
    definitions = listed.get("routines", []) if isinstance(listed, dict) else listed
    errors = listed.get("errors", []) if isinstance(listed, dict) else []
    runs: Any = []
    deliveries: Any = []
    if web.has("routine.runs"):
        runs = await _quiet(web, "routine.runs", [], limit=ROUTINE_RUNS_SHOWN)
        runs = runs.get("runs", []) if isinstance(runs, dict) else runs
    if web.has("routine.deliveries"):
        deliveries = await _quiet(web, "routine.deliveries", [])
        deliveries = deliveries.get("deliveries", []) if isinstance(deliveries, dict) else deliveries
    return {"enabled": True, "routines": definitions or [], "errors": errors or [], "runs": runs or [],
            "deliveries": deliveries or [], "now": clock.now()}


async def _quiet(web: Web, method: str, default: Any, **params: Any) -> Any:
    try:
        return await web.call(method, **params)
    except RpcError:
        return default


async def routines(web: Web, request: Request) -> Response:
    seq = web.daemon.bus.seq
    return web.page("routines.html", login=request.state.login, **await routines_context(web),
                    stream_url=f"/routines/events?since={seq}")


# -- logging in -----------------------------------------------------------------------------------------

async def login(web: Web, request: Request) -> Response:
    if not web.codes.redeem(request.query_params.get("code"), web.monotonic()):
        return web.page("denied.html", status=401, login=None, bad_code=True)
    token = web.new_login()
    response = redirect("/")
    response.set_cookie(auth.cookie_name(web.base_url), token, max_age=auth.COOKIE_MAX_AGE_S, path="/", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")
    return response


def _home() -> str:
    import os
    return os.path.expanduser("~")

