"""The web page's shell (SPEC §13): routes, the guard every request passes, rendering.

`Web` holds what the pages share: the daemon, the login codes and logins, the
templates.  Every route goes through `guard`: the Host must be the listener's
own; every page, action and stream needs the login cookie (else 401 and a page
that says to run `bgctl web`); every action (POST) also needs its Origin and the
CSRF token.  Pages and actions call the daemon's own method table (`call`), so
the web page can do exactly what the socket can, with the same checks and the
same one-line errors.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qsl

import trio
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.staticfiles import StaticFiles

from bgcore.jsonrpc import METHOD_NOT_FOUND, SHUTTING_DOWN, RpcError

from bgd import clock
from bgd.rpc.table import METHODS, Params
from bgd.web import auth, listing, transcript

log = logging.getLogger("bgd.web")
HERE = Path(__file__).parent
DEFAULT_BASE_URL = "http://127.0.0.1:7421"
MAX_FORM_BYTES = 1 << 20
ROW_SLICE_S = 0.003   # drawing rows and transcripts yields to the daemon's other tasks this often
SECURITY_HEADERS = {
    # Scripts, styles and images only from the listener itself: agent output that
    # slipped past escaping still could not run or call out.
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class Login:
    """The login a request carries: its cookie value and that value's hash."""

    def __init__(self, token: str):
        self.token = token
        self.hash = auth.token_hash(token)
        self.csrf = auth.csrf_token(token)


