"""Git worktrees for task runs (`worktree = true`, SPEC §7): each run works in its own checkout.

A run's worktree is `git worktree add --detach <state>/worktrees/<task>/<run>` at the repository's
HEAD, so a run never moves the person's branch or touches their working tree. Worktrees are left in
place after the run (its changes are the point) and removed `[tasks] keep_worktrees_days` after the
run's session ended (`prune_worktree`, planned by the pure `pruning.prune_plan`).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


class WorktreeError(RuntimeError):
    """The worktree cannot be made; the message says why and what to do."""


def _git(cwd: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", cwd, *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, env=dict(os.environ, GIT_TERMINAL_PROMPT="0"))


def check_repository(cwd: str) -> str | None:
    """Why `cwd` cannot host worktrees, or None (blocking; for validating a task)."""
    try:
        result = _git(cwd, "rev-parse", "--verify", "--quiet", "HEAD")
    except FileNotFoundError:
        return "git is not installed; install it or set worktree = false"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run git in {cwd}: {exc}"
    if result.returncode != 0:
        inside = _git(cwd, "rev-parse", "--git-dir").returncode == 0
        if inside:
            return f"{cwd} is a git repository without any commit yet; commit once or set worktree = false"
        return f"{cwd} is not a git repository, so runs cannot get worktrees; run `git init` there or set worktree = false"
    return None


def add_worktree(cwd: str, state_dir: Path, task: str, run_id: int) -> Path:
    """Make the run's worktree; the directory to run in (blocking: the runner calls it in a thread)."""
    target = worktree_path(state_dir, task, run_id)
    problem = check_repository(cwd)
    if problem:
        raise WorktreeError(problem)
    target.parent.mkdir(parents=True, exist_ok=True)
    result = _git(cwd, "worktree", "add", "--detach", str(target), "HEAD")
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["git worktree add failed"])[-1]
        raise WorktreeError(f"git worktree add in {cwd} failed: {last}")
    # The task's directory may be a subdirectory of the repository: run in the same place inside.
    top = _git(cwd, "rev-parse", "--show-toplevel").stdout.strip()
    inner = os.path.relpath(os.path.realpath(cwd), os.path.realpath(top)) if top else "."
    return target / inner if inner != "." else target


def worktree_path(state_dir: Path, task: str, run_id: int) -> Path:
    return Path(state_dir) / "worktrees" / task / str(run_id)



def prune_worktree(repository: str, path: str) -> str | None:
    """Remove a run's worktree (`git worktree remove`, then `prune`); None, or why it could not be."""
    import shutil
    target = Path(path)
    problem = None
    if os.path.isdir(repository):
        result = _git(repository, "worktree", "remove", "--force", str(target))
        if result.returncode != 0 and target.exists():
            problem = (result.stderr.strip().splitlines() or ["git worktree remove failed"])[-1]
        _git(repository, "worktree", "prune")
    if target.exists():
        # The repository is gone, or git could not remove it: the directory is all that is left.
        shutil.rmtree(target, ignore_errors=True)
        problem = None if not target.exists() else (problem or f"cannot remove {target}")
    try:
        target.parent.rmdir()  # the task's folder, once its last run's worktree is gone
    except OSError:
        pass
    return problem
