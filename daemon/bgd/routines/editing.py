"""What `routine.add/edit/remove/pause/resume/token` do to routines.toml and the daemon's state, and
the routine objects the methods answer with.

Edits go through bgcore.routines_file (the routine's own sections re-rendered by tomlkit, the rest of
the file byte for byte as it was), are validated as the file would be read, and are applied at once.
"""

from __future__ import annotations

import shlex
from typing import Any

from bgcore.jsonrpc import BAD_SCHEDULE, CONFLICT, INVALID_PARAMS, INVALID_STATE, NOT_FOUND, RpcError
from bgcore.routines_edit import add_routine_text, edit_routine_text, has_routine, remove_routine_text
from bgcore.routines_file import CONNECTOR_FIELDS, ENV_FIELDS, FIELDS, ApiTrigger, Routine, ScheduleTrigger, validate_name
from bgcore.schedule import ScheduleError, parse_schedule
from bgcore.triggers import hash_token, new_token
from bgd import clock
from bgd.routines.secrets import EnvFileError, Masker, read_env_file, shown

_TOP = tuple(k for k in FIELDS if k not in ("environment", "connectors", "triggers"))
_CLEARABLE = ("description", "prompt_file", "agent", "model", "timeout", "timezone")


# ---------------------------------------------------------------- views

def routine_json(service, routine: Routine, *, full: bool = False) -> dict:
    data = routine.to_json()
    data["status"] = "enabled" if routine.enabled else "paused"
    schedules = service.schedules
    for trigger, out in zip(routine.triggers, data["triggers"]):
        out["toml"] = trigger.to_toml()  # as routines.toml has it (what `routine.edit` takes back)
        if isinstance(trigger, ScheduleTrigger):
            nxt = schedules.next_fire(routine.name, trigger.index) if schedules is not None else None
            out["next_at"] = clock.iso(nxt.astimezone(routine.tz)) if nxt is not None else None
            if trigger.schedule.kind == "once" and not trigger.enabled:
                out["status"] = "ran"
        elif isinstance(trigger, ApiTrigger):
            out["path"] = f"/v1/routines/{routine.name}/fire"
            out["url"] = fire_url(service, routine.name)
    state = service.state(routine.name)
    data["token"] = {"set": bool(state.get("token_hash")), "created_at": state.get("token_created_at")}
    data["running"] = [r["id"] for r in service.records.values() if r["routine"] == routine.name]
    data["last_run"] = state.get("last_run")
    env: dict[str, Any] = {}
    if routine.env_path:
        try:
            values = read_env_file(routine.env_path)
            env = {"values": shown(values), "error": None}
        except EnvFileError as exc:
            values, env = {}, {"values": {}, "error": str(exc)}
        masker = Masker(values.values())
        if masker:  # a secret written into the prompt is not shown either
            for key in ("prompt", "description"):
                data[key] = masker(data[key])
    if full:
        data["environment"]["env"] = env or None
    return data


def list_json(service) -> dict:
    return {"file": str(service.file.path), "routines": [routine_json(service, r) for r in service.routines.values()],
            "errors": [e.to_json() for e in service.file.errors]}


def fire_url(service, name: str) -> str:
    return service.session_url("x").rsplit("/s/", 1)[0] + f"/v1/routines/{name}/fire"


# ---------------------------------------------------------------- params -> the file's shape

def fields_from(params: dict, *, for_edit: bool, now, tz) -> dict:
    """The routine's fields in routines.toml's shape, checked for type; `""` clears an optional field
    in an edit."""
    out: dict[str, Any] = {}
    for key in _TOP:
        if params.get(key) is None:
            continue
        value = params[key]
        if for_edit and value == "" and key in _CLEARABLE:
            out[key] = None
        else:
            out[key] = value
    for sub, allowed in (("environment", ENV_FIELDS), ("connectors", CONNECTOR_FIELDS)):
        value = params.get(sub)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise RpcError(INVALID_PARAMS, f"param {sub!r} must be an object of {', '.join(allowed)}")
        unknown = [k for k in value if k not in allowed]
        if unknown:
            raise RpcError(INVALID_PARAMS, f"unknown field {unknown[0]!r} in {sub}; fields: {', '.join(allowed)}")
        out[sub] = {k: (None if for_edit and v == "" else v) for k, v in value.items()}
    triggers = params.get("triggers")
    if triggers is not None:
        if not isinstance(triggers, list) or not all(isinstance(t, dict) for t in triggers):
            raise RpcError(INVALID_PARAMS, "param 'triggers' must be a list of objects, each with schedule, api "
                                           "or github")
        out["triggers"] = [_pin_trigger(t, now, tz) for t in triggers]
    return out


