"""What decides whether a fire of a routine may start a run (SPEC §8): API tokens, Idempotency-Key,
GitHub delivery dedupe and the hourly caps.

Pure functions of time, as the schedulers are: `now` (POSIX seconds) is always a parameter, nothing
here reads a clock or does I/O. The daemon keeps one of each in memory, fills them from its store at
start and writes through to the store as they change.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DEDUPE_WINDOW_S", "IDEMPOTENCY_WINDOW_S", "DeliveryDedupe", "HourlyCap", "IdempotencyKeys",
           "TOKEN_PREFIX", "body_digest", "hash_token", "new_token", "token_matches"]

DEDUPE_WINDOW_S = 7 * 86400      # a delivery id seen this recently starts nothing again
IDEMPOTENCY_WINDOW_S = 86400     # the same Idempotency-Key within this returns the first answer
HOUR_S = 3600
TOKEN_PREFIX = "bgr_"


# ---------------------------------------------------------------- tokens

def new_token() -> str:
    """A fresh API token: 256 random bits, shown once."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """What is stored instead of the token. The token is 256 random bits, so a plain SHA-256 cannot be
    searched backwards; a slow password hash would only slow every fire down."""
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_matches(token: str | None, stored: str | None) -> bool:
    """Whether `token` is the one whose hash is `stored`, compared in constant time."""
    if not token or not stored:
        return False
    return hmac.compare_digest(hash_token(token).encode(), stored.encode())


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


# ---------------------------------------------------------------- GitHub delivery ids

class DeliveryDedupe:
    """Delivery ids seen in the last `window_s`; GitHub's redeliveries keep the id."""

    def __init__(self, window_s: float = DEDUPE_WINDOW_S):
        self.window_s = window_s
        self._seen: dict[str, float] = {}
        self._order: deque[tuple[float, str]] = deque()

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, delivery_id: str) -> bool:
        return delivery_id in self._seen

    def load(self, delivery_id: str, at: float) -> None:
        """A delivery seen at `at` (read back from the store, oldest first)."""
        if delivery_id not in self._seen:
            self._seen[delivery_id] = at
            self._order.append((at, delivery_id))

    def seen(self, delivery_id: str, now: float) -> float | None:
        """When an id was first seen, if that is within the window (a redelivery); else None."""
        self.prune(now)
        return self._seen.get(delivery_id)

    def first_seen(self, delivery_id: str, now: float) -> bool:
        """True the first time an id is offered within the window (and remembers it); False for a
        redelivery."""
        self.prune(now)
        if delivery_id in self._seen:
            return False
        self._seen[delivery_id] = now
        self._order.append((now, delivery_id))
        return True

    def prune(self, now: float) -> list[str]:
        """Forget ids older than the window; returns them (the caller deletes their records)."""
        gone = []
        cutoff = now - self.window_s
        while self._order and self._order[0][0] <= cutoff:
            at, delivery_id = self._order.popleft()
            if self._seen.get(delivery_id) == at:
                del self._seen[delivery_id]
                gone.append(delivery_id)
        return gone


# ---------------------------------------------------------------- hourly caps

class HourlyCap:
    """At most `limit` runs in any `window_s` (an hour): a sliding window of start times per key
    (a routine and the kind of trigger)."""

    def __init__(self, window_s: float = HOUR_S):
        self.window_s = window_s
        self._times: dict[Any, deque[float]] = {}

    def _window(self, key: Any, now: float) -> deque[float]:
        times = self._times.setdefault(key, deque())
        cutoff = now - self.window_s
        while times and times[0] <= cutoff:
            times.popleft()
        return times

    def retry_after(self, key: Any, limit: int, now: float) -> float | None:
        """None if one more run fits under `limit` now, else the seconds until one does."""
        times = self._window(key, now)
        if len(times) < limit:
            return None
        return max(times[len(times) - limit] + self.window_s - now, 0.0)

    def take(self, key: Any, limit: int, now: float) -> float | None:
        """Count a run if it fits (None), else say when one would (and count nothing)."""
        wait = self.retry_after(key, limit, now)
        if wait is None:
            self._times[key].append(now)
        return wait

    def record(self, key: Any, at: float) -> None:
        """A run that started at `at` (read back from the store, in order)."""
        self._times.setdefault(key, deque()).append(at)

    def count(self, key: Any, now: float) -> int:
        return len(self._window(key, now))


# ---------------------------------------------------------------- Idempotency-Key

@dataclass
class _Key:
    digest: str
    at: float
    answer: Any = None          # None while the first request is still being answered
    waiters: list = field(default_factory=list)


@dataclass(frozen=True)
class Replay:
    answer: Any


@dataclass(frozen=True)
class Conflict:
    pass


@dataclass(frozen=True)
class Pending:
    """The first request with this key is still being answered: wait for it, then ask again."""


@dataclass(frozen=True)
class New:
    pass


class IdempotencyKeys:
    """`Idempotency-Key` per routine: the same key within the window returns the first answer and
    starts nothing; the same key with another body is a conflict (409)."""

    def __init__(self, window_s: float = IDEMPOTENCY_WINDOW_S):
        self.window_s = window_s
        self._keys: dict[tuple[str, str], _Key] = {}
        self._order: deque[tuple[float, tuple[str, str]]] = deque()

    def load(self, routine: str, key: str, digest: str, answer: Any, at: float) -> None:
        self._keys[(routine, key)] = _Key(digest, at, answer)
        self._order.append((at, (routine, key)))

    def begin(self, routine: str, key: str, digest: str, now: float) -> New | Replay | Conflict | Pending:
        self.prune(now)
        entry = self._keys.get((routine, key))
        if entry is None:
            self._keys[(routine, key)] = _Key(digest, now)
            self._order.append((now, (routine, key)))
            return New()
        if entry.digest != digest:
            return Conflict()
        if entry.answer is None:
            return Pending()
        return Replay(entry.answer)

    def finish(self, routine: str, key: str, answer: Any) -> None:
        """The first request was answered with `answer` (a success): later ones replay it."""
        entry = self._keys.get((routine, key))
        if entry is not None:
            entry.answer = answer

    def abandon(self, routine: str, key: str) -> None:
        """The first request failed before starting anything: the key is free again."""
        entry = self._keys.get((routine, key))
        if entry is not None and entry.answer is None:
            del self._keys[(routine, key)]

    def prune(self, now: float) -> list[tuple[str, str]]:
        gone = []
        cutoff = now - self.window_s
        while self._order and self._order[0][0] <= cutoff:
            at, ident = self._order.popleft()
            entry = self._keys.get(ident)
            if entry is not None and entry.at == at and entry.answer is not None:
                del self._keys[ident]
                gone.append(ident)
        return gone
