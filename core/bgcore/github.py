"""GitHub deliveries for routines (SPEC §8): signatures, the events and filters a trigger names,
whether a delivery matches, and what of it goes into the prompt.

Pure: no I/O, no clock. A trigger's filters are compiled once, when routines.toml is read, so a bad
regex is refused there (with its position) and matching a delivery costs no compilation. Every "no"
says which filter said it, so "why did my routine not fire?" has an answer.

Filters, all of which must match (SPEC §8):

    repository = "acme/api"                       # a plain value means equals
    title = { matches = ".*hotfix.*" }            # equals, contains, starts_with, one_of,
                                                  # not_one_of, matches (the whole value)
    labels = { include = ["needs-review"], exclude = ["wip"] }
    draft = false                                 # and merged (pull_request), prerelease (release)

Fields by event: `repository`, `author`, `title`, `body` and `draft` for both events; `base`, `head`,
`labels` and `merged` for `pull_request`; `tag` and `prerelease` for `release` (a release's title is
its name, or its tag when it has none). A merge arrives as `pull_request.closed` with `merged` true.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["ACTIONS", "EVENTS", "FIELDS", "OPERATORS", "Filter", "FilterError", "Match", "Matcher",
           "TriggerIndex", "compile_filter", "event_context", "expand_ruled_out", "field_value", "match_delivery",
           "parse_event", "sign", "verify_signature"]

ACTIONS: dict[str, tuple[str, ...]] = {
    "pull_request": ("assigned", "auto_merge_disabled", "auto_merge_enabled", "closed", "converted_to_draft",
                     "demilestoned", "dequeued", "edited", "enqueued", "labeled", "locked", "milestoned",
                     "opened", "ready_for_review", "reopened", "review_request_removed", "review_requested",
                     "synchronize", "unassigned", "unlabeled", "unlocked"),
    "release": ("created", "deleted", "edited", "prereleased", "published", "released", "unpublished"),
}
EVENTS = tuple(ACTIONS)
BOTH = ("pull_request", "release")
FIELDS: dict[str, tuple[str, tuple[str, ...]]] = {  # name -> (kind, events it applies to)
    "repository": ("text", BOTH), "author": ("text", BOTH), "title": ("text", BOTH), "body": ("text", BOTH),
    "draft": ("bool", BOTH), "base": ("text", ("pull_request",)), "head": ("text", ("pull_request",)),
    "labels": ("labels", ("pull_request",)), "merged": ("bool", ("pull_request",)),
    "tag": ("text", ("release",)), "prerelease": ("bool", ("release",)),
}
OPERATORS = ("equals", "contains", "starts_with", "one_of", "not_one_of", "matches")
_CASELESS = ("repository", "author")  # GitHub's owner, repository and user names ignore case


class FilterError(ValueError):
    """A filter that cannot be used; `key` is the operator it concerns (None: the field itself),
    `position` the offset into a bad regex."""

    def __init__(self, message: str, key: str | None = None, position: int | None = None):
        super().__init__(message)
        self.message = message
        self.key = key
        self.position = position


# ---------------------------------------------------------------- signatures

def sign(secret: bytes, body: bytes) -> str:
    """The `X-Hub-Signature-256` value GitHub sends for `body`."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, body: bytes, header: str | None) -> bool:
    """Whether `header` is the HMAC-SHA256 of the raw body under `secret`, compared in constant time."""
    if not header or not secret:
        return False
    expected = sign(secret, body).encode()
    return hmac.compare_digest(expected, header.strip().encode("utf-8", "replace"))


# ---------------------------------------------------------------- events

def parse_event(spec: Any) -> tuple[str, str | None]:
    """`"pull_request.opened"` -> ("pull_request", "opened"); `"release"` -> ("release", None)."""
    if not isinstance(spec, str) or not spec.strip():
        raise FilterError(f"a GitHub event must be a string such as \"pull_request.opened\", not {spec!r}")
    event, _, action = spec.strip().partition(".")
    if event not in ACTIONS:
        close = _close(event, EVENTS)
        raise FilterError(f"unknown GitHub event {spec!r}" + (f" (did you mean {close!r}?)" if close else "")
                          + f"; routines take {', '.join(EVENTS)}, each with or without .ACTION")
    if not action:
        return event, None
    if action not in ACTIONS[event]:
        if event == "pull_request" and action == "merged":
            raise FilterError("GitHub sends a merge as pull_request.closed: use github = [\"pull_request.closed\"] "
                              "with merged = true")
        close = _close(action, ACTIONS[event])
        raise FilterError(f"unknown action {action!r} of {event}" + (f" (did you mean {close!r}?)" if close else "")
                          + f"; actions: {', '.join(ACTIONS[event])}")
    return event, action


