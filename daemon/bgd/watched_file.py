"""A definitions file the daemon keeps live (tasks.toml, routines.toml): watched, debounced, and
written atomically.

The file's directory is watched with watchdog, whose thread pokes trio through the run's token; a
change is applied once the file has been quiet for DEBOUNCE_S (editors write in several steps),
well within the second SPEC §7 asks for. A write goes to a temporary file beside the target and is
renamed over it, so a reader never sees half a file, and a symlinked file (dotfiles) stays one.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import trio

log = logging.getLogger("bgd")

DEBOUNCE_S = 0.1
# watchdog's event types that change a file (our own reads open and close it too: not those)
CHANGES = ("created", "modified", "deleted", "moved", "closed")


async def watch(path: Path, reload: Callable[[], object], task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Call `reload()` now and after every change of `path`, until cancelled.  The watcher starts
    first, so an edit made while the file is first read is either in that read or seen after it."""
    dirty = trio.Event()

    def changed() -> None:
        dirty.set()

    observer = _start_observer(Path(path), changed)
    reload()
    task_status.started()
    try:
        while True:
            await dirty.wait()
            while True:
                dirty = trio.Event()
                with trio.move_on_after(DEBOUNCE_S) as scope:
                    await dirty.wait()
                if scope.cancelled_caught:
                    break
            reload()
    finally:
        if observer is not None:
            observer.stop()


def _start_observer(path: Path, changed: Callable[[], None]):
    try:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer
    except ImportError:  # pragma: no cover - watchdog is a dependency
        log.warning("watchdog is not installed: edits to %s apply on `bgctl daemon reload` only", path)
        return None
    token = trio.lowlevel.current_trio_token()
    target = path.name

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event):
            if event.event_type not in CHANGES:
                return
            paths = (getattr(event, "src_path", ""), getattr(event, "dest_path", "") or "")
            if any(os.path.basename(os.fsdecode(p)) == target for p in paths if p):
                try:
                    token.run_sync_soon(changed)
                except trio.RunFinishedError:
                    pass

    path.parent.mkdir(parents=True, exist_ok=True)
    observer = Observer()
    observer.daemon = True
    observer.schedule(Handler(), str(path.parent), recursive=False)
    observer.start()
    return observer


def write_atomically(path: Path, text: str, *, new_mode: int | None = None) -> None:
    """Replace the file's text (an existing file keeps its mode; a new one gets `new_mode`, or the
    umask's).  Raises OSError, with the temporary file removed."""
    target = os.path.realpath(path)
    tmp = f"{target}.bgd-{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            os.chmod(tmp, os.stat(target).st_mode & 0o7777)
        except FileNotFoundError:
            if new_mode is not None:
                os.chmod(tmp, new_mode)
        os.replace(tmp, target)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


__all__ = ["CHANGES", "DEBOUNCE_S", "watch", "write_atomically"]
