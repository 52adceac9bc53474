"""The ASGI side: one starlette app made of every mounted feature's routes, and what hypercorn calls.

`Entry` is the app hypercorn serves. It holds the current starlette app (rebuilt
when a feature mounts), gives each request body `body_timeout_s` to arrive in
full (408 after that, the app unwound where it waited), answers starlette's plain-text 413 as JSON, and keeps an
endpoint's exception away from hypercorn (logged here, answered 500 by
starlette). Body caps are starlette's own `max_body_size`: the app's default
from `[http] max_body_bytes`, and any route may set its own
(`Route(..., max_body_size=25 << 20)`), which wins over the default.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Sequence

import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Match, NoMatchFound, Route
from starlette.types import Message, Receive, Scope, Send

from bgd.http.errors import http_exception, json_error, server_error, too_large

log = logging.getLogger("bgd.http")
_BODY_LEFT_UNREAD = (408, 413)


class FeatureRoutes(BaseRoute):
    """One feature's routes behind that feature's own middleware, as a single route of the app.

    It matches what one of its routes matches (so features mounted after it are
    still reached) and remembers which in the request's scope; its middleware runs
    only for its own requests, then that route handles the request as the router
    would have. (Not a second Router: the scope already carries the match, such as
    a Mount's root_path, and matching again under it would miss.)
    """

    _ROUTE = "bgd.http.route"

    def __init__(self, name: str, routes: Sequence[BaseRoute], middleware: Sequence[Middleware]):
        self.name = name
        self.routes = list(routes)
        app: Any = self._dispatch
        for cls, args, kwargs in reversed(list(middleware)):
            app = cls(app, *args, **kwargs)
        self.app = app

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        partial: tuple[BaseRoute, Scope] | None = None
        for route in self.routes:
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                return match, {**child_scope, self._ROUTE: route}
            if match is Match.PARTIAL and partial is None:
                partial = route, child_scope
        if partial is None:
            return Match.NONE, {}
        return Match.PARTIAL, {**partial[1], self._ROUTE: partial[0]}

    def url_path_for(self, name: str, /, **path_params: Any):
        for route in self.routes:
            try:
                return route.url_path_for(name, **path_params)
            except NoMatchFound:
                pass
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        await scope.pop(self._ROUTE).handle(scope, receive, send)


def _has_body(scope: Scope) -> bool:
    """Whether a request comes with a body to wait for: a Content-Length above 0 or a
    Transfer-Encoding, or over HTTP/2 (where DATA needs neither) any method but GET and HEAD
    without a Content-Length."""
    length = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = value
        elif name == b"transfer-encoding":
            return True
    if length is not None:
        return length.strip() not in (b"0", b"")
    return scope.get("http_version") == "2" and scope.get("method") not in ("GET", "HEAD")


def health_routes(version: str) -> list[BaseRoute]:
    payload = {"ok": True, "version": version}

    async def health(request: Request) -> JSONResponse:
        return JSONResponse(payload)

    return [Route("/v1/health", health, methods=["GET"], name="health")]


def build_app(groups: Sequence[tuple[str, Sequence[BaseRoute], Sequence[Middleware]]],
              max_body_bytes: int) -> Starlette:
    """The app: each (name, routes, middleware) in mount order; a feature without middleware
    adds its routes as they are (one match instead of two)."""
    routes: list[BaseRoute] = []
    for name, feature_routes, middleware in groups:
        routes += [FeatureRoutes(name, feature_routes, middleware)] if middleware else list(feature_routes)
    return Starlette(routes=routes, max_body_size=max_body_bytes,
                     exception_handlers={HTTPException: http_exception, Exception: server_error})


class Entry:
    """What hypercorn serves: the current app, with request bodies timed and errors kept as JSON."""

    def __init__(self, app: Callable, body_timeout_s: float):
        self.app = app
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_done = not _has_body(scope)
        started = False
        replacing: JSONResponse | None = None
        # One cancel scope for the request, armed from the end of the head until the body is in
        # (setting a deadline at each receive costs more than the rest of this wrapper): past it the
        # app is unwound where it waits and the 408 is answered below.
        timer = trio.CancelScope(deadline=math.inf if body_done else trio.current_time() + self.body_timeout_s)

        async def receive_in_time() -> Message:
            nonlocal body_done
            message = await receive()
            if not body_done and (message["type"] != "http.request" or not message.get("more_body", False)):
                body_done = True
                timer.deadline = math.inf  # after the body, receive() only waits for the client to leave
            return message

        async def send_as_json(message: Message) -> None:
            # starlette's body limit answers an endpoint that never read the body with a
            # plain-text 413: the one error that does not pass through our handlers.
            nonlocal replacing, started
            if replacing is not None:
                if message["type"] == "http.response.body" and not message.get("more_body", False):
                    await send({"type": "http.response.body", "body": replacing.body})
                    replacing = None
                return
            if message["type"] == "http.response.start":
                started = True
                if message["status"] in _BODY_LEFT_UNREAD:
                    # The rest of the body is never read, so hypercorn closes the connection after
                    # this answer: say so, or a client would send its next request on it.
                    if (message["status"] == 413
                            and (b"content-type", b"text/plain; charset=utf-8") in message.get("headers", ())):
                        replacing = too_large(scope)
                        message = dict(message, headers=replacing.raw_headers)
                    message = dict(message, headers=[*message.get("headers", ()), (b"connection", b"close")])
            try:
                await send(message)
            except (trio.BusyResourceError, trio.BrokenResourceError, trio.ClosedResourceError):
                # The client closed its side while we answered (hypercorn then closes the
                # socket from another task): an answer nobody will read, not an error.
                raise ClientDisconnect() from None

        with timer:
            try:
                await self.app(scope, receive_in_time, send_as_json)
            except ClientDisconnect:
                pass  # the client left mid-request: nobody to answer
            except Exception:
                log.exception("HTTP %s %s failed", scope.get("method"), scope.get("path"))
        if timer.cancelled_caught and not started:
            answer = json_error(408, f"the request body did not arrive within {self.body_timeout_s:g} s; "
                                     "send it in full (and with a correct Content-Length)")
            try:
                await send_as_json({"type": "http.response.start", "status": 408, "headers": answer.raw_headers})
                await send_as_json({"type": "http.response.body", "body": answer.body})
            except ClientDisconnect:
                pass
