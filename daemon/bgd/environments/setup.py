"""A routine's setup script, cached (SPEC §8): run once in a template workspace; later runs start
from a copy of the template, fetched and reset to their fresh ref.

    <state>/setup-cache/<routine>/
        template/     the workspace the script ran in: the clones and what it added to them
        meta.json     the key it was built for, when, whether it worked (bgcore.setup_cache), and
                      what in each clone git does not track
        setup.log     the last build's output (env_file values masked)
        tmp/          the script's private /tmp, emptied after each build

The template's directory is never removed, only emptied and filled again: a live run sees its own
workspace at the template's path (sandbox.py binds it there, so paths the script baked into what
it made, such as a virtualenv's, hold in every run), and removing a directory another mount
namespace uses as a mount point would take the mount from under that run.

A run's copy: each clone's .git (its object store hard-linked, as `git clone` itself does for a
local clone: git never changes an object file in place, so sharing them is safe) and what the
script made that git does not track (listed once, when the template is built) are copied, as
reflinks where the file system has them (`cp --reflink=auto`), else plainly; then a fetch and a
`git reset --hard` to the fresh ref write the tracked files. Mutable files are never shared.

The script runs with bash (`-e -o pipefail`, as CI runners do), its stdin at end of file, its
output kept, under a time limit; when it ends, everything it started ends too (its sandbox's pid
namespace, or without bubblewrap its process group).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import trio

from bgcore import setup_cache
from bgcore.branch_guard import HOOK_LOG, commit_msg_hook, pre_push_hook
from bgcore.routines_file import clone_name

log = logging.getLogger("bgd.environments.setup")

HOOKS_DIR = ".bgagents-hooks"
TAIL_LINES = 20
KILL_GRACE_S = 1.0


class SetupFailed(Exception):
    """The setup script failed, hung, or is not valid bash."""

    def __init__(self, message: str, *, exit_code: int | None = None, lines: list[str] | None = None,
                 duration_s: float | None = None):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.lines = lines or []
        self.duration_s = duration_s
        self.cache: str | None = None   # the cache decision of the run that tried ("built" | "rebuilt")


class RefreshFailed(Exception):
    """A copied clone could not be fetched or reset to its ref; the message is git's own."""


@dataclass
class ScriptResult:
    exit_code: int | None       # None: it was killed (timeout)
    output: str
    duration_s: float
    timed_out: bool = False
    limit_s: float = 0.0        # the time limit it ran under


@dataclass
class Prepared:
    clones: list
    cache: str                 # "hit" | "built" | "rebuilt"
    reason: str
    root: Path                 # the template's path: where the run sees its workspace
    setup: dict = field(default_factory=dict)


async def check_syntax(script: str) -> str | None:
    """bash's complaint about the script (`bash -n`), or None when it parses."""
    result = await trio.run_process(["bash", "-n", "-c", script, "setup"], stdin=b"", capture_stdout=True,
                                    capture_stderr=True, check=False)
    if result.returncode == 0:
        return None
    text = result.stderr.decode("utf-8", "replace").strip()
    return "; ".join(line.removeprefix("setup: ") for line in text.splitlines()[-3:]) or "bash -n failed"


async def run_script(argv: list[str], *, cwd: str, env: dict[str, str], timeout_s: float,
                     on_line: Callable[[str], None], own_group: bool) -> ScriptResult:
    """Run the setup script's argv (bash, or bwrap around bash) with stdin at EOF, stdout and stderr
    merged and read line by line, killed after `timeout_s`. `own_group`: no sandbox ends what the
    script left running, so its whole process group is killed when it ends."""
    started = time.monotonic()
    proc = await trio.lowlevel.open_process(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                            start_new_session=True)
    tail: deque[str] = deque(maxlen=400)
    done = trio.Event()

    async def read() -> None:
        buffer = b""
        assert proc.stdout is not None
        try:
            async for chunk in proc.stdout:
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for raw in lines:
                    line = raw.decode("utf-8", "replace")
                    tail.append(line)
                    on_line(line)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        if buffer:
            line = buffer.decode("utf-8", "replace")
            tail.append(line)
            on_line(line)
        done.set()

    timed_out = False
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            with trio.move_on_after(timeout_s) as scope:
                await proc.wait()
            if scope.cancelled_caught:
                timed_out = True
                _kill_group(proc.pid, signal.SIGTERM)
                with trio.move_on_after(KILL_GRACE_S):
                    await proc.wait()
            # What it started and left behind ends with it.
            _kill_group(proc.pid, signal.SIGKILL)
            with trio.CancelScope(shield=True):
                await proc.wait()
            # A process that left the group could hold the pipe open: stop reading soon after.
            with trio.move_on_after(1.0):
                await done.wait()
            nursery.cancel_scope.cancel()
    finally:
        _kill_group(proc.pid, signal.SIGKILL)   # also when the daemon stops in the middle
        if proc.stdout is not None:
            with trio.CancelScope(shield=True):
                await proc.stdout.aclose()
    code = None if timed_out else proc.returncode
    if code is not None and code < 0:
        code = 128 - code  # killed by a signal: as a shell reports it
    return ScriptResult(code, "\n".join(tail), time.monotonic() - started, timed_out, timeout_s)


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# -- the template and its copies ------------------------------------------------------

