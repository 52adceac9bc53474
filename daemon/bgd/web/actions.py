"""The actions (POST): dispatch, reply, approve/deny/answer, stop, pin, rename, run a task, log out.

Each is a plain form post (the guard has checked login, Origin and CSRF).  A
browser without JavaScript gets a 303 back to the page it came from, which shows
what happened; htmx gets just that message to put in the page's notice area
(the event stream shows the change itself).
"""

from __future__ import annotations

import os
from typing import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from bgcore.jsonrpc import INVALID_PARAMS, RpcError

from bgd.web import auth
from bgd.web.app import SECURITY_HEADERS, Web, redirect

Outcome = tuple[str, str | None]   # the message, and a link to go with it (or None)


async def _act(web: Web, request: Request, action: Callable[[], Awaitable[Outcome]], back: str) -> Response:
    try:
        message, link = await action()
        flash = ("ok", message, link)
    except RpcError as exc:
        flash = ("error", exc.message, None)
    if request.headers.get("hx-request"):
        return HTMLResponse(web.render("_flash.html", flash=flash), headers=SECURITY_HEADERS)
    web.flashes[request.state.login.hash] = flash
    return redirect(auth.safe_next(request.state.form.get("next"), back))


def _form(request: Request) -> dict[str, str]:
    return request.state.form


async def dispatch(web: Web, request: Request) -> Response:
    form = _form(request)

    async def go() -> Outcome:
        cwd = os.path.expanduser(form.get("cwd", "").strip())
        if not cwd:
            raise RpcError(INVALID_PARAMS, "give the directory to start the session in")
        session = await web.call("session.dispatch", prompt=form.get("prompt", ""), cwd=cwd,
                                 agent=form.get("agent") or None, name=form.get("name", "").strip() or None)
        return f"dispatched · {session['id']}", f"/s/{session['id']}"

    return await _act(web, request, go, "/")


async def reply(web: Web, request: Request) -> Response:
    session_id = request.path_params["id"]

    async def go() -> Outcome:
        await web.call("session.reply", id=session_id, text=_form(request).get("text", ""))
        return "sent", None

    return await _act(web, request, go, f"/s/{session_id}")


async def respond(web: Web, request: Request) -> Response:
    session_id = request.path_params["id"]
    form = _form(request)

    async def go() -> Outcome:
        decision = form.get("decision", "")
        answer = form.get("answer") or form.get("answer_text", "").strip() or None
        if decision == "answer":
            if not answer:
                raise RpcError(INVALID_PARAMS, "pick an option or type an answer")
            decision = "allow"
        elif decision not in ("allow", "always", "deny"):
            raise RpcError(INVALID_PARAMS, "choose Approve, Always or Deny")
        else:
            answer = None
        await web.call("session.respond", id=session_id, decision="deny" if decision == "deny" else "allow",
                       always=decision == "always", message=form.get("message", "").strip() or None,
                       answer=answer, request_id=form.get("request_id") or None)
        return {"allow": "approved", "always": "approved (always)", "deny": "denied"}.get(decision, "answered"), None

    return await _act(web, request, go, f"/s/{session_id}")


async def stop(web: Web, request: Request) -> Response:
    session_id = request.path_params["id"]

    async def go() -> Outcome:
        await web.call("session.stop", id=session_id)
        return "stopped", None

    return await _act(web, request, go, f"/s/{session_id}")


async def pin(web: Web, request: Request) -> Response:
    session_id = request.path_params["id"]

    async def go() -> Outcome:
        pinned = _form(request).get("pinned", "1") not in ("0", "false", "")
        await web.call("session.pin", id=session_id, pinned=pinned)
        return ("pinned" if pinned else "unpinned"), None

    return await _act(web, request, go, f"/s/{session_id}")


async def rename(web: Web, request: Request) -> Response:
    session_id = request.path_params["id"]

    async def go() -> Outcome:
        session = await web.call("session.rename", id=session_id, name=_form(request).get("name", ""))
        return ("renamed" if session.get("name") else "name cleared"), None

    return await _act(web, request, go, f"/s/{session_id}")


async def run_task(web: Web, request: Request) -> Response:
    name = request.path_params["name"]

    async def go() -> Outcome:
        run = await web.call("task.run", name=name)
        session_id = run.get("session_id")
        return f"{name}: {run.get('status', 'fired')}", (f"/s/{session_id}" if session_id else None)

    return await _act(web, request, go, "/tasks")


async def logout(web: Web, request: Request) -> Response:
    web.revoke()
    response = web.page("denied.html", status=200, login=None, logged_out=True)
    response.delete_cookie(auth.cookie_name(web.base_url), path="/", httponly=True, samesite="strict")
    return response
