"""Fires that come over HTTP (SPEC §8): the API trigger and GitHub deliveries, as plain functions of
the request's parts, so they are tested without a listener (http_routes.py is the thin starlette side).

Every refusal is a `Refusal` with its HTTP status and a stable `type`, answered as
`{"error": {"type", "message"}}`; docs/http.md lists them.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping

import msgspec
import orjson
import trio

from bgcore.github import Matcher, event_context, verify_signature
from bgcore.triggers import Conflict, New, Pending, Replay, body_digest, token_matches
from bgd import clock, fastjson

log = logging.getLogger("bgd.routines")

MAX_TEXT = 65_536
MAX_KEY = 255
GITHUB_MAX_BODY = 25 << 20
ROUTINE_EVENTS = ("pull_request", "release")


class Refusal(Exception):
    def __init__(self, status: int, type: str, message: str, headers: dict[str, str] | None = None,
                 extra: dict | None = None):
        super().__init__(message)
        self.status, self.type, self.message = status, type, message
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict:
        return {"error": {"type": self.type, "message": self.message}, **self.extra}


# ---------------------------------------------------------------- the API trigger

def bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def read_text(body: bytes) -> str | None:
    """The fire's optional `{"text": "..."}`."""
    if not body.strip():
        return None
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Refusal(400, "bad_request", 'the body must be JSON such as {"text": "..."} (or empty)') from None
    if not isinstance(data, dict):
        raise Refusal(400, "bad_request", 'the body must be a JSON object such as {"text": "..."}')
    unknown = [k for k in data if k != "text"]
    if unknown:
        raise Refusal(400, "bad_request", f"unknown field {unknown[0]!r} in the body; the one field is \"text\"")
    text = data.get("text")
    if text is None:
        return None
    if not isinstance(text, str):
        raise Refusal(400, "bad_request", "text must be a string")
    if len(text) > MAX_TEXT:
        raise Refusal(400, "text_too_long", f"text has {len(text)} characters; at most {MAX_TEXT} are taken")
    return text or None


def fire_answer(rec: dict) -> tuple[int, dict]:
    """What a fire answers once its run has a session (200), waits in the queue (202), or could not start."""
    base = {"type": "routine_fire", "run_id": rec["id"], "routine": rec["routine"], "status": rec["status"]}
    if rec.get("session_id"):
        return 200, {**base, "session_id": rec["session_id"], "session_url": rec["session_url"]}
    if rec["status"] == "queued":
        return 202, {**base, "session_id": None, "session_url": None, "reason": rec.get("reason")}
    if rec["status"] == "skipped":
        return 409, {"error": {"type": rec.get("reason") or "skipped",
                               "message": _skip_message(rec)}, "run_id": rec["id"]}
    return 502, {"error": {"type": rec["status"], "message": rec.get("error") or f"the run ended {rec['status']}"},
                 "run_id": rec["id"]}


def _skip_message(rec: dict) -> str:
    if rec.get("reason") == "previous_run_active":
        return (f"a previous run of {rec['routine']} is still going and its overlap is \"skip\"; "
                "nothing was started")
    return f"the run was skipped ({rec.get('reason')})"


