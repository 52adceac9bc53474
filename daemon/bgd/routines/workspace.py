"""A run's fresh workspace (SPEC §8): each repository cloned at its ref under the state dir's
`runs/<run id>/`, the branch guard installed and the remote's branches and tags as the clone fetched
them noted; afterwards, what the run pushed (from the clone, and from the remote asked again); and
the workspace's removal once it has been kept long enough.

git runs as a child process (argv, never a shell) with no terminal prompt, so a repository that
asks for credentials fails at once with git's own message instead of hanging the run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import trio

from bgcore.branch_guard import (HOOK_LOG, PushedRef, commit_msg_hook, fetched_refs, merge_pushes,
                                 parse_packed_refs, parse_refs, pre_push_hook, pushed_refs, pushes_at_remote,
                                 remote_changes)
from bgcore.routines_file import Repo, clone_name

log = logging.getLogger("bgd.routines")

CLONE_TIMEOUT_S = 30 * 60
REMOTE_CHECK_S = 60             # the most a remote is given to list its refs after a run
HOOKS_DIR = ".bgagents-hooks"   # beside the runs' workspaces, outside every working tree


class CloneFailed(Exception):
    """A repository that could not be cloned (or checked out at its ref); the message is git's own."""


@dataclass
class Clone:
    repo: Repo
    path: Path
    commit: str | None
    remote_refs: dict[str, str] | None = None   # the remote's branches and tags as the clone fetched them

    def to_json(self) -> dict:
        data = {"url": self.repo.url, "ref": self.repo.ref, "path": str(self.path), "commit": self.commit}
        if self.remote_refs is not None:
            data["remote_refs"] = self.remote_refs
        return data


def _git_env() -> dict[str, str]:
    return dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="/bin/false", SSH_ASKPASS="/bin/false",
                GIT_SSH_COMMAND=os.environ.get("GIT_SSH_COMMAND", "ssh -o BatchMode=yes"))


async def _git(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, output: bool = True) -> str:
    """Run git; its output (`output=False`: none is read, for a command that prints nothing of use).
    Its stdin is /dev/null, and its stderr becomes CloneFailed's message when it fails."""
    out: dict = {"capture_stdout": True} if output else {"stdout": subprocess.DEVNULL}
    result = await trio.run_process(["git", *args], cwd=str(cwd) if cwd else None, capture_stderr=True, check=False,
                                    env=env or _git_env(), stdin=subprocess.DEVNULL, **out)
    if result.returncode != 0:
        raise CloneFailed(_git_message(result.stderr) or f"git {args[0]} exited with code {result.returncode}")
    return result.stdout.decode("utf-8", "replace").strip() if output else ""


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
    hooks = guard_hooks(run_dir.parent, push)
    clones = []
    env = _git_env()
    with trio.fail_after(CLONE_TIMEOUT_S):
        for repo in repos:
            dest = run_dir / clone_name(repo.url)
            try:
                # The guard's hooks are set by the clone itself (-c writes the new repository's config).
                await _git("clone", "--quiet", "-c", f"core.hooksPath={hooks}", "--", source(repo.url), str(dest),
                           cwd=run_dir, env=env, output=False)
                if repo.ref:
                    await _git("checkout", "--quiet", repo.ref, "--", cwd=dest, env=env, output=False)
                commit, remote_refs = await _refs(dest, env)
            except CloneFailed as exc:
                raise CloneFailed(f"cannot clone {repo.url}" + (f" at {repo.ref}" if repo.ref else "")
                                  + f": {exc}") from None
            clones.append(Clone(repo, dest, commit, remote_refs))
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


def guard_hooks(base: Path, push: tuple[str, ...]) -> Path:
    """The branch guard's hooks for these patterns, in `base/.bgagents-hooks/<digest>/`: one directory
    for all the runs with the same patterns (a run's clone names it in core.hooksPath), its files
    checked at every run and written again if anything changed them (blocking: small files)."""
    hooks = {"pre-push": pre_push_hook(push), "prepare-commit-msg": commit_msg_hook()}
    digest = hashlib.sha256("\0".join(hooks.values()).encode()).hexdigest()[:16]
    folder = base / HOOKS_DIR / digest
    for name, text in hooks.items():
        path = folder / name
        try:
            intact = os.stat(path).st_mode & 0o777 == 0o755 and path.read_text() == text
        except (OSError, UnicodeDecodeError):
            intact = False
        if not intact:
            folder.mkdir(parents=True, exist_ok=True)
            fresh = folder / f".{name}.{os.getpid()}"
            fresh.write_text(text)
            fresh.chmod(0o755)
            os.replace(fresh, path)
    return folder


async def _refs(path: Path, env: dict[str, str]) -> tuple[str | None, dict[str, str]]:
    """A fresh clone's HEAD commit (None: an empty repository) and its remote's branches and tags as
    fetched: read from its ref files, or where they are not plain files (reftable), from one
    `git show-ref --head`."""
    found = _ref_files(path / ".git")
    if found is not None:
        return found
    result = await trio.run_process(["git", "show-ref", "--head"], cwd=str(path), capture_stdout=True,
                                    capture_stderr=True, check=False, env=env, stdin=subprocess.DEVNULL)
    if result.returncode not in (0, 1):  # 1: no ref at all (an empty repository)
        raise CloneFailed(_git_message(result.stderr) or f"git show-ref exited with code {result.returncode}")
    refs = parse_refs(result.stdout.decode("utf-8", "replace"))
    return refs.get("HEAD"), fetched_refs(refs)


