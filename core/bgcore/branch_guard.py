"""The branch guard of a routine run (SPEC §8): which refs a run may push, the git hooks that refuse
the others, and what a run pushed, read back from its clone.

Pure: the hooks are rendered as text, and the clone's records (the hook's log, the reflogs of its
remote-tracking refs) are parsed from text; the daemon writes and reads the files.

Patterns name branches (`claude/*`, `release-?`): `*` is any run of characters (slashes included),
`?` one character, everything else itself. A ref outside `refs/heads/` (a tag) is matched by its full
name, so `refs/tags/v*` lets a run push tags.

Two hooks go into the clone (through `core.hooksPath`, outside the working tree):
- `pre-push` refuses a push to any ref outside the patterns and logs every ref it was asked about;
- `prepare-commit-msg` adds the `Bgagents-Run: <run id>` trailer to every commit (this hook runs even
  with `git commit --no-verify`).
A push made with `--no-verify` skips `pre-push`; the record still catches it, because git notes every
successful push in the reflog of the remote-tracking ref ("update by push"), and anything there
outside the patterns is flagged. A push to the remote's URL (no remote-tracking ref) with
`--no-verify` leaves nothing in the clone, so the remote itself is asked too: its branches and tags
as the clone fetched them are kept when the run starts, `git ls-remote` lists them again after the
run, and a ref that moved to a commit the run's clone has is a push by the run (`remote_changes`,
`pushes_at_remote`, `merge_pushes`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["COMPARED", "DEFAULT_PUSH", "PushedRef", "TRAILER", "branch_of", "commit_msg_hook", "fetched_refs",
           "merge_pushes", "parse_hook_log", "parse_packed_refs", "parse_push_reflog", "parse_refs", "pattern_problem", "pre_push_hook",
           "push_allowed", "pushes_at_remote", "remote_changes"]

DEFAULT_PUSH = ("claude/*",)
TRAILER = "Bgagents-Run"
ZERO = "0" * 40
HOOK_LOG = "bgagents-pushes.log"
COMPARED = ("refs/heads/", "refs/tags/")   # what a clone fetches, so what is compared with the remote
_PATTERN_RE = re.compile(r"[A-Za-z0-9._/*?+@{}=,~^-]+")


def pattern_problem(pattern: object) -> str | None:
    """Why `pattern` cannot be a push pattern, or None."""
    if not isinstance(pattern, str) or not pattern.strip():
        return f"a push pattern must be a non-empty string such as \"claude/*\", not {pattern!r}"
    if not _PATTERN_RE.fullmatch(pattern):
        return (f"push pattern {pattern!r} has characters a branch name cannot have; use letters, digits, "
                "'/', '-', '_', '.', and * or ? as wildcards")
    if pattern.startswith("/") or pattern.endswith("/") or "//" in pattern:
        return f"push pattern {pattern!r} is not a branch name: no leading, trailing or double '/'"
    return None


def _regex(pattern: str) -> re.Pattern:
    parts = []
    for ch in pattern:
        parts.append(".*" if ch == "*" else "." if ch == "?" else re.escape(ch))
    return re.compile("".join(parts), re.S)


def branch_of(ref: str) -> str:
    return ref[len("refs/heads/"):] if ref.startswith("refs/heads/") else ref


def push_allowed(ref: str, patterns: tuple[str, ...] | list[str]) -> bool:
    """Whether a run may push (or delete) `ref` (a full ref such as refs/heads/claude/fix, or a branch)."""
    name = branch_of(ref)
    return any(_regex(p).fullmatch(name) for p in patterns)


def _sh_pattern(pattern: str) -> str:
    """A `case` pattern meaning what `_regex` means: literal runs single-quoted, wildcards bare."""
    out, literal = [], []
    for ch in pattern:
        if ch in "*?":
            if literal:
                out.append("'" + "".join(literal).replace("'", "'\\''") + "'")
                literal = []
            out.append(ch)
        else:
            literal.append(ch)
    if literal:
        out.append("'" + "".join(literal).replace("'", "'\\''") + "'")
    return "".join(out)


def pre_push_hook(patterns: tuple[str, ...] | list[str]) -> str:
    """The pre-push hook: refuses refs outside `patterns`, logs each ref it sees to
    `$GIT_DIR/bgagents-pushes.log` as `allowed|refused REMOTE REMOTE_REF OLD NEW`."""
    allowed = "|".join(_sh_pattern(p) for p in patterns)
    case = f"    {allowed}) verdict=allowed ;;\n" if patterns else ""
    shown = ", ".join(patterns) if patterns else "(nothing: push = [])"
    return f"""#!/bin/sh
# bgagents branch guard: this run may push only to {shown}
log="$(git rev-parse --git-dir)/{HOOK_LOG}"
status=0
while read -r local_ref local_sha remote_ref remote_sha; do
  name="${{remote_ref#refs/heads/}}"
  verdict=refused
  case "$name" in
{case}    *) ;;
  esac
  printf '%s %s %s %s %s\\n' "$verdict" "$1" "$remote_ref" "$remote_sha" "$local_sha" >> "$log"
  if [ "$verdict" = refused ]; then
    echo "bgagents: this run may push only to {shown}; refused $remote_ref" >&2
    status=1
  fi
done
exit $status
"""


def commit_msg_hook() -> str:
    """The prepare-commit-msg hook: every commit of the run carries `Bgagents-Run: <run id>`."""
    return f"""#!/bin/sh