async def api_fire(service, name: str, authorization: str | None, body: bytes,
                   idempotency_key: str | None) -> tuple[int, dict, dict[str, str]]:
    """POST /v1/routines/<name>/fire. Raises Refusal; returns (status, body, headers)."""
    if service.shutting_down():
        raise Refusal(503, "unavailable", "bgd is shutting down; fire again once it is back")
    routine = service.routines.get(name)
    if routine is None:
        raise Refusal(404, "not_found", f"no routine {name!r}; `bgctl routine ls` lists them")
    triggers = routine.trigger("api")
    if not triggers:
        raise Refusal(404, "not_found", f"routine {name!r} has no API trigger; add one: "
                                        f"[[routines.{name}.triggers]] api = true")
    token = bearer(authorization)
    stored = service.state(name).get("token_hash")
    if token is None:
        raise Refusal(401, "unauthorized", "missing Authorization: Bearer <token>; `bgctl routine token "
                                           f"{name}` makes one", {"WWW-Authenticate": "Bearer"})
    if not token_matches(token, stored):
        raise Refusal(401, "unauthorized", f"wrong token for routine {name!r} (a new token revokes the old "
                                           f"one); `bgctl routine token {name}` makes a new one",
                      {"WWW-Authenticate": 'Bearer error="invalid_token"'})
    if not routine.enabled:
        raise Refusal(400, "routine_paused", f"routine {name!r} is paused; `bgctl routine resume {name}` lets it fire")
    text = read_text(body)
    if idempotency_key is not None:
        key = idempotency_key.strip()
        if not key or len(key) > MAX_KEY or not key.isprintable():
            raise Refusal(400, "bad_request", f"Idempotency-Key must be 1 to {MAX_KEY} printable characters")
        digest = body_digest(body)
        while True:
            state = service.idempotency.begin(name, key, digest, service.now().timestamp())
            if isinstance(state, Conflict):
                raise Refusal(409, "conflict", "this Idempotency-Key was used with another body in the last 24 hours; "
                                               "use a new key for a new fire")
            if isinstance(state, Replay):
                status, answer = state.answer["status"], state.answer["body"]
                return status, answer, {"Idempotent-Replayed": "true"}
            if isinstance(state, Pending):
                await trio.sleep(0.05)  # the first request with this key is being answered
                continue
            assert isinstance(state, New)
            break
    else:
        key = None
    try:
        status, answer, headers = await _fire(service, routine, triggers[0], text, key)
    except BaseException:
        if key is not None:
            service.idempotency.abandon(name, key)
        raise
    if key is not None:
        now = service.now().timestamp()
        service.idempotency.finish(name, key, {"status": status, "body": answer})
        service.store.save_idempotency(name, key, now, body_digest(body), {"status": status, "body": answer})
    return status, answer, headers


async def _fire(service, routine, trigger, text: str | None, key: str | None) -> tuple[int, dict, dict]:
    now = service.now().timestamp()
    wait = service.caps.take((routine.name, "api"), trigger.rate_limit, now)
    if wait is not None:
        service.skipped(routine.name, "api", "rate_limited",
                        error=f"over the routine's rate limit of {trigger.rate_limit} fires an hour")
        if key is not None:
            service.idempotency.abandon(routine.name, key)
        retry = max(1, math.ceil(wait))
        raise Refusal(429, "rate_limited", f"routine {routine.name!r} was fired {trigger.rate_limit} times in the "
                                           f"last hour, its rate limit; try again in {retry} s",
                      {"Retry-After": str(retry)})
    context = f"Text sent with this fire:\n{text}" if text else None
    rec = service.offer(routine, "api", context=context, detail={"idempotency_key": key} if key else None)
    rec = await service.wait_started(rec)
    status, answer = fire_answer(rec)
    return status, answer, {}


# ---------------------------------------------------------------- GitHub

# What routines read of a delivery (bgcore.github's filters and event_context, the record), decoded
# straight from the body: the rest of GitHub's payload (most of its ~20 KB: URLs, the repositories
# of head and base, the sender) is skipped instead of made into objects. A payload these types do
# not fit (a field of another shape) is read whole instead.

class _Login(msgspec.Struct):
    login: Any = None


class _Ref(msgspec.Struct):
    ref: Any = None
    sha: Any = None


class _Label(msgspec.Struct):
    name: Any = None


class _Repository(msgspec.Struct):
    full_name: Any = None


class _PullRequest(msgspec.Struct):
    number: Any = None
    title: Any = None
    body: Any = None
    draft: Any = None
    merged: Any = None
    html_url: Any = None
    user: _Login | None = None
    base: _Ref | None = None
    head: _Ref | None = None
    labels: list[_Label] | None = None


