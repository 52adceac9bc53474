"""`task.*`: desktop tasks (SPEC §7). Thin: the work is in task_runner.TaskService (`daemon.tasks`)."""

from __future__ import annotations

from bgcore.jsonrpc import INVALID_STATE, RpcError

from bgd.rpc.table import method
from bgcore.tasks_file import FIELDS


def _tasks(daemon):
    service = getattr(daemon, "tasks", None)
    if service is None:
        raise RpcError(INVALID_STATE, "desktop tasks are not enabled in this daemon")
    return service


def _fields(params) -> dict:
    return {key: params.raw[key] for key in FIELDS if key in params.raw}


@method("task.list")
async def list_tasks(daemon, params, conn):
    """Every task in tasks.toml with its status and next fire, plus the file's errors if any."""
    return _tasks(daemon).list_json()


@method("task.get")
async def get(daemon, params, conn):
    """One task, with its status, next fire and remembered permissions."""
    service = _tasks(daemon)
    return service.task_json(service.get_task(params.req_str("name")))


@method("task.add")
async def add(daemon, params, conn):
    """Add a task to tasks.toml (comments and layout of the rest are kept)."""
    return await _tasks(daemon).add(params.req_str("name"), _fields(params))


@method("task.edit")
async def edit(daemon, params, conn):
    """Change fields of a task in tasks.toml; an empty string clears an optional field."""
    return await _tasks(daemon).edit(params.req_str("name"), _fields(params))


@method("task.remove")
async def remove(daemon, params, conn):
    """Remove a task from tasks.toml (its run history stays)."""
    return await _tasks(daemon).remove(params.req_str("name"))


@method("task.pause")
async def pause(daemon, params, conn):
    """Set enabled = false: the task stops firing until resumed."""
    return await _tasks(daemon).set_enabled(params.req_str("name"), False)


@method("task.resume")
async def resume(daemon, params, conn):
    """Set enabled = true: the task fires again from its next time (no catch-up for the pause)."""
    return await _tasks(daemon).set_enabled(params.req_str("name"), True)


@method("task.run")
async def run(daemon, params, conn):
    """Fire a task now, by hand (its overlap policy does not apply; the concurrency cap does)."""
    return await _tasks(daemon).run_now(params.req_str("name"))


@method("task.history")
async def history(daemon, params, conn):
    """A task's runs and skipped runs, newest first."""
    return _tasks(daemon).history(params.req_str("name"), params.int("limit", 1000))