class Web:
    def __init__(self, daemon: Any, base_url: Callable[[], str | None] | None = None,
                 monotonic: Callable[[], float] = time.monotonic):
        self.daemon = daemon
        self._base_url = base_url or (lambda: getattr(getattr(daemon, "http", None), "base_url", None))
        self.monotonic = monotonic
        self.codes = auth.LoginCodes()
        self.logins: dict[str, str] = daemon.store.web_logins()   # hash -> last used (ISO)
        # A login nobody used for as long as its cookie lives is gone with the cookie.
        stale = clock.iso(clock.now() - _seconds(auth.COOKIE_MAX_AGE_S))
        old = [digest for digest, used in self.logins.items() if used < stale]
        if old:
            daemon.store.delete_web_logins(old)
            for digest in old:
                del self.logins[digest]
        self.flashes: dict[str, tuple[str, str]] = {}              # login hash -> (level, message) for its next page
        self.streams: set[trio.CancelScope] = set()                # open event streams, ended by a revoke
        self.env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True),
                               trim_blocks=True, lstrip_blocks=True)
        self.env.globals.update(GROUPS=listing.GROUPS, STATES=listing.STATES, STATE_WORDS=listing.STATE_WORDS,
                                version=_version())
        self.env.filters.update(title=listing.title, one_line=listing.one_line, short_dir=listing.short_dir,
                                cost=listing.cost)
        self.env.globals.update(row_view=listing.row, age=listing.age, countdown=listing.countdown, group_of=listing.group_of,
                                routine_name=listing.routine_name, task_name=listing.task_name,
                                outcome_of=listing.outcome_of, questions=transcript.questions,
                                pending_input=transcript.pending_input)

    # -- where the listener is ---------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return (self._base_url() or DEFAULT_BASE_URL).rstrip("/")

    def hosts(self) -> frozenset[str]:
        return auth.allowed_hosts(self.base_url)

    # -- logins ------------------------------------------------------------------------------------

    def login_code(self) -> dict:
        """A one-time login link (`web.login_code`)."""
        code = self.codes.issue(self.monotonic())
        expires = clock.iso(clock.now() + _seconds(self.codes.ttl_s))
        return {"url": f"{self.base_url}/login?code={code}", "code": code, "expires_at": expires,
                "valid_s": int(self.codes.ttl_s)}

    def revoke(self) -> int:
        """End every login (logout, `bgctl web --revoke`): cookies, unused codes, open streams."""
        count = self.daemon.store.delete_web_logins()
        self.logins.clear()
        self.flashes.clear()
        self.codes.clear()
        self.end_streams()
        return count

    def end_streams(self) -> None:
        for scope in list(self.streams):
            scope.cancel()

    def login_of(self, request: Request) -> Login | None:
        token = request.cookies.get(auth.cookie_name(self.base_url))
        if not token:
            return None
        login = Login(token)
        if login.hash not in self.logins:
            return None
        today = clock.now_iso()[:10]
        if self.logins[login.hash][:10] != today:  # remember use once a day, not per request
            self.logins[login.hash] = clock.now_iso()
            self.daemon.store.touch_web_login(login.hash, self.logins[login.hash])
        return login

    def new_login(self) -> str:
        token = auth.new_login_token()
        digest = auth.token_hash(token)
        now = clock.now_iso()
        self.daemon.store.add_web_login(digest, now)
        self.logins[digest] = now
        return token

    # -- the guard ---------------------------------------------------------------------------------

    def guard(self, kind: str, endpoint: Callable[..., Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        """Wrap an endpoint: "public" (Host only), "page", "stream" (login), "action" (login, Origin, CSRF)."""

        async def guarded(request: Request) -> Response:
            if not self.daemon.config.web_enabled:
                # Turned off by a reload while the listener stays up for something else.
                return PlainTextResponse("404 the web page is off ([web] enabled = false in config.toml)\n",
                                         status_code=404, headers=SECURITY_HEADERS)
            host = request.headers.get("host")
            if not auth.host_ok(host, self.hosts()):
                return PlainTextResponse(
                    f"421 this listener does not answer to the host {host!r}; open {self.base_url}/ instead\n",
                    status_code=421, headers=SECURITY_HEADERS)
            if kind == "public":
                return await endpoint(request)
            login = self.login_of(request)
            if login is None:
                return self.denied(request)
            if kind == "action":
                if not auth.origin_ok(request.headers.get("origin"), request.headers.get("referer"),
                                      request.url.scheme, host or ""):
                    return self.forbidden("this request did not come from the web page itself (Origin)")
                form = await self.form(request)
                if form is None:
                    return self.forbidden("send the form as application/x-www-form-urlencoded, at most 1 MiB")
                given = form.get(auth.CSRF_FIELD) or request.headers.get("x-csrf-token")
                if not auth.csrf_ok(login.token, given):
                    return self.forbidden("the form's CSRF token is missing or wrong; reload the page and try again")
                request.state.form = form
            request.state.login = login
            return await endpoint(request)

        return guarded

    async def form(self, request: Request) -> dict[str, str] | None:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in ("application/x-www-form-urlencoded", ""):
            return None
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                return None
        try:
            return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        except (UnicodeDecodeError, ValueError):
            return None

    def denied(self, request: Request) -> Response:
        if request.url.path.endswith("/events") or request.headers.get("hx-request"):
            return PlainTextResponse("401 not logged in: run `bgctl web` and open the link it prints\n",
                                     status_code=401, headers=SECURITY_HEADERS)
        return self.page("denied.html", status=401, login=None, come_back=request.url.path != "/")

    def forbidden(self, why: str) -> Response:
        return PlainTextResponse(f"403 refused: {why}\n", status_code=403, headers=SECURITY_HEADERS)

    # -- rendering ---------------------------------------------------------------------------------

    def render(self, name: str, **context: Any) -> str:
        return self.env.get_template(name).render(**context)

    def page(self, name: str, *, status: int = 200, login: Login | None, **context: Any) -> HTMLResponse:
        flash = self.flashes.pop(login.hash, None) if login is not None else None
        context.setdefault("now", clock.now())
        html = self.render(name, csrf=login.csrf if login else "", logged_in=login is not None, flash=flash,
                           **context)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    async def rows(self, sessions: list[dict], csrf: str, now, runs: dict, oob: bool = False) -> list:
        """Index rows, drawn one by one, letting the daemon's other tasks run every few milliseconds:
        a thousand rows take tens of milliseconds, which agents' lines should not wait behind."""
        row = self.env.get_template("_macros.html").module.row
        out, pause = [], _Pauses()
        for session in sessions:
            out.append(row(session, csrf, now, runs, oob))
            await pause.now_and_then()
        return out

    async def transcript(self, entries: list[dict]) -> list:
        """A session's transcript drawn (Markdown included) a few milliseconds at a time, as `rows`."""
        pause = _Pauses()
        made = []
        for entry in entries:
            made.append((entry, transcript.items(entry)))
            await pause.now_and_then()
        draw = self.env.get_template("_macros.html").module.entry
        out = []
        for entry, its in transcript.pair_items(made):
            out.append(draw(entry, its))
            await pause.now_and_then()
        return out

    # -- calling the daemon ------------------------------------------------------------------------

    def has(self, method: str) -> bool:
        return method in METHODS

    async def call(self, method: str, **params: Any) -> Any:
        """Call one of the daemon's own methods, as a socket client would (RpcError on refusal)."""
        entry = METHODS.get(method)
        if entry is None:
            raise RpcError(METHOD_NOT_FOUND, f"this daemon has no {method}")
        if self.daemon.shutting_down:
            raise RpcError(SHUTTING_DOWN, "bgd is shutting down; start it again with `bgctl daemon start`")
        result = entry.handler(self.daemon, Params({k: v for k, v in params.items() if v is not None}), None)
        if entry.is_async:
            result = await result
        return result

    # -- routes ------------------------------------------------------------------------------------

    def routes(self) -> list:
        from bgd.web import actions, pages, stream

        def route(path: str, kind: str, endpoint, methods=("GET",)) -> Route:
            return Route(path, self.guard(kind, lambda request, fn=endpoint: fn(self, request)), methods=list(methods))

        static = StaticFiles(directory=HERE / "static")

        async def static_files(request: Request) -> Response:
            response = await static.get_response(request.path_params["path"], request.scope)
            response.headers["X-Content-Type-Options"] = "nosniff"
            response.headers["Cache-Control"] = "max-age=3600"
            return response

        return [
            route("/", "page", pages.index),
            route("/s/{id}", "page", pages.session),
            route("/tasks", "page", pages.tasks),
            route("/routines", "page", pages.routines),
            route("/events", "stream", stream.index_events),
            route("/s/{id}/events", "stream", stream.session_events),
            route("/tasks/events", "stream", stream.tasks_events),
            route("/routines/events", "stream", stream.routines_events),
            route("/login", "public", pages.login),
            route("/logout", "action", actions.logout, methods=("POST",)),
            route("/dispatch", "action", actions.dispatch, methods=("POST",)),
            route("/s/{id}/reply", "action", actions.reply, methods=("POST",)),
            route("/s/{id}/respond", "action", actions.respond, methods=("POST",)),
            route("/s/{id}/stop", "action", actions.stop, methods=("POST",)),
            route("/s/{id}/pin", "action", actions.pin, methods=("POST",)),
            route("/s/{id}/rename", "action", actions.rename, methods=("POST",)),
            route("/tasks/{name}/run", "action", actions.run_task, methods=("POST",)),
            Route("/static/{path:path}", self.guard("public", static_files), methods=["GET", "HEAD"]),
        ]


class _Pauses:
    """Lets the daemon's other tasks run once every ROW_SLICE_S of drawing."""

    def __init__(self):
        self.until = time.perf_counter() + ROW_SLICE_S

    async def now_and_then(self) -> None:
        if time.perf_counter() > self.until:
            await trio.lowlevel.checkpoint()
            self.until = time.perf_counter() + ROW_SLICE_S


def redirect(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303, headers=SECURITY_HEADERS)


def _seconds(value: float):
    from datetime import timedelta
    return timedelta(seconds=value)


def _version() -> str:
    from bgd import __version__
    return __version__

