"""The event stream (SPEC §4): every change, numbered, retained, fanned out.

Each event gets the next `seq`, is stored (so a client that reconnects with
`since`, even across a daemon restart, gets what it missed) and is offered to
every subscriber's bounded queue.  A subscriber that falls too far behind is
cut off rather than allowed to grow the daemon's memory; it reconnects with
`since` and catches up from the store.

Each event is encoded to JSON once: the store keeps that text, and every
subscriber is handed the same notification frame built around it (bytes, ready
to write), so a hundred subscribers cost one encoding, not a hundred.

An event is stored before any subscriber can see it: `publish` writes the row,
then offers the frame to the subscribers' queues; their forwarders only run
after the code that published has returned to trio, by when the write is
committed.  Code that stores more than the event (a transcript entry) splits the
two steps: `record` inside its transaction, `deliver` after the commit.

The agents' output lines, which arrive many at a time (a hundred sessions
streaming), are group-committed: `record_soon` holds each line's entry and event
until `flush`, which the session manager runs at the next turn of its trio loop
(and `record`, `subscribe` and every read of a transcript run first), so they
share one commit and still reach the store before anyone sees them, in order.
"""

from __future__ import annotations

from typing import Any, Callable

import trio

from bgd import clock, fastjson
from bgd.store import Store

SUBSCRIBER_QUEUE = 10_000
MAX_EVENT_FIELD_BYTES = 64 * 1024
# What bgcore.jsonrpc.encode(request_obj("event", event)) writes before the event.
_FRAME_HEAD = b'{"jsonrpc":"2.0","method":"event","params":'


def event_frame(event: dict, body: bytes | None = None) -> bytes:
    """The notification line a subscriber is sent for `event` (`body`: its JSON, if already encoded)."""
    return _FRAME_HEAD + (fastjson.dumps(event) if body is None else body) + b"}\n"


def frame_event(frame: bytes) -> dict:
    """The event inside a frame `event_frame` made (for in-process subscribers such as the web page)."""
    return fastjson.loads(frame[len(_FRAME_HEAD):-2])


class Subscriber:
    """A subscriber's filter and queue; the queue holds encoded notification frames."""

    def __init__(self, match: Callable[[dict], bool]):
        self.match = match
        self.send, self.receive = trio.open_memory_channel[bytes](SUBSCRIBER_QUEUE)
        self.overflowed = False

    def wants(self, event: dict) -> bool:
        return not self.overflowed and self.match(event)

    def offer(self, frame: bytes) -> None:
        try:
            self.send.send_nowait(frame)
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
        self._soon: list[tuple[Callable[[], None], str, dict]] = []  # see record_soon

    def publish(self, type_: str, **data: Any) -> dict:
        """Number, store and fan out an event; returns it."""
        event, body = self.record(type_, **data)
        self.deliver(event, body)
        return event

    def record(self, type_: str, **data: Any) -> tuple[dict, bytes]:
        """Number and store an event (the first half of `publish`); returns it and its JSON."""
        if self._soon:
            self.flush()  # what waits is older: it is numbered, stored and delivered first
        return self._record(type_, data)

    def record_soon(self, write: Callable[[], None], type_: str, **data: Any) -> bool:
        """`publish` an event that comes with a row of its own (`write`, a transcript entry), in one
        transaction with the others recorded so until `flush`: a group commit, for the agents'
        output lines, which arrive many at a time. The caller has `flush` called soon (the session
        manager, at the next turn of its trio loop); anything recorded meanwhile flushes first,
        so events keep their order. Returns True when this is the first one waiting."""
        self._soon.append((write, type_, data))
        return len(self._soon) == 1

    def flush(self) -> None:
        """Store what record_soon holds, in one transaction, then deliver it in order."""
        if not self._soon:
            return
        soon, self._soon = self._soon, []
        recorded = []
        with self.store.transaction():
            for write, type_, data in soon:
                write()
                recorded.append(self._record(type_, data))
        for event, body in recorded:
            self.deliver(event, body)

    def _record(self, type_: str, data: dict) -> tuple[dict, bytes]:
        self.seq += 1
        event = {"seq": self.seq, "ts": clock.now_iso(), "type": type_, **data}
        body = fastjson.dumps(event)
        self.store.append_event(self.seq, event["ts"], type_, body.decode())
        self._since_trim += 1
        if self._since_trim >= 1000:
            self._since_trim = 0
            self.store.trim_events(self.retention)
        return event, body

    def deliver(self, event: dict, body: bytes) -> None:
        """Hand a recorded event to the listeners and the subscribers (the second half of `publish`).

        Inside a transaction still open (a caller applying several changes in one commit), it
        waits for that commit, so no subscriber sees an event the store could still lose."""
        if self.store.db.in_transaction:
            self.store.after_commit(lambda: self._deliver_now(event, body))
            return
        self._deliver_now(event, body)

    def _deliver_now(self, event: dict, body: bytes) -> None:
        for listener in self.listeners:
            listener(event)
        frame = None
        for sub in list(self.subscribers):
            if sub.wants(event):
                if frame is None:
                    frame = event_frame(event, body)
                sub.offer(frame)

    def subscribe(self, since: int | None, match: Callable[[dict], bool]) -> tuple[Subscriber, list[dict], bool]:
        """Register a subscriber; return it, the retained backlog after `since`, and whether some was lost."""
        self.flush()
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


def clip(value: Any, encoded: bytes | None = None) -> Any:
    """A transcript entry small enough to put in an event (big ones are fetched on demand).

    `encoded`: the value's JSON, when the caller has it already."""
    text = fastjson.dumps(value) if encoded is None else encoded
    if len(text) <= MAX_EVENT_FIELD_BYTES:
        return value
    return {"truncated": True, "bytes": len(text), "preview": text[:2000].decode("utf-8", "ignore")}