def _ref_files(git_dir: Path) -> tuple[str | None, dict[str, str]] | None:
    """`_refs` from git's "files" ref storage (HEAD, loose refs, packed-refs; gitrepository-layout),
    or None for anything else, which git itself is then asked about (blocking: small reads)."""
    if (git_dir / "reftable").exists():
        return None
    try:
        head = (git_dir / "HEAD").read_text().strip()
        packed = (git_dir / "packed-refs").read_text() if (git_dir / "packed-refs").exists() else ""
    except (OSError, UnicodeDecodeError):
        return None
    refs = parse_packed_refs(packed)
    if refs is None:
        return None
    for top in ("refs/remotes", "refs/tags", "refs/heads"):
        for folder, _, files in os.walk(git_dir / top):
            for name in files:
                try:
                    text = Path(folder, name).read_text().strip()
                except (OSError, UnicodeDecodeError):
                    return None
                ref = Path(folder, name).relative_to(git_dir).as_posix()
                if not text.startswith("ref: "):  # (a symbolic ref such as refs/remotes/origin/HEAD is skipped)
                    if len(text) not in (40, 64):
                        return None
                    refs[ref] = text
    if head.startswith("ref: "):
        commit = refs.get(head[5:].strip())  # None: an unborn branch (an empty repository)
    elif len(head) in (40, 64):
        commit = head
    else:
        return None
    return commit, fetched_refs(refs)


async def fetched(path: Path) -> dict[str, str] | None:
    """The remote's branches and tags as a clone that is already there last fetched them (a setup
    cache's copy, fetched afresh); None if the clone cannot say."""
    if not (path / ".git").exists():
        return None
    try:
        return (await _refs(path, _git_env()))[1]
    except (CloneFailed, OSError):
        return None


async def remote_pushes(repos: list[dict]) -> dict[str, tuple[str, list[tuple[str, str, str]]]]:
    """What each remote shows the run pushed: its branches and tags listed again (`git ls-remote`) and
    compared with `remote_refs` (noted at clone time), keeping the changes to a commit the clone has.
    `repos` are run-record entries ({url, path, remote_refs}); returns {path: (url, [(ref, old, new)])}.
    A remote that cannot be listed is logged and left out."""
    found: dict[str, tuple[str, list[tuple[str, str, str]]]] = {}
    env = _git_env()
    for repo in repos:
        path, url = Path(repo["path"]), source(repo["url"])
        try:
            with trio.fail_after(REMOTE_CHECK_S):
                # Outside the clone, so nothing the run wrote into its config takes part.
                after = parse_refs(await _git("ls-remote", "--", url, cwd=path.parent, env=env))
                changes = remote_changes(repo["remote_refs"], after)
                present = await _present(path, [new for _, _, new in changes], env) if changes else set()
        except (CloneFailed, trio.TooSlowError, OSError) as exc:
            log.warning("cannot ask %s which refs the run pushed: %s", url,
                        "it took too long" if isinstance(exc, trio.TooSlowError) else exc)
            continue
        kept = [change for change in changes if change[2] in present]
        if kept:
            found[str(path)] = (url, kept)
    return found


async def _present(path: Path, objects: list[str], env: dict[str, str]) -> set[str]:
    """Which of `objects` the clone has (one `git cat-file --batch-check`)."""
    if not path.is_dir():
        return set()
    result = await trio.run_process(["git", "cat-file", "--batch-check"], cwd=str(path), capture_stdout=True,
                                    capture_stderr=True, check=False, env=env,
                                    stdin="".join(f"{o}\n" for o in objects).encode())
    return {line.split()[0] for line in result.stdout.decode("utf-8", "replace").splitlines()
            if len(line.split()) == 3 and line.split()[1] != "missing"}


def read_pushes(clone_paths: list[Path], push: tuple[str, ...],
                at_remote: dict[str, tuple[str, list[tuple[str, str, str]]]] | None = None) -> tuple[list[dict], list[dict]]:
    """(what each clone pushed, what its hook refused), as run-record entries (blocking: file reads).
    The clone's own account (its push reflogs and the hook's log), and what `remote_pushes` found at
    the remotes (`at_remote`, by clone path), which alone sees a push that skipped both."""
    pushed: list[dict] = []
    refused: list[dict] = []
    for path in clone_paths:
        git_dir = path / ".git"
        base = git_dir / "logs" / "refs" / "remotes"
        reflogs: dict[tuple[str, str], str] = {}
        if base.is_dir():
            for log_file in base.rglob("*"):
                if log_file.is_file():
                    remote, _, branch = str(log_file.relative_to(base)).partition("/")
                    try:
                        reflogs[(remote, branch)] = log_file.read_text(errors="replace")
                    except OSError:
                        continue
        try:
            hook_log = (git_dir / HOOK_LOG).read_text(errors="replace")
        except OSError:
            hook_log = ""
        refs, refusals = pushed_refs(reflogs, hook_log, push)
        url, changes = (at_remote or {}).get(str(path), (None, []))
        if changes:
            present = {new for _, _, new in changes}
            refs = merge_pushes(refs, pushes_at_remote(changes, present, push, url))
        pushed += [dict(ref.to_json(), repo=path.name) for ref in refs]
        refused += [dict(attempt, repo=path.name) for attempt in refusals]
    return pushed, refused


def remove(run_dir: Path) -> None:
    """Delete a workspace (blocking). A missing one is fine."""
    shutil.rmtree(run_dir, ignore_errors=True)


__all__ = ["Clone", "CloneFailed", "PushedRef", "fetched", "guard_hooks", "prepare", "prepare_failure", "read_pushes",
           "remote_pushes", "remove", "source"]
