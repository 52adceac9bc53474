"""Live pages: the daemon's event stream as server-sent events of HTML (SPEC §13).

Each page opens one stream (`/events`, `/s/<id>/events`, `/tasks/events`,
`/routines/events`) and htmx's SSE extension swaps what it is sent into the
page: every message is a set of out-of-band swaps (`hx-swap-oob`), each
replacing or adding one element by id.  The stream is the daemon's own
`EventBus.subscribe` with `since` — the seq the page was rendered at, or the
browser's `Last-Event-ID` when it reconnects — so a reconnect loses nothing,
and since every swap replaces an element by id (a transcript line is put in
place of the `tail-<n>` marker it is numbered for), nothing shows twice.
A page whose events are gone (retention, a new state dir) is redrawn whole.

A follower per page decides what to redraw for a batch of events; the stream
sends it as one message whose `id` is the last seq, so a burst of events is one
swap in the browser.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import trio
from starlette.requests import Request

from bgcore.jsonrpc import RpcError

from bgd import clock
from bgd.events import frame_event
from bgd.web import listing, transcript
from bgd.web.app import Web
from bgd.web.pages import all_sessions, groups_context, routine_runs, routines_context, session_context, tasks_context

log = logging.getLogger("bgd.web")
HEARTBEAT_S = 30.0   # an idle stream sends a comment this often (finds closed tabs; costs nothing to speak of)
RETRY_MS = 2000      # how soon a browser reconnects after the stream breaks (a daemon restart)


def _since(request: Request) -> int | None:
    """The seq to resume after: the later of Last-Event-ID (a reconnect) and ?since (the page)."""
    values = [request.headers.get("last-event-id"), request.query_params.get("since")]
    found = [int(v) for v in values if v and v.isdigit()]
    return max(found) if found else None


def sse_message(html: str, seq: int | None, event: str = "update") -> bytes:
    lines = html.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    head = f"id: {seq}\n" if seq is not None else ""
    return (head + f"event: {event}\n" + "".join(f"data: {line}\n" for line in lines) + "\n").encode()


class Follower:
    """What one page redraws for the events it follows: subclasses have `match(event)`,
    `resync()` (the whole live part of the page, as it is now) and `events(batch)`.

    `min_interval_s`: the shortest time between two redraws; events in between wait
    and go out together (the first after a quiet spell goes at once)."""

    min_interval_s = 0.0

    def __init__(self, web: Web, csrf: str):
        self.web = web
        self.csrf = csrf   # the page's forms carry it

    def touches(self) -> str:
        """A `touch` message's data to send after the last redraw (JSON), or ""."""
        return ""

    async def start(self, backlog: list[dict], missed: bool) -> str:
        """What to send first: the backlog's redraw, or the whole page when events were lost."""
        if missed:
            return await self.resync()
        return await self.events(backlog) if backlog else ""