def _close(word: str, choices) -> str | None:
    import difflib
    found = difflib.get_close_matches(word, list(choices), 1)
    return found[0] if found else None


# ---------------------------------------------------------------- filters

@dataclass(frozen=True)
class Filter:
    field: str
    kind: str                                  # text | bool | labels
    checks: tuple[tuple[str, Any], ...]        # (operator, operand); operands of `matches` compiled

    def describe(self) -> str:
        return ", ".join(f"{op} {_show(arg)}" for op, arg in self.checks)


def _show(arg: Any) -> str:
    if isinstance(arg, re.Pattern):
        return repr(arg.pattern)
    if isinstance(arg, (list, tuple)):
        return "[" + ", ".join(repr(a) for a in arg) + "]"
    return repr(arg)


def compile_filter(name: str, value: Any) -> Filter:
    """Read one filter of a GitHub trigger; raises FilterError saying what is wrong and how to write it."""
    if name not in FIELDS:
        close = _close(name, FIELDS)
        raise FilterError(f"unknown GitHub filter {name!r}" + (f" (did you mean {close!r}?)" if close else "")
                          + f"; filters: {', '.join(FIELDS)}")
    kind = FIELDS[name][0]
    if kind == "bool":
        if isinstance(value, dict) and set(value) == {"equals"}:
            value = value["equals"]
        if not isinstance(value, bool):
            raise FilterError(f"filter {name} must be true or false, not {_kind(value)}")
        return Filter(name, kind, (("equals", value),))
    if kind == "labels":
        return _labels_filter(name, value)
    if isinstance(value, str):
        return Filter(name, kind, (("equals", value),))
    if not isinstance(value, dict) or not value:
        raise FilterError(f"filter {name} must be a string (equals) or a table of operators such as "
                          f"{{ matches = \".*hotfix.*\" }}, not {_kind(value)}")
    checks = []
    for op, arg in value.items():
        if op not in OPERATORS:
            close = _close(op, OPERATORS)
            raise FilterError(f"unknown operator {op!r} in filter {name}" + (f" (did you mean {close!r}?)" if close else "")
                              + f"; operators: {', '.join(OPERATORS)}", op)
        if op in ("one_of", "not_one_of"):
            if not isinstance(arg, list) or not arg or not all(isinstance(a, str) for a in arg):
                raise FilterError(f"{name}.{op} must be a non-empty list of strings", op)
            checks.append((op, tuple(arg)))
        elif not isinstance(arg, str):
            raise FilterError(f"{name}.{op} must be a string, not {_kind(arg)}", op)
        elif op == "matches":
            try:
                checks.append((op, re.compile(arg)))
            except re.error as exc:
                raise FilterError(f"{name}.matches is not a valid regular expression: {exc.msg}"
                                  + (f" at position {exc.pos}" if exc.pos is not None else ""), op, exc.pos) from None
        else:
            checks.append((op, arg))
    return Filter(name, kind, tuple(checks))


def _labels_filter(name: str, value: Any) -> Filter:
    if isinstance(value, str):
        value = {"include": [value]}
    elif isinstance(value, list):
        value = {"include": value}
    if not isinstance(value, dict) or not value:
        raise FilterError(f"filter labels must be a table such as {{ include = [\"needs-review\"], exclude = [\"wip\"] }}, "
                          f"not {_kind(value)}")
    checks = []
    for op, arg in value.items():
        if op not in ("include", "exclude"):
            close = _close(op, ("include", "exclude"))
            raise FilterError(f"unknown key {op!r} in filter labels" + (f" (did you mean {close!r}?)" if close else "")
                              + "; use include and exclude", op)
        if isinstance(arg, str):
            arg = [arg]
        if not isinstance(arg, list) or not all(isinstance(a, str) for a in arg):
            raise FilterError(f"labels.{op} must be a list of label names", op)
        checks.append((op, tuple(arg)))
    return Filter(name, "labels", tuple(checks))


