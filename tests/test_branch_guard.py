"""The branch guard: push patterns, the hooks with a real git, and what a run pushed read back."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bgcore.branch_guard import (ZERO, PushedRef, commit_msg_hook, fetched_refs, merge_pushes, parse_hook_log,
                                 parse_packed_refs, parse_push_reflog, parse_refs, pattern_problem, pre_push_hook, push_allowed,
                                 pushed_refs, pushes_at_remote, remote_changes)

PATTERNS = ("claude/*", "release-?", "refs/tags/v*", "it's")


@pytest.mark.parametrize("ref, allowed", [
    ("refs/heads/claude/fix", True), ("claude/a/b/c", True), ("refs/heads/claude", False),
    ("refs/heads/main", False), ("refs/heads/release-1", True), ("refs/heads/release-10", False),
    ("refs/tags/v1.0", True), ("refs/tags/1.0", False), ("refs/heads/it's", True), ("refs/heads/xclaude/a", False),
])
def test_patterns(ref, allowed):
    assert push_allowed(ref, PATTERNS) is allowed
    assert not push_allowed(ref, ())


def test_bad_patterns():
    assert pattern_problem("claude/*") is None
    assert "characters" in pattern_problem("claude/ x")
    assert "non-empty" in pattern_problem("")
    assert "double" in pattern_problem("a//b")
    assert pattern_problem(3)


def git(*args, cwd, check=True, env=None):
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=check,
                          env=dict(os.environ, GIT_TERMINAL_PROMPT="0", **(env or {})))


def test_the_hook_script_agrees_with_push_allowed(tmp_path):
    repo = tmp_path / "r"
    git("init", "-q", str(repo), cwd=tmp_path)
    hook = tmp_path / "pre-push"
    hook.write_text(pre_push_hook(PATTERNS))
    refs = ["refs/heads/claude/fix", "refs/heads/main", "refs/heads/release-1", "refs/heads/release-10",
            "refs/tags/v2", "refs/tags/2", "refs/heads/it's", "refs/heads/claude"]
    for ref in refs:
        result = subprocess.run(["sh", str(hook), "origin", "/remote"], cwd=repo, capture_output=True, text=True,
                                input=f"refs/heads/x {'a' * 40} {ref} {ZERO}\n")
        assert (result.returncode == 0) is push_allowed(ref, PATTERNS), (ref, result.stderr)
    log = parse_hook_log((repo / ".git" / "bgagents-pushes.log").read_text())
    assert [a["verdict"] == "allowed" for a in log] == [push_allowed(r, PATTERNS) for r in refs]
    assert log[1] == {"verdict": "refused", "remote": "origin", "ref": "refs/heads/main", "old": ZERO, "new": "a" * 40}


@pytest.fixture
def clone(tmp_path):
    remote = tmp_path / "remote.git"
    seed = tmp_path / "seed"
    git("init", "-q", "--bare", "-b", "main", str(remote), cwd=tmp_path)
    git("init", "-q", "-b", "main", str(seed), cwd=tmp_path)
    ident = ["-c", "user.name=T", "-c", "user.email=t@example.com"]
    (seed / "README").write_text("hi\n")
    git("add", "README", cwd=seed)
    git(*ident, "commit", "-q", "-m", "first", cwd=seed)
    git("push", "-q", str(remote), "main", cwd=seed)
    work = tmp_path / "work"
    git("clone", "-q", str(remote), str(work), cwd=tmp_path)
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "pre-push").write_text(pre_push_hook(("claude/*",)))
    (hooks / "prepare-commit-msg").write_text(commit_msg_hook())
    for hook in hooks.iterdir():
        hook.chmod(0o755)
    git("config", "core.hooksPath", str(hooks), cwd=work)
    git("config", "user.name", "Run", cwd=work)
    git("config", "user.email", "run@example.com", cwd=work)
    return work, remote


def reflogs(work: Path) -> dict:
    base = work / ".git" / "logs" / "refs" / "remotes"
    found = {}
    for path in base.rglob("*"):
        if path.is_file():
            remote, _, branch = str(path.relative_to(base)).partition("/")
            found[(remote, branch)] = path.read_text()
    return found


def test_a_run_pushes_claude_fix_and_not_main(clone):
    work, remote = clone
    env = {"BGAGENTS_RUN_ID": "run12345"}
    (work / "fix.txt").write_text("fixed\n")
    git("add", "fix.txt", cwd=work)
    git("commit", "-q", "-m", "Fix it", cwd=work, env=env)
    message = git("log", "-1", "--format=%B", cwd=work).stdout
    assert message.strip().endswith("Bgagents-Run: run12345")
    git("commit", "-q", "--amend", "--no-verify", "-m", "Fix it again", cwd=work, env=env)
    assert "Bgagents-Run: run12345" in git("log", "-1", "--format=%B", cwd=work).stdout
    old_main = git("rev-parse", "origin/main", cwd=work).stdout.strip()
    head = git("rev-parse", "HEAD", cwd=work).stdout.strip()

    assert git("push", "-q", "origin", "HEAD:claude/fix", cwd=work).returncode == 0
    refused = git("push", "origin", "HEAD:main", cwd=work, check=False)
    assert refused.returncode != 0 and "may push only to claude/*; refused refs/heads/main" in refused.stderr
    assert git("rev-parse", "main", cwd=remote).stdout.strip() == old_main

    pushed, refusals = pushed_refs(reflogs(work), (work / ".git" / "bgagents-pushes.log").read_text(), ("claude/*",))
    assert [p.to_json() for p in pushed] == [{"ref": "refs/heads/claude/fix", "old": ZERO, "new": head,
                                              "remote": "origin", "allowed": True, "deleted": False,
                                              "found": "clone"}]
    assert [(r["ref"], r["verdict"]) for r in refusals] == [("refs/heads/main", "refused")]


def test_a_push_around_the_hook_is_flagged(clone):
    work, remote = clone
    (work / "x").write_text("x\n")
    git("add", "x", cwd=work)
    git("commit", "-q", "-m", "sneaky", cwd=work)
    git("push", "-q", "--no-verify", "origin", "HEAD:main", cwd=work)
    git("push", "-q", "origin", "HEAD:claude/a", cwd=work)
    git("push", "-q", "origin", ":claude/a", cwd=work)  # deleted again: only the hook's log knows
    pushed, refused = pushed_refs(reflogs(work), (work / ".git" / "bgagents-pushes.log").read_text(), ("claude/*",))
    by_ref = {p.ref: p for p in pushed}
    assert by_ref["refs/heads/main"].allowed is False
    assert by_ref["refs/heads/claude/a"].new == ZERO and by_ref["refs/heads/claude/a"].allowed
    assert refused == []


def test_reflog_lines():
    text = (f"{ZERO} {'b' * 40} A <a@b> 1 +0000\tclone: from /x\n"
            f"{'b' * 40} {'c' * 40} A <a@b> 2 +0000\tupdate by push\n"
            f"{'c' * 40} {'d' * 40} A <a@b> 3 +0000\tfetch: fast-forward\n")
    assert parse_push_reflog(text) == [("b" * 40, "c" * 40)]


A, B, C, T = "a" * 40, "b" * 40, "c" * 40, "7" * 40


def test_ref_lists_and_what_a_clone_fetched():
    text = (f"{A}\tHEAD\n{A}\trefs/heads/main\n{T}\trefs/tags/v1\n{B}\trefs/tags/v1^{{}}\n"
            f"{C}\trefs/pull/1/head\nnot a line\n")
    assert parse_refs(text) == {"HEAD": A, "refs/heads/main": A, "refs/tags/v1": T, "refs/pull/1/head": C}
    shown = parse_refs(f"{A} HEAD\n{A} refs/heads/main\n{A} refs/remotes/origin/HEAD\n"
                       f"{A} refs/remotes/origin/main\n{B} refs/remotes/origin/dev\n{T} refs/tags/v1\n")
    assert fetched_refs(shown) == {"refs/heads/main": A, "refs/heads/dev": B, "refs/tags/v1": T}


def test_remote_changes_keep_new_and_moved_branches_and_tags():
    before = {"refs/heads/main": A, "refs/heads/gone": A, "refs/tags/v1": T}
    after = {"refs/heads/main": B, "refs/heads/claude/x": C, "refs/tags/v1": T, "refs/tags/v2": C,
             "refs/pull/9/head": C, "HEAD": B}
    # A deletion (gone) cannot be told from someone else's; refs a clone never fetches are not compared.
    assert remote_changes(before, after) == [("refs/heads/claude/x", ZERO, C), ("refs/heads/main", A, B),
                                             ("refs/tags/v2", ZERO, C)]
    assert remote_changes(before, dict(before)) == []


def test_only_changes_to_a_commit_the_clone_has_are_the_runs():
    changes = [("refs/heads/claude/x", ZERO, C), ("refs/heads/main", A, B), ("refs/heads/other", A, "d" * 40)]
    found = pushes_at_remote(changes, {B, C}, ("claude/*",), "/srv/app.git")
    assert [(p.ref, p.old, p.new, p.allowed, p.found) for p in found] == [
        ("refs/heads/claude/x", ZERO, C, True, "remote"), ("refs/heads/main", A, B, False, "remote")]
    assert found[1].to_json() == {"ref": "refs/heads/main", "old": A, "new": B, "remote": "/srv/app.git",
                                  "allowed": False, "deleted": False, "found": "remote"}
    seen = [PushedRef("refs/heads/claude/x", ZERO, C, "origin", True)]
    merged = merge_pushes(seen, found)
    assert [(p.ref, p.remote, p.found) for p in merged] == [("refs/heads/claude/x", "origin", "clone"),
                                                            ("refs/heads/main", "/srv/app.git", "remote")]


def test_packed_refs():
    text = f"# pack-refs with: peeled fully-peeled sorted\n{A} refs/remotes/origin/main\n{T} refs/tags/v1\n^{B}\n"
    assert parse_packed_refs(text) == {"refs/remotes/origin/main": A, "refs/tags/v1": T}
    assert parse_packed_refs("garbage here\n") is None


@pytest.mark.parametrize("checkout", [None, "v1", "dev"])
def test_a_clones_ref_files_say_what_git_says(tmp_path, checkout):
    import trio
    from bgd.routines import workspace
    seed = tmp_path / "seed"
    git("init", "-q", "-b", "main", str(seed), cwd=tmp_path)
    ident = ["-c", "user.name=T", "-c", "user.email=t@example.com"]
    git(*ident, "commit", "-q", "--allow-empty", "-m", "one", cwd=seed)
    git(*ident, "tag", "-a", "v1", "-m", "v1", cwd=seed)
    git("branch", "dev", cwd=seed)
    git(*ident, "commit", "-q", "--allow-empty", "-m", "two", cwd=seed)
    work = tmp_path / "work"
    git("clone", "-q", str(seed), str(work), cwd=tmp_path)
    if checkout:
        git("checkout", "-q", checkout, cwd=work)
    shown = parse_refs(git("show-ref", "--head", cwd=work).stdout)
    assert workspace._ref_files(work / ".git") == (shown["HEAD"], fetched_refs(shown))
    assert set(fetched_refs(shown)) == {"refs/heads/main", "refs/heads/dev", "refs/tags/v1"}
    empty = tmp_path / "empty"
    git("init", "-q", str(empty), cwd=tmp_path)
    assert workspace._ref_files(empty / ".git") == (None, {})
    (empty / ".git" / "reftable").mkdir()  # not plain ref files: git itself is asked (show-ref exits 1 here)
    assert workspace._ref_files(empty / ".git") is None
    assert trio.run(workspace._refs, empty, dict(os.environ)) == (None, {})
    assert trio.run(workspace._refs, work, dict(os.environ)) == (shown["HEAD"], fetched_refs(shown))