class IndexFollower(Follower):
    """The index: a row replaced in place, or whole groups redrawn when sessions change group.

    It keeps which group each listed session is shown in (`shown`), so it knows
    when an update moves a row (working -> needs input) and only those groups are
    redrawn; a row that stays in its group is replaced by itself, or, when only its
    last message, age and cost changed (a streaming session), just touched."""

    TYPES = ("session.created", "session.updated", "session.removed")
    # A hundred streaming sessions change their rows' last message four times a second each;
    # the index shows them at most once a second (a session page shows every line at once).
    min_interval_s = 1.0

    def __init__(self, web: Web, csrf: str, filters: listing.Filters):
        super().__init__(web, csrf)
        self.filters = filters
        sessions = all_sessions(web)
        now = clock.now()
        self.shown = listing.membership(sessions, filters, listing.cutoff_for(now))
        # What each shown row says besides its last message, age and cost (listing.row_shape):
        # a row whose shape stays gets only those three, as a `touch` (app.js sets their text).
        self.shapes = {s["id"]: listing.row_shape(listing.row(s, now, {})) for s in sessions if s["id"] in self.shown}
        self._touched: dict[str, dict] = {}

    def touches(self) -> str:
        touched, self._touched = self._touched, {}
        return json.dumps(touched, ensure_ascii=False) if touched else ""

    def match(self, event: dict) -> bool:
        return event["type"] in self.TYPES or event["type"].startswith("routine.")

    async def start(self, backlog: list[dict], missed: bool) -> str:
        # The groups the page shows are those of the seq it was rendered at; after any
        # change since then the groups are redrawn whole rather than guessed at.
        return await self.resync() if missed or backlog else ""

    async def resync(self) -> str:
        sessions = all_sessions(self.web)
        runs = await routine_runs(self.web, sessions)
        context = await groups_context(self.web, sessions, self.filters, runs, self.csrf)
        self.shown = listing.membership(sessions, self.filters, listing.cutoff_for(context["now"]))
        self._remember_shapes(sessions, set(self.shown), context["now"], runs)
        return self.web.render("_groups.html", oob=True, **context)

    def _remember_shapes(self, sessions: list[dict], ids: set[str], now, runs) -> None:
        for s in sessions:
            if s["id"] in ids:
                self.shapes[s["id"]] = listing.row_shape(listing.row(s, now, runs))

    async def events(self, events: list[dict]) -> str:
        changed = {e.get("id") or (e.get("session") or {}).get("id") for e in events if e["type"] in self.TYPES}
        routine_event = any(e["type"].startswith("routine.") for e in events)
        sessions = all_sessions(self.web)
        current = listing.membership(sessions, self.filters, listing.cutoff_for(clock.now()))
        if bool(current) != bool(self.shown):
            return await self.resync()   # the list's "nothing here" line comes or goes with it
        moved = {sid for sid in set(current) | set(self.shown) if current.get(sid) != self.shown.get(sid)}
        regroup = {current[sid] for sid in moved if sid in current} | {self.shown[sid] for sid in moved
                                                                       if sid in self.shown}
        by_id = {s["id"]: s for s in sessions}
        if routine_event:
            changed |= {sid for sid in current if listing.routine_name(by_id[sid])}
        stay = [by_id[sid] for sid in changed if sid in current and current[sid] not in regroup]
        if not regroup and not stay:
            return ""
        runs = await routine_runs(self.web, [by_id[sid] for sid in current])
        now = clock.now()
        rows = []
        for s in stay:
            view = listing.row(s, now, runs)
            shape = listing.row_shape(view)
            if self.shapes.get(s["id"]) == shape:
                self._touched[s["id"]] = {"last": view.last, "at": view.updated_at, "age": view.age,
                                          "cost": view.cost}
            else:
                self.shapes[s["id"]] = shape
                rows.append(s)
        self._remember_shapes(sessions, {sid for sid in current if current[sid] in regroup}, now, runs)
        for sid in set(self.shapes) - set(current):
            del self.shapes[sid]
        self.shown = current
        if not regroup and not rows:
            return ""
        context = await groups_context(self.web, sessions, self.filters, runs, self.csrf, only=regroup)
        drawn = await self.web.rows(rows, self.csrf, context["now"], runs, oob=True)
        return self.web.render("_index_update.html", rows=drawn, **context)


_UNKNOWN = object()


class SessionFollower(Follower):
    """One session's page: transcript lines appended, its head and pending request redrawn.

    The pending panel is redrawn only when the request in it changes, so a
    message being typed for Deny is not wiped by an unrelated update."""

    def __init__(self, web: Web, csrf: str, session_id: str):
        super().__init__(web, csrf)
        self.session_id = session_id
        session = web.daemon.sessions.sessions.get(session_id)
        self.pending_id: Any = (session.pending or {}).get("request_id") if session is not None else None

    def match(self, event: dict) -> bool:
        return event.get("id") == self.session_id or (event.get("session") or {}).get("id") == self.session_id

    async def start(self, backlog: list[dict], missed: bool) -> str:
        if backlog:
            # The page was drawn before these events: what its panel shows is not what is pending now.
            self.pending_id = _UNKNOWN
        return await super().start(backlog, missed)

    async def resync(self) -> str:
        try:
            context = await session_context(self.web, self.session_id)
        except RpcError:  # removed meanwhile
            return self.web.render("_session_gone.html")
        self.pending_id = (context["s"].get("pending") or {}).get("request_id")
        return self.web.render("_session_main.html", oob=True, csrf=self.csrf, now=clock.now(), **context)

    async def events(self, events: list[dict]) -> str:
        parts = []
        latest = None
        for event in events:
            kind = event["type"]
            if kind == "session.transcript":
                entry = event["entry"]
                parts.append(self.web.render("_entry_update.html", entry=entry, items=transcript.items(entry)))
            elif kind in ("session.updated", "session.created"):
                latest = event["session"]
            elif kind == "session.removed":
                parts.append(self.web.render("_session_gone.html"))
                latest = None
        if latest is not None:
            runs = await routine_runs(self.web, [latest])
            pending_id = (latest.get("pending") or {}).get("request_id")
            redraw_pending = pending_id != self.pending_id
            self.pending_id = pending_id
            parts.append(self.web.render("_session_update.html", s=latest, now=clock.now(), run=runs.get(latest["id"]),
                                         redraw_pending=redraw_pending, csrf=self.csrf))
        return "\n".join(parts)