class _Release(msgspec.Struct):
    name: Any = None
    tag_name: Any = None
    body: Any = None
    draft: Any = None
    prerelease: Any = None
    html_url: Any = None
    target_commitish: Any = None
    author: _Login | None = None


class _Delivery(msgspec.Struct, omit_defaults=True):
    action: Any = None
    number: Any = None
    zen: Any = None
    hook_id: Any = None
    repository: _Repository | None = None
    pull_request: _PullRequest | None = None
    release: _Release | None = None


_DECODE_DELIVERY = msgspec.json.Decoder(_Delivery).decode


def read_payload(body: bytes) -> dict:
    """The parts of a delivery's JSON object that routines use, as plain values; raises Refusal
    for a body that is not a JSON object."""
    try:
        return msgspec.to_builtins(_DECODE_DELIVERY(body))
    except msgspec.ValidationError:
        pass  # JSON of another shape: read whole below, and judged there
    except msgspec.DecodeError:
        pass  # not JSON for msgspec: json decides below
    try:
        # orjson: the payload is matched and never stored, so fastjson's guard against an integer
        # past 64 bits (orjson makes it a float) is not needed; whatever orjson refuses, json decides.
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        payload = None
    try:
        if payload is None:
            payload = fastjson.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Refusal(400, "bad_request", "the delivery is not JSON; set the webhook's content type to "
                                          "application/json") from None
    if not isinstance(payload, dict):
        raise Refusal(400, "bad_request", "the delivery's JSON must be an object")
    return payload


class WebhookSecret:
    """The secret of `[github] webhook_secret_file`, read again whenever the file changes."""

    def __init__(self, config, config_dir: Path):
        self.config = config
        self.config_dir = Path(config_dir)
        self._cache: tuple[Any, bytes | None, str | None] | None = None
        self._path: tuple[str, str] | None = None   # the setting as written, and the file it names

    def get(self) -> tuple[bytes | None, str | None]:
        """(the secret, or None and why not). Every delivery asks: one stat while the file is unchanged."""
        name = self.config().routines.webhook_secret_file
        if not name:
            return None, ("no webhook secret is configured; set [github] webhook_secret_file in config.toml to "
                          "the file holding the secret GitHub signs with")
        if self._path is None or self._path[0] != name:
            path = Path(os.path.expanduser(name))
            self._path = (name, str(path if path.is_absolute() else self.config_dir / path))
        path = self._path[1]
        try:
            st = os.stat(path)
            key = (path, st.st_mtime_ns, st.st_size)
        except OSError as exc:
            return None, f"cannot read the webhook secret file {path}: {exc.strerror or exc}"
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1], self._cache[2]
        try:
            with open(path, "rb") as f:
                secret = f.read().strip()
            problem = None if secret else f"the webhook secret file {path} is empty"
        except OSError as exc:
            secret, problem = b"", f"cannot read the webhook secret file {path}: {exc.strerror or exc}"
        self._cache = (key, secret or None, problem)
        return secret or None, problem


