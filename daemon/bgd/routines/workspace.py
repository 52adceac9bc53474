"""A run's fresh workspace (SPEC §8): each repository cloned at its ref under the state dir's
`runs/<run id>/`, the branch guard installed; afterwards, what the run pushed; and the workspace's
removal once it has been kept long enough.

git runs as a child process (argv, never a shell) with no terminal prompt, so a repository that
asks for credentials fails at once with git's own message instead of hanging the run.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import trio

from bgcore.branch_guard import HOOK_LOG, PushedRef, commit_msg_hook, pre_push_hook, pushed_refs
from bgcore.routines_file import Repo, clone_name

CLONE_TIMEOUT_S = 30 * 60
HOOKS_DIR = ".bgagents-hooks"   # beside the clones, outside every working tree


class CloneFailed(Exception):
    """A repository that could not be cloned (or checked out at its ref); the message is git's own."""


@dataclass
class Clone:
    repo: Repo
    path: Path
    commit: str | None

    def to_json(self) -> dict:
        return {"url": self.repo.url, "ref": self.repo.ref, "path": str(self.path), "commit": self.commit}


def _git_env() -> dict[str, str]:
    return dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="/bin/false", SSH_ASKPASS="/bin/false",
                GIT_SSH_COMMAND=os.environ.get("GIT_SSH_COMMAND", "ssh -o BatchMode=yes"))


async def _git(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    result = await trio.run_process(["git", *args], cwd=str(cwd) if cwd else None, capture_stdout=True,
                                    capture_stderr=True, check=False, env=env or _git_env(), stdin=b"")
    if result.returncode != 0:
        raise CloneFailed(_git_message(result.stderr) or f"git {args[0]} exited with code {result.returncode}")
    return result.stdout.decode("utf-8", "replace").strip()


def _git_message(stderr: bytes) -> str:
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("Cloning into", "hint:"))]
    return "; ".join(lines[-3:])[:500]


def source(url: str) -> str:
    """What git clones: a path with ~ expanded, or the URL as written."""
    expanded = os.path.expanduser(url)
    return expanded if os.path.isabs(expanded) else url


async def prepare(run_dir: Path, repos: tuple[Repo, ...], push: tuple[str, ...], *,
                  exist_ok: bool = False) -> list[Clone]:
    """Make `run_dir` with every repository cloned at its ref and the guard's hooks in each
    (`exist_ok`: into an empty directory that is already there, a setup cache's template)."""
    run_dir.mkdir(parents=True, exist_ok=exist_ok)
    hooks = run_dir / HOOKS_DIR
    hooks.mkdir()
    for name, text in (("pre-push", pre_push_hook(push)), ("prepare-commit-msg", commit_msg_hook())):
        (hooks / name).write_text(text)
        (hooks / name).chmod(0o755)
    clones = []
    env = _git_env()
    with trio.fail_after(CLONE_TIMEOUT_S):
        for repo in repos:
            dest = run_dir / clone_name(repo.url)
            try:
                # The guard's hooks are set by the clone itself (-c writes the new repository's config).
                await _git("clone", "--quiet", "-c", f"core.hooksPath={hooks}", "--", source(repo.url), str(dest),
                           cwd=run_dir, env=env)
                if repo.ref:
                    await _git("checkout", "--quiet", repo.ref, "--", cwd=dest, env=env)
                commit = await _head(dest, env)
            except CloneFailed as exc:
                raise CloneFailed(f"cannot clone {repo.url}" + (f" at {repo.ref}" if repo.ref else "")
                                  + f": {exc}") from None
            clones.append(Clone(repo, dest, commit))
    return clones


def prepare_failure(exc: BaseException, run_dir: Path) -> tuple[str, str] | None:
    """A `prepare` that raised `exc`, as the run's (status, error); None for what it does not raise."""
    if isinstance(exc, CloneFailed):
        return "clone_failed", str(exc)
    if isinstance(exc, trio.TooSlowError):
        return "clone_failed", f"cloning took longer than {CLONE_TIMEOUT_S // 60} minutes"
    if isinstance(exc, OSError):
        return "setup_failed", f"cannot make the workspace {run_dir}: {exc.strerror or exc}"
    return None


async def _head(path: Path, env: dict[str, str] | None = None) -> str | None:
    try:
        return await _git("rev-parse", "--verify", "--quiet", "HEAD", cwd=path, env=env) or None
    except CloneFailed:
        return None  # an empty repository has no commit yet


def read_pushes(clone_paths: list[Path], push: tuple[str, ...]) -> tuple[list[dict], list[dict]]:
    """(what each clone pushed, what its hook refused), as run-record entries (blocking: file reads)."""
    pushed: list[dict] = []
    refused: list[dict] = []
    for path in clone_paths:
        git_dir = path / ".git"
        base = git_dir / "logs" / "refs" / "remotes"
        reflogs: dict[tuple[str, str], str] = {}
        if base.is_dir():
            for log in base.rglob("*"):
                if log.is_file():
                    remote, _, branch = str(log.relative_to(base)).partition("/")
                    try:
                        reflogs[(remote, branch)] = log.read_text(errors="replace")
                    except OSError:
                        continue
        try:
            hook_log = (git_dir / HOOK_LOG).read_text(errors="replace")
        except OSError:
            hook_log = ""
        refs, refusals = pushed_refs(reflogs, hook_log, push)
        pushed += [dict(ref.to_json(), repo=path.name) for ref in refs]
        refused += [dict(attempt, repo=path.name) for attempt in refusals]
    return pushed, refused


def remove(run_dir: Path) -> None:
    """Delete a workspace (blocking). A missing one is fine."""
    shutil.rmtree(run_dir, ignore_errors=True)


__all__ = ["Clone", "CloneFailed", "PushedRef", "prepare", "prepare_failure", "read_pushes", "remove", "source"]