class PageFollower(Follower):
    """Tasks or routines: any of their events redraws the page's main part (they change rarely)."""

    def __init__(self, web: Web, csrf: str, prefixes: tuple[str, ...], template: str, context):
        super().__init__(web, csrf)
        self.prefixes = prefixes
        self.template = template
        self.context = context

    def match(self, event: dict) -> bool:
        return event["type"].startswith(self.prefixes)

    async def resync(self) -> str:
        return self.web.render(self.template, oob=True, csrf=self.csrf, **await self.context(self.web))

    async def events(self, events: list[dict]) -> str:
        return await self.resync()


class EventStream:
    """An ASGI response: the event stream of one page, until the browser goes or a revoke ends it."""

    def __init__(self, web: Web, follower: Follower, since: int | None):
        self.web = web
        self.follower = follower
        self.since = since

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"), (b"x-content-type-options", b"nosniff")]})
        async with trio.open_nursery() as nursery:
            self.web.streams.add(nursery.cancel_scope)
            try:
                nursery.start_soon(_until_disconnect, receive, nursery.cancel_scope)
                await self._pump(send)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            finally:
                self.web.streams.discard(nursery.cancel_scope)
                nursery.cancel_scope.cancel()
        with trio.CancelScope(shield=True):
            try:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except Exception:  # the browser is gone already
                pass

    async def _pump(self, send) -> None:
        bus = self.web.daemon.bus
        since = self.since
        await send({"type": "http.response.body", "body": f"retry: {RETRY_MS}\n\n".encode(), "more_body": True})
        while True:
            sub, backlog, missed = bus.subscribe(since, self.follower.match)
            try:
                if since is not None and since > bus.seq:
                    missed = True   # a seq this daemon never had (its state dir is new)
                seq = bus.seq
                first = await self.follower.start(backlog, missed)
                if first or since != seq:
                    await send(_body(sse_message(first, seq)))
                sent_at = -float("inf")
                while True:
                    frames = await _next_frames(sub, HEARTBEAT_S)
                    if frames is None:
                        break   # fell too far behind: subscribe again and redraw
                    if not frames:
                        await send(_body(b": idle\n\n"))
                        continue
                    wait = sent_at + self.follower.min_interval_s - trio.current_time()
                    if wait > 0:
                        await trio.sleep(wait)
                        more = _queued(sub)
                        if more is None:
                            break
                        frames += more
                    events = [frame_event(frame) for frame in frames]
                    html = await self.follower.events(events)
                    sent_at = trio.current_time()
                    touches = self.follower.touches()
                    if html or not touches:
                        await send(_body(sse_message(html, events[-1]["seq"])))
                    if touches:
                        await send(_body(sse_message(touches, events[-1]["seq"], "touch")))
            finally:
                bus.unsubscribe(sub)
            since = -1   # after an overflow: everything is "missed", so the page is redrawn


def _body(data: bytes) -> dict:
    return {"type": "http.response.body", "body": data, "more_body": True}


async def _next_frames(sub, timeout: float) -> list[bytes] | None:
    """Every frame queued now, waiting up to `timeout` for the first; [] on timeout, None once closed."""
    with trio.move_on_after(timeout):
        try:
            first = await sub.receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return None
        return [first] + (_queued(sub) or [])
    return []


def _queued(sub) -> list[bytes] | None:
    """The frames queued now ([] if none); None if the queue was closed (an overflow) and is empty."""
    frames = []
    while True:
        try:
            frames.append(sub.receive.receive_nowait())
        except trio.WouldBlock:
            return frames
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return frames or None


async def _until_disconnect(receive, scope: trio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


# -- the endpoints ------------------------------------------------------------------------------------

async def index_events(web: Web, request: Request):
    filters = listing.Filters.parse(request.query_params)
    return EventStream(web, IndexFollower(web, request.state.login.csrf, filters), _since(request))


async def session_events(web: Web, request: Request):
    session = web.daemon.sessions.sessions.get(request.path_params["id"])
    follower = SessionFollower(web, request.state.login.csrf, session.id if session else request.path_params["id"])
    return EventStream(web, follower, _since(request))


async def tasks_events(web: Web, request: Request):
    follower = PageFollower(web, request.state.login.csrf, ("task.", "tasks."), "_tasks_main.html", tasks_context)
    return EventStream(web, follower, _since(request))


async def routines_events(web: Web, request: Request):
    follower = PageFollower(web, request.state.login.csrf, ("routine.", "routines."), "_routines_main.html",
                            routines_context)
    return EventStream(web, follower, _since(request))