def _pin_trigger(trigger: dict, now, tz) -> dict:
    """Check a schedule trigger, and write one-time forms relative to now (`in 3 hours`) as the time."""
    spec = trigger.get("schedule")
    if not isinstance(spec, str):
        return trigger
    try:
        schedule = parse_schedule(spec, now=now, tz=tz)
    except ScheduleError as exc:
        raise RpcError(BAD_SCHEDULE, str(exc), {"spec": spec, "position": exc.position, "fragment": exc.fragment,
                                                "example": exc.example}) from None
    if schedule.kind == "once":
        if schedule.at <= now:
            raise RpcError(BAD_SCHEDULE, f"{schedule.human} has already passed",
                           {"spec": spec, "position": 0, "fragment": spec, "example": "tomorrow at 9am"})
        if spec.split()[0].lower() in ("in", "today", "tomorrow"):
            return dict(trigger, schedule=schedule.human)
    return trigger


# ---------------------------------------------------------------- edits

def add(service, name: str, params: dict) -> dict:
    if (why := validate_name(name)) is not None:
        raise RpcError(INVALID_PARAMS, why)
    fields = fields_from(params, for_edit=False, now=service.now(), tz=service.tz)
    if not fields.get("repos"):
        raise RpcError(INVALID_PARAMS, "missing param 'repos': a routine clones at least one repository per run")
    if not fields.get("prompt") and not fields.get("prompt_file"):
        raise RpcError(INVALID_PARAMS, "missing param 'prompt' (or 'prompt_file'): what should each run do?")
    keeper = service.file
    text = keeper.read_current()
    if keeper.known(name) or has_routine(text, name):
        raise RpcError(CONFLICT, f"a routine named {name!r} already exists; `bgctl routine edit {name}` changes it, "
                                 "or pick another name")
    new_text = add_routine_text(text, name, fields)
    routine = keeper.check_one(new_text, name)
    keeper.commit_one(new_text, name, routine)
    return routine_json(service, routine)


def edit(service, name: str, params: dict) -> dict:
    keeper = service.file
    keeper.get(name)
    changes = fields_from(params, for_edit=True, now=service.now(), tz=service.tz)
    if not changes:
        raise RpcError(INVALID_PARAMS, "nothing to change: pass at least one field such as prompt or triggers")
    if changes.get("prompt"):
        changes.setdefault("prompt_file", None)
    elif changes.get("prompt_file"):
        changes.setdefault("prompt", None)
    text = keeper.read_current()
    if not has_routine(text, name):
        raise RpcError(NOT_FOUND, f"routine {name!r} was removed from routines.toml meanwhile")
    new_text = edit_routine_text(text, name, changes)
    routine = keeper.check_one(new_text, name)
    keeper.commit_one(new_text, name, routine)
    return routine_json(service, routine)


def remove(service, name: str) -> dict:
    keeper = service.file
    keeper.get(name)
    text = keeper.read_current()
    if not has_routine(text, name):
        raise RpcError(NOT_FOUND, f"routine {name!r} is not in routines.toml any more")
    keeper.commit_one(remove_routine_text(text, name), name, None)
    # Its token and schedule bookkeeping go with it: a routine added again under this name starts afresh
    # (an old token does not fire it).
    service.states.pop(name, None)
    service.store.delete_routine_state(name)
    return {"name": name, "removed": True}


def set_enabled(service, name: str, enabled: bool) -> dict:
    keeper = service.file
    routine = keeper.get(name)
    if routine.enabled == enabled:
        return routine_json(service, routine)
    text = keeper.read_current()
    # Resuming removes `enabled = false` (true is the default), so pause then resume leaves the file as it was.
    new_text = edit_routine_text(text, name, {"enabled": None if enabled else False})
    updated = keeper.check_one(new_text, name)
    keeper.commit_one(new_text, name, updated)
    return routine_json(service, updated)


def token(service, name: str) -> dict:
    """A new API token for `name`, shown this once; only its hash is kept, and it revokes the old one."""
    routine = service.file.get(name)
    value = new_token()
    state = service.state(name)
    state.update(token_hash=hash_token(value), token_created_at=clock.iso(service.now()))
    service.save_state(name)
    service.bus.publish("routine.token", routine=name, created_at=state["token_created_at"])
    url = fire_url(service, name)
    curl = (f"curl -X POST {shlex.quote(url)} -H {shlex.quote('Authorization: Bearer ' + value)} "
            "-H 'Content-Type: application/json' -d '{\"text\": \"what this run is about\"}'")
    result = {"name": name, "token": value, "url": url, "curl": curl}
    if not routine.trigger("api"):
        result["note"] = (f"routine {name!r} has no API trigger yet; add one ([[routines.{name}.triggers]] api = true "
                          f"or `bgctl routine edit {name} --api`) before firing it")
    return result


async def run(service, name: str, text: str | None, rebuild: bool = False) -> dict:
    """`bgctl routine run`: fire now, by hand (the overlap policy does not apply, the cap does)."""
    routine = service.file.get(name)
    if not routine.enabled:
        raise RpcError(INVALID_STATE, f"routine {name!r} is paused; `bgctl routine resume {name}` first")
    if text is not None and len(text) > 65_536:
        raise RpcError(INVALID_PARAMS, f"text has {len(text)} characters; at most 65536 are taken")
    rec = service.offer(routine, "manual", context=f"Text given with this run:\n{text}" if text else None,
                        manual=True, rebuild=rebuild)
    return await service.wait_started(rec)