def github_delivery(service, headers: Mapping[str, str], body: bytes) -> tuple[int, dict, Any]:
    """POST /v1/github/webhook: checked, deduplicated, matched and recorded at once; the runs it
    starts are prepared after the answer. Raises Refusal; returns (status, body, what to await before
    answering: the group commit of what it wrote, or None)."""
    if service.shutting_down():
        raise Refusal(503, "unavailable", "bgd is shutting down; GitHub retries failed deliveries by hand "
                                          "(Redeliver), which is safe: the delivery id is deduplicated")
    secret, problem = service.webhook_secret.get()
    if secret is None:
        log.error("GitHub delivery refused: %s", problem)
        raise Refusal(401, "unauthorized", problem)
    if not verify_signature(secret, body, headers.get("x-hub-signature-256")):
        service.rejected_deliveries += 1
        raise Refusal(401, "unauthorized", "missing or wrong X-Hub-Signature-256: the delivery is not signed "
                                           "with this daemon's webhook secret")
    event = headers.get("x-github-event", "").strip()
    delivery_id = headers.get("x-github-delivery", "").strip()
    if not event or not delivery_id:
        raise Refusal(400, "bad_request", "a GitHub delivery needs the X-GitHub-Event and X-GitHub-Delivery headers")
    now = service.now().timestamp()
    first = service.dedupe.seen(delivery_id, now) if event != "ping" else None
    if first is not None:
        # A redelivery starts nothing: answered without reading its body again (the first one was JSON).
        with service.group.writing() as stored:
            service.delivery_seen_again(delivery_id, now)
        return 200, {"type": "github_delivery", "delivery": delivery_id, "duplicate": True,
                     "first_seen_at": clock.iso_ts(first), "runs": []}, stored
    payload = read_payload(body)
    if event == "ping":
        return 200, {"type": "ping", "zen": payload.get("zen"), "hook_id": payload.get("hook_id")}, None
    action = payload.get("action") if isinstance(payload.get("action"), str) else None
    # The record, its runs and their events, committed with the other deliveries of this turn of the loop.
    with service.group.writing() as stored:
        service.dedupe.first_seen(delivery_id, now)
        results, ruled_out = _match(service, event, action, payload, delivery_id, now)
        repository = payload.get("repository")
        record = {"id": delivery_id, "event": event, "action": action,
                  "repository": repository.get("full_name") if isinstance(repository, dict) else None,
                  "received_at_iso": clock.iso_ts(now), "results": results, "duplicates": 0}
        if ruled_out:
            record["ruled_out"] = ruled_out
        service.record_delivery(record, now)
    return 200, {"type": "github_delivery", "delivery": delivery_id, "event": event if action is None else f"{event}.{action}",
                 "duplicate": False, "matched": [r["routine"] for r in results if r["matched"]],
                 "runs": [r["run_id"] for r in results if r.get("run_id")]}, stored


def _match(service, event: str, action: str | None, payload: dict, delivery_id: str,
           now: float) -> tuple[list[dict], list[dict]]:
    """(the results of the routines that could take the delivery, the others in the index's compact form)."""
    results: list[dict] = []
    add = results.append
    detail = {"delivery": delivery_id, "event": event if action is None else f"{event}.{action}"}
    matcher = Matcher(event, action, payload)
    examined, ruled_out = service.github_index().split(matcher)
    for routine, triggers in examined:
        if len(triggers) == 1 and triggers[0].enabled:  # the usual routine: one GitHub trigger
            taken = triggers[0]
            why = matcher.why_not(taken.events, taken.filters)
            if why is not None:
                add({"routine": routine.name, "matched": False, "reason": why})
                continue
        else:
            taken = _taken(matcher, routine, triggers, add)
            if taken is None:
                continue
        wait = service.caps.take((routine.name, "github"), taken.hourly_cap, now)
        if wait is not None:
            rec = service.skipped(routine.name, "github", "rate_limited", detail=detail,
                                  error=f"over the routine's hourly cap of {taken.hourly_cap} GitHub-started runs")
            add({"routine": routine.name, "matched": True, "reason": "rate_limited", "run_id": rec["id"],
                 "status": "skipped"})
            continue
        rec = service.offer(routine, "github", context=event_context(event, payload, delivery_id), detail=detail)
        add({"routine": routine.name, "matched": True, "reason": None, "run_id": rec["id"], "status": rec["status"]})
    return results, ruled_out


def _taken(matcher: Matcher, routine, triggers: list, add) -> Any:
    """The first of a routine's GitHub triggers that takes the delivery; None (and the routine's
    result recorded with every trigger's reason) when none does."""
    reasons = []
    for trigger in triggers:
        if not trigger.enabled:
            reasons.append(f"trigger {trigger.index + 1} is disabled")
            continue
        why = matcher.why_not(trigger.events, trigger.filters)
        if why is None:
            return trigger
        reasons.append(why if len(triggers) == 1 else f"trigger {trigger.index + 1}: {why}")
    add({"routine": routine.name, "matched": False, "reason": "; ".join(reasons)})
    return None
