"""A routine run's workspace on the worker that runs it (SPEC §8 on SPEC §14).

The owning daemon sends the run's repositories (`RunSpec.workspace`); the worker clones them into
`<state dir>/runs/<owner>/<run id>/` with the same code as a local run (bgd.routines.workspace: the
branch guard's hooks, the commit trailer, git's own message when a clone fails), reads what the run
pushed from its clones, and removes the workspace once it has been kept `keep_s` (the owner's
`[routines] keep_workspaces_days`) after the last agent process in it ended, never while one runs there.

bgd.routines.workspace is trio code and the worker is asyncio: `call_trio` runs such a coroutine
under `trio.run` on a thread of its own, and cancelling the asyncio side cancels it (git is killed).
Each workspace has a small JSON file beside its clones saying whose run it is, which worker holds it
and when it ended (none while an agent works in it), so a worker that restarts goes on keeping and
removing what the one before it made, and two workers sharing a state dir leave each other's alone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Awaitable, Callable

import trio

from bgcore.routines_file import Repo
from bgd.routines import workspace

log = logging.getLogger("bgd.worker")
MARKER = ".bgagents-run.json"
LOOK_S = 3600.0    # the longest the housekeeper sleeps between looks


async def call_trio(fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """Await the trio coroutine `fn(*args)` from asyncio (see the module doc)."""
    handle: dict[str, Any] = {}
    ready = threading.Event()

    async def main() -> Any:
        with trio.CancelScope() as scope:
            handle["stop"] = (trio.lowlevel.current_trio_token(), scope)
            ready.set()
            return await fn(*args)
        raise asyncio.CancelledError()

    task = asyncio.ensure_future(asyncio.to_thread(trio.run, main))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.to_thread(ready.wait)
        token, scope = handle["stop"]
        try:
            token.run_sync_soon(scope.cancel)
        except trio.RunFinishedError:
            pass
        try:
            await task
        except BaseException:
            pass
        raise


class Workspaces:
    """The runs' workspaces of one worker, under `<state dir>/runs/`."""

    def __init__(self, state_dir: Path, worker: str, now: Callable[[], float] = time.time):
        self.root = Path(state_dir) / "runs"
        self.worker = worker     # two workers may share a state dir: each ends only its own orphans
        self.now = now
        self.in_use: Counter[Path] = Counter()   # run dir -> agent processes working in it now
        self._wake = asyncio.Event()

    def run_dir(self, owner: str, run_id: str) -> Path:
        return self.root / owner / run_id

    def of(self, cwd: str) -> Path | None:
        """The run dir that holds `cwd`, when it is one of these workspaces."""
        try:
            parts = Path(cwd).resolve().relative_to(self.root.resolve()).parts
        except ValueError:
            return None
        return self.root / parts[0] / parts[1] if len(parts) >= 2 else None

    async def prepare(self, owner: str, request: dict) -> tuple[Path, list[workspace.Clone]]:
        """Clone the request's repositories into a new workspace (`hold` it first); raises what
        bgd.routines.workspace.prepare raises."""
        run_dir = self.run_dir(owner, request["run_id"])
        repos = tuple(Repo(r["url"], r.get("ref")) for r in request["repos"])
        try:
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            return run_dir, await call_trio(workspace.prepare, run_dir, repos, tuple(request.get("push") or ()))
        finally:
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
                self._write(run_dir, {"owner": owner, "run_id": request["run_id"], "worker": self.worker,
                                      "keep_s": float(request.get("keep_s") or 0), "ended_at": None})
            except OSError as exc:
                log.warning("workspace %s: cannot record it (%s); it is not removed by itself", run_dir, exc)

    def hold(self, run_dir: Path | None) -> Path | None:
        """An agent process works in `run_dir` (a workspace's, or None): it is kept meanwhile (its
        file says so too, for another worker on the same state dir)."""
        if run_dir is None:
            return None
        self.in_use[run_dir] += 1
        meta = self._read(run_dir) if self.in_use[run_dir] == 1 else None
        if meta is not None and meta.get("ended_at") is not None:
            self._update(run_dir, meta, ended_at=None, worker=self.worker)
        return run_dir

    def release(self, run_dir: Path) -> None:
        """An agent process in `run_dir` ended: its keeping time starts again from now."""
        self.in_use[run_dir] -= 1
        if self.in_use[run_dir] > 0:
            return
        del self.in_use[run_dir]
        meta = self._read(run_dir)
        if meta is not None:
            self._update(run_dir, meta, ended_at=self.now())
        self._wake.set()

    async def housekeep(self) -> None:
        """Remove each workspace kept long enough; sleeps until the next is due (at most LOOK_S)."""
        first = True
        while True:
            self._wake.clear()
            wait = await self.prune(orphans=first)
            first = False
            try:
                await asyncio.wait_for(self._wake.wait(), min(wait, LOOK_S))
            except asyncio.TimeoutError:
                pass

    async def prune(self, *, orphans: bool = False) -> float:
        """Remove what is due; returns how long until the next one is.  `orphans`: a workspace that
        never ended (its worker died while a run was in it) ends now."""
        now = self.now()
        wait = LOOK_S
        for marker in sorted(self.root.glob(f"*/*/{MARKER}")):
            run_dir = marker.parent
            if run_dir in self.in_use:
                continue
            meta = self._read(run_dir)
            if meta is None:
                continue
            if meta.get("ended_at") is None:
                if not orphans or meta.get("worker") != self.worker:
                    continue   # in use (here or by another worker on this state dir)
                self._update(run_dir, meta, ended_at=now)
                meta["ended_at"] = now
            due = float(meta["ended_at"]) + float(meta.get("keep_s") or 0)
            if due > now:
                wait = min(wait, due - now)
                continue
            log.info("workspace %s: kept long enough, removing it", run_dir)
            await asyncio.to_thread(workspace.remove, run_dir)
        return max(wait, 0.0)

    @staticmethod
    def _read(run_dir: Path) -> dict | None:
        try:
            return json.loads((run_dir / MARKER).read_text())
        except (OSError, ValueError):
            return None

    def _update(self, run_dir: Path, meta: dict, **changes: Any) -> None:
        try:
            self._write(run_dir, dict(meta, **changes))
        except OSError as exc:
            log.warning("workspace %s: %s", run_dir, exc)

    @staticmethod
    def _write(run_dir: Path, meta: dict) -> None:
        tmp = run_dir / (MARKER + ".tmp")
        tmp.write_text(json.dumps(meta))
        tmp.replace(run_dir / MARKER)