# bgagents: mark each commit of this run with its run id
[ -n "$BGAGENTS_RUN_ID" ] || exit 0
git interpret-trailers --in-place --if-exists doNothing --trailer "{TRAILER}: $BGAGENTS_RUN_ID" "$1"
"""


@dataclass(frozen=True)
class PushedRef:
    ref: str
    old: str
    new: str
    remote: str
    allowed: bool
    found: str = "clone"   # "clone": its reflogs or the hook's log; "remote": only the remote shows it

    def to_json(self) -> dict:
        return {"ref": self.ref, "old": self.old, "new": self.new, "remote": self.remote,
                "allowed": self.allowed, "deleted": self.new == ZERO, "found": self.found}


def parse_hook_log(text: str) -> list[dict]:
    """The hook's log: every ref a push asked for, with the hook's verdict."""
    attempts = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[0] in ("allowed", "refused"):
            attempts.append({"verdict": parts[0], "remote": parts[1], "ref": parts[2], "old": parts[3],
                             "new": parts[4]})
    return attempts


def parse_push_reflog(text: str) -> list[tuple[str, str]]:
    """(old, new) of each "update by push" line of one reflog file, oldest first."""
    found = []
    for line in text.splitlines():
        head, _, message = line.partition("\t")
        if not message.startswith("update by push"):
            continue
        parts = head.split()
        if len(parts) >= 2 and len(parts[0]) in (40, 64) and len(parts[1]) in (40, 64):
            found.append((parts[0], parts[1]))
    return found


def pushed_refs(reflogs: dict[tuple[str, str], str], hook_log: str,
                patterns: tuple[str, ...] | list[str]) -> tuple[list[PushedRef], list[dict]]:
    """What a run pushed and what its hook refused.

    `reflogs`: (remote, branch) -> the reflog text of refs/remotes/<remote>/<branch>. A ref pushed
    several times is listed once, from its first old commit to its last new one. A deletion leaves no
    reflog (git deletes it with the ref): it is taken from the hook's log when the ref is gone."""
    pushed: dict[tuple[str, str], PushedRef] = {}
    for (remote, branch), text in sorted(reflogs.items()):
        updates = parse_push_reflog(text)
        if updates:
            ref = f"refs/heads/{branch}"
            pushed[(remote, ref)] = PushedRef(ref, updates[0][0], updates[-1][1], remote,
                                              push_allowed(ref, patterns))
    attempts = parse_hook_log(hook_log)
    for attempt in attempts:
        key = (attempt["remote"], attempt["ref"])
        branch = branch_of(attempt["ref"])
        if (attempt["verdict"] == "allowed" and attempt["new"] == ZERO and key not in pushed
                and (attempt["remote"], branch) not in reflogs):
            pushed[key] = PushedRef(attempt["ref"], attempt["old"], ZERO, attempt["remote"], True)
    refused = [a for a in attempts if a["verdict"] == "refused"]
    return list(pushed.values()), refused


# ---------------------------------------------------------------- the remote's side

def parse_refs(text: str) -> dict[str, str]:
    """`git ls-remote` or `git show-ref --head` output (`<object> <ref>` a line) as {ref: object};
    the peeled lines of annotated tags (`^{}`) are left out, as both list the tag object itself."""
    refs = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and len(parts[0]) in (40, 64) and not parts[1].endswith("^{}"):
            refs[parts[1]] = parts[0]
    return refs


def parse_packed_refs(text: str) -> dict[str, str] | None:
    """A repository's `packed-refs` file as {ref: object} (its `#` header and the `^` lines of peeled
    tags skipped); None for a line it cannot read (the caller asks git instead)."""
    refs = {}
    for line in text.splitlines():
        if not line or line[0] in "#^":
            continue
        sha, _, ref = line.partition(" ")
        if len(sha) not in (40, 64) or not ref.startswith("refs/"):
            return None
        refs[ref] = sha
    return refs


def fetched_refs(clone_refs: dict[str, str], remote: str = "origin") -> dict[str, str]:
    """What a fresh clone fetched, as the remote's own refs: `refs/remotes/<remote>/X` is the remote's
    `refs/heads/X` (its HEAD left out), tags are the remote's tags."""
    prefix = f"refs/remotes/{remote}/"
    refs = {}
    for ref, sha in clone_refs.items():
        if ref.startswith(prefix) and ref != prefix + "HEAD":
            refs["refs/heads/" + ref[len(prefix):]] = sha
        elif ref.startswith("refs/tags/"):
            refs[ref] = sha
    return refs


def remote_changes(before: dict[str, str], after: dict[str, str]) -> list[tuple[str, str, str]]:
    """(ref, old, new) of each branch or tag that is new or points elsewhere on the remote after the
    run (old is ZERO for a new one). A deletion is left out: the remote cannot say who made it (the
    run's own deletions are in its hook's log)."""
    return [(ref, before.get(ref, ZERO), sha) for ref, sha in sorted(after.items())
            if ref.startswith(COMPARED) and before.get(ref) != sha]


def pushes_at_remote(changes: list[tuple[str, str, str]], present: set[str] | frozenset[str],
                     patterns: tuple[str, ...] | list[str], remote: str) -> list[PushedRef]:
    """The changes the run made: those whose new commit is in its clone (`present`), which the run
    made or had; a change to a commit it never had is someone else's push during the run."""
    return [PushedRef(ref, old, new, remote, push_allowed(ref, patterns), "remote")
            for ref, old, new in changes if new in present]


def merge_pushes(seen: list[PushedRef], at_remote: list[PushedRef]) -> list[PushedRef]:
    """The clone's account of its pushes, and what only the remote shows (a ref the clone already
    accounts for keeps the clone's entry)."""
    known = {p.ref for p in seen}
    return [*seen, *(p for p in at_remote if p.ref not in known)]