class SetupCache:
    """The setup caches of every routine under `<state>/setup-cache`; one build at a time per
    routine (two runs that start together build it once and both use it)."""

    def __init__(self, root: Path, *, now: Callable[[], float] = time.time):
        self.root = Path(root)
        self.now = now
        self._locks: dict[str, trio.Lock] = {}

    def slot(self, routine: str) -> Path:
        return self.root / routine

    def template(self, routine: str) -> Path:
        return self.slot(routine) / "template"

    def lock(self, routine: str) -> trio.Lock:
        return self._locks.setdefault(routine, trio.Lock())

    def meta(self, routine: str) -> dict | None:
        try:
            data = json.loads((self.slot(routine) / "meta.json").read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and data.get("format") == setup_cache.CACHE_FORMAT else None

    def write_meta(self, routine: str, meta: dict) -> None:
        path = self.slot(routine) / "meta.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, path)

    async def prepare(self, routine: str, *, script: str, repos: tuple, push: tuple[str, ...],
                      network: str | tuple[str, ...], run_dir: Path, rebuild: bool, max_age_s: float,
                      prepare_workspace: Callable[..., Awaitable[list]], make_clone: Callable[..., Any],
                      build: Callable[[Path, Path], Awaitable[ScriptResult]], mask: Callable[[str], str]) -> Prepared:
        """Give `run_dir` its workspace from the routine's template, building it first when
        `setup_cache.decide` says so. `build(template, tmp)` runs the script there."""
        key = setup_cache.cache_key(script, [(r.url, r.ref) for r in repos], network)
        template = self.template(routine)
        async with self.lock(routine):
            meta = self.meta(routine)
            changed = setup_cache.what_changed(meta, script, [(r.url, r.ref) for r in repos], network) if meta else None
            decision = setup_cache.decide(meta, key, self.now(), rebuild=rebuild, max_age_s=max_age_s, changed=changed)
            setup: dict = {}
            untracked = meta.get("untracked") if meta and not decision.build else None
            if decision.build:
                try:
                    setup, untracked = await self._build(routine, key, script, repos, push, network,
                                                         prepare_workspace, build, mask)
                except SetupFailed as exc:
                    exc.cache = decision.cache
                    raise
            else:
                setup = {"built_at": meta.get("built_at"), "duration_s": meta.get("duration_s"),
                         "exit_code": meta.get("exit_code"), "log": str(self.slot(routine) / "setup.log")}
            clones = await copy_workspace(template, run_dir, repos, push, make_clone, untracked)
        return Prepared(clones, decision.cache, decision.reason, template, setup)

    async def _build(self, routine: str, key: str, script: str, repos: tuple, push: tuple[str, ...],
                     network, prepare_workspace, build, mask) -> tuple[dict, dict[str, list[str]]]:
        slot = self.slot(routine)
        template = self.template(routine)
        tmp = slot / "tmp"
        slot.mkdir(parents=True, exist_ok=True)
        await trio.to_thread.run_sync(_empty, template)
        await trio.to_thread.run_sync(_empty, tmp)
        template.mkdir(exist_ok=True)
        tmp.mkdir(exist_ok=True)
        log_path = slot / "setup.log"
        meta_args = dict(script=script, repos=[(r.url, r.ref) for r in repos], network=network)
        started = self.now()
        # A build that fails half-way must never be taken for a good one.
        self.write_meta(routine, setup_cache.meta_for(key, **meta_args, ok=False, built_at=started, duration_s=0,
                                                      exit_code=None, error="being built"))
        await make_template(template, repos, push, prepare_workspace)
        try:
            result = await build(template, tmp)
        finally:
            await trio.to_thread.run_sync(_empty, tmp)
        output = mask(result.output)
        log_path.write_text(output + ("\n" if output else ""))
        lines = setup_cache.last_lines(output, TAIL_LINES)
        if result.timed_out or result.exit_code != 0:
            if result.timed_out:
                error = f"the setup script did not finish within {_minutes(result.limit_s)}; it was stopped"
            else:
                error = f"the setup script exited with code {result.exit_code}"
            if lines:
                error += f": {lines[-1]}"
            self.write_meta(routine, setup_cache.meta_for(key, **meta_args, ok=False, built_at=started,
                                                          duration_s=result.duration_s, exit_code=result.exit_code,
                                                          error=error))
            raise SetupFailed(error, exit_code=result.exit_code, lines=lines, duration_s=result.duration_s)
        # What the script made that git does not track: what each run copies beside the fresh checkout.
        untracked = await untracked_of(template, [clone_name(r.url) for r in repos])
        meta = setup_cache.meta_for(key, **meta_args, ok=True, built_at=started, duration_s=result.duration_s,
                                    exit_code=0, error=None)
        self.write_meta(routine, {**meta, "untracked": untracked})
        return ({"built_at": started, "duration_s": round(result.duration_s, 3), "exit_code": 0, "log": str(log_path)},
                untracked)


def _minutes(seconds: float) -> str:
    if seconds >= 60:
        minutes = round(seconds / 60)
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    whole = max(1, round(seconds))
    return f"{whole} second{'s' if whole != 1 else ''}"


def _empty(path: Path) -> None:
    """Delete what `path` holds, keeping the directory itself (see the module's docstring)."""
    if not path.is_dir():
        return
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                pass


async def make_template(template: Path, repos: tuple, push: tuple[str, ...],
                        prepare_workspace: Callable[..., Awaitable[list]]) -> list:
    """Clone the routine's repositories into the (empty) template, as a run's workspace."""
    clones = await prepare_workspace(template, repos, push, exist_ok=True)
    for repo in repos:
        # Relative, so every copy finds its own run's hooks (git runs hooks from the top of the
        # working tree) with no `git config` per run.
        await _git(template / clone_name(repo.url), "config", "core.hooksPath", f"../{HOOKS_DIR}")
    return clones


async def copy_workspace(template: Path, run_dir: Path, repos: tuple, push: tuple[str, ...],
                         make_clone: Callable[..., Any], untracked: dict[str, list[str]] | None = None) -> list:
    """Make `run_dir` the template's copy at the repositories' fresh refs, with this run's branch
    guard. Per clone: its .git copied (the object store hard-linked), what the setup made that git
    does not track (`untracked`, as `untracked_of` lists it) copied, then a fetch and `git reset
    --hard` to the fresh ref, which writes the tracked files from the objects: git's index then
    knows every file as written (a copied file's new inode would make the agent's first `git
    status` read the whole tree again), and nothing of the template's tracked files survives."""
    run_dir.mkdir(parents=True, exist_ok=False)
    names = [clone_name(repo.url) for repo in repos]
    if untracked is None:
        untracked = await untracked_of(template, names)
    await trio.to_thread.run_sync(_copy_tree, template, run_dir, names, untracked)
    hooks = run_dir / HOOKS_DIR
    hooks.mkdir()
    for name, text in (("pre-push", pre_push_hook(push)), ("prepare-commit-msg", commit_msg_hook())):
        (hooks / name).write_text(text)
        (hooks / name).chmod(0o755)
    clones = []
    for repo, name in zip(repos, names):
        path = run_dir / name
        commit = await refresh(path, repo.ref)
        clones.append(make_clone(repo, path, commit))
    return clones


async def untracked_of(template: Path, names: list[str]) -> dict[str, list[str]]:
    """What git does not track in each clone of the template (ignored files included; a directory
    wholly untracked as one entry): what the setup script made."""
    out = {}
    for name in names:
        _, listing, _ = await _git(template / name, "ls-files", "-z", "--others", "--directory")
        out[name] = [entry for entry in listing.split("\0") if entry]
    return out


def _copy_tree(src: Path, dst: Path, names: list[str], untracked: dict[str, list[str]]) -> None:
    """The template's files outside the clones and the guard's hooks, and each clone's .git and
    untracked files: cp -a with reflinks where possible, the object stores hard-linked."""
    _cp([e.path for e in os.scandir(src) if e.name not in (*names, HOOKS_DIR)], dst)
    for name in names:
        _copy_clone(src / name, dst / name, untracked.get(name, []))


def _copy_clone(src: Path, dst: Path, untracked: list[str]) -> None:
    (dst / ".git").mkdir(parents=True)
    # Not the index (the reset makes it), nor the unused sample hooks.
    _cp([e.path for e in os.scandir(src / ".git") if e.name not in ("objects", "hooks", "index")], dst / ".git")
    objects = src / ".git" / "objects"
    if objects.is_dir():
        result = subprocess.run(["cp", "-al", str(objects), str(dst / ".git" / "objects")], capture_output=True)
        if result.returncode != 0:  # another file system, or links refused: copy
            shutil.rmtree(dst / ".git" / "objects", ignore_errors=True)
            _cp([str(objects)], dst / ".git")
    # What the template's own fetches and pushes left: this run's record starts empty.
    shutil.rmtree(dst / ".git" / "logs" / "refs" / "remotes", ignore_errors=True)
    try:
        (dst / ".git" / HOOK_LOG).unlink()
    except FileNotFoundError:
        pass
    if untracked:
        _cp(untracked, dst, cwd=src, parents=True)


def _cp(sources: list[str], dest: Path, *, cwd: Path | None = None, parents: bool = False) -> None:
    if not sources:
        return
    argv = ["cp", "-a", "--reflink=auto", *(["--parents"] if parents else []), "-t", str(dest), "--", *sources]
    result = subprocess.run(argv, capture_output=True, cwd=cwd)
    if result.returncode != 0:
        raise OSError(result.stderr.decode("utf-8", "replace").strip() or "cp failed")


def _git_env() -> dict[str, str]:
    return dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="/bin/false", SSH_ASKPASS="/bin/false",
                GIT_SSH_COMMAND=os.environ.get("GIT_SSH_COMMAND", "ssh -o BatchMode=yes"))


