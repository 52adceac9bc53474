"""routines.toml in the daemon: the live set of routines, read from the file (the source of truth),
watched like tasks.toml, and edited by the `routine.*` methods.

The file is watched and written by bgd.watched_file (changes debounced, then applied). A routine with an error keeps its last valid definition until
it is fixed; a file that is not TOML (or was deleted) keeps every routine as it was. An edit made
through a method writes the file (the routine's own sections, see bgcore.routines_file) and applies
the one routine it changed at once; the watcher then sees a file it already knows and does nothing.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Callable

import trio

from bgcore.jsonrpc import INVALID_PARAMS, NOT_FOUND, ROUTINES_FILE_ERROR, RpcError
from bgcore.routines_edit import find_block
from bgcore.routines_file import Routine, RoutineFileError, load_routines
from bgd import watched_file

log = logging.getLogger("bgd.routines")

Changes = dict  # {"added": [...], "changed": [...], "removed": [...]}


class RoutinesFile:
    def __init__(self, path: Path, *, bus, agents: Callable[[], set[str]], now: Callable, tz,
                 on_change: Callable[[dict[str, Routine], dict[str, Routine], Changes], None]):
        self.path = Path(path)
        self.bus = bus
        self.agents = agents
        self.now = now
        self.tz = tz
        self.on_change = on_change  # (old routines, new routines, changes), before self.routines is replaced
        self.routines: dict[str, Routine] = {}
        self.errors: list[RoutineFileError] = []
        self._digest: str | None = None
        self._seen = False

    # -- watching -------------------------------------------------------------------

    async def watch(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await watched_file.watch(self.path, self.reload_from_disk, task_status=task_status)

    # -- reading --------------------------------------------------------------------

    def reload_from_disk(self) -> dict:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            if self._seen:
                self._set_errors([RoutineFileError(
                    str(self.path), None, None, "routines.toml was deleted; the last routines keep working. "
                    "Restore it, or create an empty routines.toml to remove every routine", fatal=True)])
                self._digest = None
            return self.summary()
        except (OSError, UnicodeDecodeError) as exc:
            self._set_errors([RoutineFileError(str(self.path), None, None, f"cannot read it: {exc}", fatal=True)])
            self._digest = None
            return self.summary()
        self._seen = True
        return self._apply_text(text)

    def _load(self, text: str, previous: dict[str, Routine] | None = None):
        return load_routines(text, str(self.path), self.now(), self.tz, agents=self.agents(), previous=previous)

    def _apply_text(self, text: str) -> dict:
        digest = hashlib.sha1(text.encode()).hexdigest()
        if digest == self._digest:
            return self.summary()
        routines, errors = self._load(text, self.routines)
        self._digest = digest
        if any(e.fatal for e in errors):
            self._set_errors(errors)
            return self.summary()
        for error in errors:  # a routine with an error keeps its last valid definition
            if error.routine and error.routine not in routines and error.routine in self.routines:
                routines[error.routine] = self.routines[error.routine]
        changes = self._replace(routines)
        self._set_errors(errors, changes)
        return self.summary()

    def _replace(self, routines: dict[str, Routine]) -> Changes:
        old = self.routines
        changes = {"removed": [n for n in old if n not in routines],
                   "added": [n for n in routines if n not in old],
                   "changed": [n for n, r in routines.items() if n in old and old[n] is not r]}
        self.on_change(old, routines, changes)
        self.routines = routines
        return changes

    def _set_errors(self, errors: list[RoutineFileError], changes: Changes | None = None) -> None:
        had = bool(self.errors)
        self.errors = list(errors)
        if changes is not None and (changes["added"] or changes["changed"] or changes["removed"] or had):
            self.bus.publish("routines.reloaded", **changes, errors=[e.to_json() for e in errors])
        if errors:
            for error in errors[:5]:
                log.warning("%s", error)
            self.bus.publish("routines.error", errors=[e.to_json() for e in errors])

    def summary(self) -> dict:
        return {"routines": len(self.routines), "errors": [e.to_json() for e in self.errors]}

    # -- editing --------------------------------------------------------------------

    def read_current(self) -> str:
        """The file's text, with outside edits not yet applied applied first."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = ""
        except (OSError, UnicodeDecodeError) as exc:
            raise RpcError(ROUTINES_FILE_ERROR, f"cannot read {self.path}: {exc}") from None
        if hashlib.sha1(text.encode()).hexdigest() != self._digest:
            self._seen = True
            self._apply_text(text)
        fatal = [e for e in self.errors if e.fatal]
        if fatal:
            raise RpcError(ROUTINES_FILE_ERROR, f"{fatal[0]}; fix routines.toml first (`bgctl routine ls` shows "
                                                "the errors)", {"errors": [e.to_json() for e in fatal]})
        return text

    def check_one(self, text: str, name: str) -> Routine:
        """Validate the one routine `name` in `text` (its own sections, so it is fast in a big file)."""
        span = find_block(text, name)
        piece = text[span[0]:span[1]] if span else text
        routines, errors = self._load(piece)
        mine = [e for e in errors if e.routine in (name, None)]
        if mine:
            raise RpcError(INVALID_PARAMS, mine[0].reason, {"errors": [e.to_json() for e in mine]})
        return routines[name]

    def write(self, text: str) -> None:
        try:
            # A new file is private: it may name secret files and hold tokens' routines.
            watched_file.write_atomically(self.path, text, new_mode=0o600)
        except OSError as exc:
            raise RpcError(ROUTINES_FILE_ERROR, f"cannot write {self.path}: {exc.strerror or exc}") from None
        self._digest = hashlib.sha1(text.encode()).hexdigest()
        self._seen = True

    def commit_one(self, text: str, name: str, routine: Routine | None) -> None:
        """Write `text` and apply the one routine it changed (None: removed)."""
        self.write(text)
        routines = dict(self.routines)
        if routine is None:
            routines.pop(name, None)
        else:
            routines[name] = routine
        changes = self._replace(routines)
        self._set_errors([e for e in self.errors if e.routine != name], changes)

    def known(self, name: str) -> bool:
        return name in self.routines or any(e.routine == name for e in self.errors)

    def get(self, name: str) -> Routine:
        routine = self.routines.get(name)
        if routine is None:
            near = [n for n in self.routines if name in n or n in name][:3]
            raise RpcError(NOT_FOUND, f"no routine {name!r}" + (f" (did you mean {', '.join(near)}?)" if near else "")
                           + "; `bgctl routine ls` lists them")
        return routine


__all__ = ["RoutinesFile"]