def _kind(value: Any) -> str:
    return {bool: "true/false", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)


# ---------------------------------------------------------------- matching

def field_value(field: str, event: str, payload: dict) -> Any:
    """The value a filter looks at in a delivery (None when the payload lacks it)."""
    if field == "repository":
        return _get(payload, "repository", "full_name")
    item = payload.get("pull_request" if event == "pull_request" else "release")
    if not isinstance(item, dict):
        return None
    if field == "author":
        return _get(item, "user" if event == "pull_request" else "author", "login")
    if field == "title":
        return item.get("title") if event == "pull_request" else (item.get("name") or item.get("tag_name"))
    if field == "body":
        return item.get("body") or ""
    if field == "draft":
        return bool(item.get("draft"))
    if field in ("base", "head"):
        return _get(item, field, "ref")
    if field == "labels":
        return [label.get("name") for label in item.get("labels") or [] if isinstance(label, dict)]
    if field == "merged":
        return bool(item.get("merged"))
    if field == "tag":
        return item.get("tag_name")
    if field == "prerelease":
        return bool(item.get("prerelease"))
    return None


def _get(obj: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def check_filter(flt: Filter, event: str, payload: dict) -> str | None:
    """None when the delivery passes `flt`, else why not (one line)."""
    return _check(flt, field_value(flt.field, event, payload))


def _check(flt: Filter, value: Any) -> str | None:
    if flt.kind == "labels":
        have = set(value or [])
        for op, names in flt.checks:
            if op == "include" and (missing := [n for n in names if n not in have]):
                return f"labels: {', '.join(map(repr, missing))} missing"
            if op == "exclude" and (found := [n for n in names if n in have]):
                return f"labels: has {', '.join(map(repr, found))}"
        return None
    if flt.kind == "bool":
        want = flt.checks[0][1]
        return None if value is want else f"{flt.field} is {str(value).lower()}, not {str(want).lower()}"
    if value is None:
        return f"{flt.field}: the delivery has none"
    text = str(value)
    caseless = flt.field in _CASELESS
    seen = text.casefold() if caseless else text
    for op, arg in flt.checks:
        if op == "equals":
            if seen != (arg.casefold() if caseless else arg):
                return _not_equal(flt.field, text, arg)
        elif op == "contains":
            if (arg.casefold() if caseless else arg) not in seen:
                return f"{flt.field} {_clip(text)} does not contain {arg!r}"
        elif op == "starts_with":
            if not seen.startswith(arg.casefold() if caseless else arg):
                return f"{flt.field} {_clip(text)} does not start with {arg!r}"
        elif op == "one_of":
            if seen not in {a.casefold() for a in arg} if caseless else seen not in arg:
                return f"{flt.field} is {_clip(text)}, not one of {_show(arg)}"
        elif op == "not_one_of":
            if seen in {a.casefold() for a in arg} if caseless else seen in arg:
                return f"{flt.field} is {_clip(text)}, one of the excluded {_show(arg)}"
        elif op == "matches" and arg.fullmatch(text) is None:
            return f"{flt.field} {_clip(text)} does not match {arg.pattern!r}"
    return None


def _not_equal(field: str, text: str, wanted: str) -> str:
    return f"{field} is {_clip(text)}, not {wanted!r}"


@functools.lru_cache(maxsize=256)  # one delivery's value is clipped once for all the triggers it fails
def _clip(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[:limit - 1] + "…")


@dataclass(frozen=True)
class Match:
    matched: bool
    reason: str | None = None  # which filter said no


_MATCHED = Match(True)
_UNSEEN = object()


class Matcher:
    """One delivery matched against many triggers (a webhook against every routine's): the values
    the filters read from the payload, and the verdict on each list of events, are worked out once
    for the delivery instead of once per trigger. `match` answers as `match_delivery` does."""

    __slots__ = ("event", "action", "payload", "_values", "_events")

    def __init__(self, event: str, action: str | None, payload: dict):
        self.event, self.action, self.payload = event, action, payload
        self._values: dict[str, Any] = {}
        self._events: dict[tuple, str | None] = {}

    def match(self, events: tuple[tuple[str, str | None], ...], filters: tuple[Filter, ...]) -> Match:
        why = self.why_not(events, filters)
        return _MATCHED if why is None else Match(False, why)

    def events_reason(self, events: tuple[tuple[str, str | None], ...]) -> str | None:
        """None when a trigger on `events` takes this delivery's event, else why not."""
        why = self._events.get(events, _UNSEEN)
        if why is _UNSEEN:
            why = self._events[events] = _events_reason(events, self.event, self.action)
        return why

    def value(self, name: str) -> Any:
        """The value filter `name` looks at in this delivery."""
        value = self._values.get(name, _UNSEEN)
        if value is _UNSEEN:
            value = self._values[name] = field_value(name, self.event, self.payload)
        return value

    def why_not(self, events: tuple[tuple[str, str | None], ...], filters: tuple[Filter, ...]) -> str | None:
        """None when the trigger takes the delivery, else the reason `match` gives."""
        why = self._events.get(events, _UNSEEN)
        if why is _UNSEEN:
            why = self._events[events] = _events_reason(events, self.event, self.action)
        if why is not None:
            return why
        values = self._values
        for flt in filters:
            name = flt.field
            if self.event not in FIELDS[name][1]:
                continue  # a filter of the other event (the trigger listens to both)
            value = values.get(name, _UNSEEN)
            if value is _UNSEEN:
                value = values[name] = field_value(name, self.event, self.payload)
            why = _check(flt, value)
            if why is not None:
                return why
        return None


def _events_reason(events: tuple[tuple[str, str | None], ...], event: str, action: str | None) -> str | None:
    if any(e == event and (a is None or a == action) for e, a in events):
        return None
    wanted = ", ".join(e if a is None else f"{e}.{a}" for e, a in events)
    got = event if action is None else f"{event}.{action}"
    return f"event {got} is not one of {wanted}"


class TriggerIndex:
    """Many routines' GitHub triggers, indexed so that a delivery meets only those that can take it.

    Built once per change of the definitions from `(name, enabled, triggers, item)` entries (triggers:
    any objects with `events`, `filters` and `enabled`; item: what `split` hands back). A routine with one enabled trigger whose `repository` filter is
    a plain value (the usual one) is filed under its list of events and that repository: a delivery
    whose event the list does not take, or of another repository, rules it out without looking at it,
    and so does a paused routine, or an event no routine takes. Every other routine is examined.

    `split(matcher)` returns the items of the entries to examine, in the given order, and the others in a compact
    form (names grouped by their shared reason; for the repository, each routine's own value) that
    `expand_ruled_out` turns back into one result per routine, the reason the full match gives:
    `{"reason": text, "routines": [names]}` or `{"field": "repository", "value": the delivery's,
    "routines": {name: the trigger's value}}`.
    """

    def __init__(self, entries: list[tuple[str, bool, list, Any]], events: tuple[str, ...] = EVENTS):
        self.entries = entries
        self.events = events
        self.paused = [name for name, enabled, _, _ in entries if not enabled]
        self.always: list[tuple[int, tuple]] = []           # (position, entry): examined for every delivery
        # events list -> casefolded repository -> [(position, entry)], and -> {name: repository as written}
        self.filed: dict[tuple, dict[str, list[tuple[int, tuple]]]] = {}
        self.wanted: dict[tuple, dict[str, str]] = {}
        for position, entry in enumerate(entries):
            name, enabled, triggers, _ = entry
            if not enabled:
                continue
            repository = _plain_repository(triggers[0]) if len(triggers) == 1 and triggers[0].enabled else None
            if repository is None:
                self.always.append((position, entry))
                continue
            events_key = triggers[0].events
            self.filed.setdefault(events_key, {}).setdefault(repository.casefold(), []).append((position, entry))
            self.wanted.setdefault(events_key, {})[name] = repository

    def split(self, matcher: "Matcher") -> tuple[list, list[dict]]:
        """(the items of the entries that may match, in their order; the others, ruled out, compactly)."""
        ruled_out: list[dict] = []
        if self.paused:
            ruled_out.append({"reason": "the routine is paused", "routines": list(self.paused)})
        if matcher.event not in self.events:
            names = [name for name, enabled, _, _ in self.entries if enabled]
            if names:
                ruled_out.append({"reason": f"routines take {' and '.join(self.events)} events, not {matcher.event}",
                                  "routines": names})
            return [], ruled_out
        found = list(self.always)
        value = matcher.value("repository") if self.filed else None
        repository = None if value is None else str(value).casefold()
        for events_key, by_repository in self.filed.items():
            why = matcher.events_reason(events_key)
            wanted = self.wanted[events_key]
            if why is None and value is None:
                why = "repository: the delivery has none"
            if why is not None:
                ruled_out.append({"reason": why, "routines": list(wanted)})
                continue
            taken = by_repository.get(repository, ())
            found += taken
            others = dict(wanted)
            for _, (name, _, _, _) in taken:
                del others[name]
            if others:
                ruled_out.append({"field": "repository", "value": str(value), "routines": others})
        if len(found) > 1:
            found.sort(key=lambda item: item[0])
        return [entry[3] for _, entry in found], ruled_out


def _plain_repository(trigger: Any) -> str | None:
    """The repository a trigger names with a plain value (`repository = "acme/api"`), if it does."""
    for flt in trigger.filters:
        if flt.field == "repository" and len(flt.checks) == 1 and flt.checks[0][0] == "equals":
            return flt.checks[0][1]
    return None


def expand_ruled_out(ruled_out: list[dict]) -> list[dict]:
    """One `{"routine", "matched": False, "reason"}` per routine of `TriggerIndex.split`'s compact form."""
    results = []
    for group in ruled_out:
        if "reason" in group:
            results += [{"routine": name, "matched": False, "reason": group["reason"]} for name in group["routines"]]
        else:
            field, value = group["field"], group["value"]
            results += [{"routine": name, "matched": False, "reason": _not_equal(field, value, wanted)}
                        for name, wanted in group["routines"].items()]
    return results


def match_delivery(events: tuple[tuple[str, str | None], ...], filters: tuple[Filter, ...], event: str,
                   action: str | None, payload: dict) -> Match:
    """Whether one trigger (its events and filters) takes a delivery of `event`/`action`."""
    return Matcher(event, action, payload).match(events, filters)


# ---------------------------------------------------------------- the prompt

def event_context(event: str, payload: dict, delivery_id: str | None = None) -> str:
    """The essentials of a delivery, for the run's prompt: repository, number, title, URL, author, base
    and head, labels, action."""
    action = payload.get("action")
    lines = [f"GitHub event: {event}" + (f".{action}" if isinstance(action, str) else "")
             + (f" (delivery {delivery_id})" if delivery_id else "")]
    repository = field_value("repository", event, payload)
    if repository:
        lines.append(f"Repository: {repository}")
    if event == "pull_request":
        pr = payload.get("pull_request") or {}
        number = pr.get("number", payload.get("number"))
        lines.append(f"Pull request #{number}: {pr.get('title') or ''}".rstrip())
        if pr.get("html_url"):
            lines.append(f"URL: {pr['html_url']}")
        if (author := field_value("author", event, payload)):
            lines.append(f"Author: {author}")
        base, head = field_value("base", event, payload), field_value("head", event, payload)
        if base or head:
            lines.append(f"Base: {base or '?'}  Head: {head or '?'}"
                         + (f" ({_get(pr, 'head', 'sha')[:12]})" if isinstance(_get(pr, "head", "sha"), str) else ""))
        labels = field_value("labels", event, payload) or []
        lines.append("Labels: " + (", ".join(str(label) for label in labels) if labels else "none"))
        state = ["draft"] if pr.get("draft") else []
        if pr.get("merged"):
            state.append("merged")
        if state:
            lines.append("State: " + ", ".join(state))
    elif event == "release":
        release = payload.get("release") or {}
        lines.append(f"Release: {release.get('name') or release.get('tag_name') or ''}"
                     + (f" (tag {release['tag_name']})" if release.get("tag_name") else ""))
        if release.get("html_url"):
            lines.append(f"URL: {release['html_url']}")
        if (author := field_value("author", event, payload)):
            lines.append(f"Author: {author}")
        if release.get("target_commitish"):
            lines.append(f"Target: {release['target_commitish']}")
        flags = [f for f in ("draft", "prerelease") if release.get(f)]
        if flags:
            lines.append("State: " + ", ".join(flags))
    return "\n".join(lines)
