"""The event stream (SPEC §4): every change, numbered, retained, fanned out.

Each event gets the next `seq`, is stored (so a client that reconnects with
`since`, even across a daemon restart, gets what it missed) and is offered to
every subscriber's bounded queue.  A subscriber that falls too far behind is
cut off rather than allowed to grow the daemon's memory; it reconnects with
`since` and catches up from the store.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import trio

from . import clock
from .store import Store

SUBSCRIBER_QUEUE = 10_000
MAX_EVENT_FIELD_BYTES = 64 * 1024


class Subscriber:
    def __init__(self, match: Callable[[dict], bool]):
        self.match = match
        self.send, self.receive = trio.open_memory_channel[dict](SUBSCRIBER_QUEUE)
        self.overflowed = False

    def offer(self, event: dict) -> None:
        if self.overflowed or not self.match(event):
            return
        try:
            self.send.send_nowait(event)
        except trio.WouldBlock:
            self.overflowed = True
            self.send.close()
        except trio.ClosedResourceError:
            pass


class EventBus:
    def __init__(self, store: Store, retention: int = 10_000):
        self.store = store
        self.retention = retention
        self.seq = store.last_event_seq()
        self.subscribers: set[Subscriber] = set()
        self._since_trim = 0
        self.listeners: list[Callable[[dict], None]] = []

    def publish(self, type_: str, **data: Any) -> dict:
        self.seq += 1
        event = {"seq": self.seq, "ts": clock.now_iso(), "type": type_, **data}
        self.store.append_event(self.seq, event["ts"], type_, event)
        self._since_trim += 1
        if self._since_trim >= 1000:
            self._since_trim = 0
            self.store.trim_events(self.retention)
        for listener in self.listeners:
            listener(event)
        for sub in list(self.subscribers):
            sub.offer(event)
        return event

    def subscribe(self, since: int | None, match: Callable[[dict], bool]) -> tuple[Subscriber, list[dict], bool]:
        """Register a subscriber; return it, the retained backlog after `since`, and whether some was lost."""
        sub = Subscriber(match)
        backlog: list[dict] = []
        missed = False
        if since is not None and since < self.seq:
            first = self.store.first_event_seq()
            missed = first == 0 or since + 1 < first
            backlog = [e for e in self.store.events_after(since) if match(e)]
        self.subscribers.add(sub)
        return sub, backlog, missed

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        sub.send.close()


def clip(value: Any) -> Any:
    """A transcript entry small enough to put in an event (big ones are fetched on demand)."""
    text = json.dumps(value)
    if len(text) <= MAX_EVENT_FIELD_BYTES:
        return value
    return {"truncated": True, "bytes": len(text), "preview": text[:2000]}