async def _git(path: Path, *args: str, check: bool = True) -> tuple[int, str, str]:
    result = await trio.run_process(["git", *args],
                                    cwd=str(path), capture_stdout=True, capture_stderr=True, check=False,
                                    env=_git_env(), stdin=b"")
    out = result.stdout.decode("utf-8", "replace").strip()
    err = result.stderr.decode("utf-8", "replace").strip()
    if check and result.returncode != 0:
        lines = [line for line in err.splitlines() if line.strip() and not line.startswith("hint:")]
        raise RefreshFailed("; ".join(lines[-3:])[:500] or f"git {args[0]} exited with code {result.returncode}")
    return result.returncode, out, err


async def refresh(path: Path, ref: str | None) -> str | None:
    """Fetch the clone's remote and reset it to `ref` (None: the branch the template checked out,
    the remote's default; a branch of the remote; else a tag or commit); its HEAD commit. Three git
    processes: with the copy, this is a run's preparation."""
    await _git(path, "fetch", "--quiet", "--prune", "--tags", "--force", "origin")
    branch = ref if ref is not None else _current_branch(path)
    if branch is None:
        return await _head(path)  # an empty repository: nothing to check out
    code, _, _ = await _git(path, "reset", "--quiet", "--hard", f"refs/remotes/origin/{branch}", check=False)
    if code != 0:
        if ref is None:
            raise RefreshFailed(f"the remote no longer has the branch {branch!r} the cached setup was made from; "
                                "rebuild it (bgctl routine run NAME --rebuild)")
        await _git(path, "reset", "--quiet", "--hard", ref)   # a tag or a commit (HEAD stays detached)
    return await _head(path)


def _current_branch(path: Path) -> str | None:
    try:
        head = (path / ".git" / "HEAD").read_text().strip()
    except OSError:
        return None
    return head.removeprefix("ref: refs/heads/") if head.startswith("ref: refs/heads/") else None


async def _head(path: Path) -> str | None:
    code, out, _ = await _git(path, "rev-parse", "--verify", "--quiet", "HEAD", check=False)
    return out or None if code == 0 else None
