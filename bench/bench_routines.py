"""Routines under load (SPEC §8): a flood of signed GitHub deliveries, and API fire -> session created.

Both run the daemon and their baseline (bench/bare_routines.py: a bare hypercorn + starlette app that
only checks the signature, or only reads a fire's body) from the same clean virtual environment,
built as bench_cli.py builds it (`python -m venv` + a plain `pip install` of this tree), so neither
side gets the development environment's import hooks. The agent is a `command` backend running
`true` (`command = ["true", "{prompt}"]`): a run costs its clone, its workspace and its session, not a
model. Repositories are local bare ones made here.

**webhooks** — `deliveries` POSTs to /v1/github/webhook from `clients` concurrent keep-alive
connections (asyncio over raw sockets, in this process; the servers are other processes), against
`routines` routines each with one GitHub trigger on its own repository (`bench/repo-NNN`) and filters
(events, base, draft, labels, and a title regex or an author list on some). The deliveries are
GitHub-shaped (the size of GitHub's own pull_request examples, ~24 KB), 75 % new, 20 % redeliveries
(the same id and body, sent after the first), 5 % with a bad signature; repositories are picked with a
skew (a few busy ones, a long tail) so some routines stay under their cap and others pass it. Every
routine's trigger has `hourly_cap = CAP` (3) and `[routines] max_concurrent_runs` is 4 (the default),
so the runs expected are exactly sum over routines of min(distinct matching deliveries, CAP), and the
rest of the matches are skipped runs (`rate_limited`); both are checked from `routine.runs` once every
run has ended, and every delivery's answer is checked (401 for the bad ones, `duplicate` and `matched`
for the others). Rounds alternate, bare, bgd, bare, bgd, bare (each bgd round a fresh daemon), and the ratio is of the
medians; the slowest bgd round against the fastest bare one, and the CPU time per delivery of each, are
printed beside it. Targets: every delivery of every round answered and right; p99 answer <= 1 s in the
worst round; runs exact; deliveries/s >= 0.5 x bare.

**fire** — `fires` sequential POSTs to /v1/routines/<name>/fire (Authorization: Bearer, a small
`{"text"}` body) per repository, interleaved with the same POST to the bare app: the answer comes once
the run's session exists, so the difference is the daemon's work (the run record, the clone, the
branch guard, the session's start). Repositories: a small one (one file), a medium one (MEDIUM_FILES
files, MEDIUM_COMMITS commits) by path (git hard-links a local clone's objects), and the medium one
by `file://` URL (git packs and copies them, as over a network). Reported with each repository's
size, and beside each the same `git clone` + `git rev-parse HEAD` run directly (interleaved too), so the
part of "our work" that is git's own shows; no target but that every fire answers 200 with a session.
Workspaces are deleted as each run ends (`keep_workspaces_days = 0`), and git's own copies likewise.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import http.client

from harness import Daemon, cpu_seconds, median, percentile, verdict

HERE = Path(__file__).resolve().parent
SECRET = b"bench webhook secret"
WRONG = b"not the webhook secret"
CAP = 3
MAX_RUNS = 4
TARGET_P99_S = 1.0
TARGET_RATIO = 0.5
EVENTS = ("opened", "synchronize", "reopened")
TITLE_RE = r"(fix|feat)(\(.+\))?: .+"
BOTS = ("dependabot[bot]", "renovate[bot]")
MEDIUM_FILES = 2000
MEDIUM_COMMITS = 20
OPEN = ("queued", "preparing", "running")


# ---------------------------------------------------------------- the environment

def _python() -> tuple[str, str]:
    """The clean venv's interpreter (bench_cli.clean_venv), and a line saying so."""
    import bench_cli
    t0 = time.perf_counter()
    venv, reused = bench_cli.clean_venv()
    how = "reused" if reused else f"built in {time.perf_counter() - t0:.0f} s"
    return str(venv / "bin" / "python"), f"clean venv {venv} ({how})"


def _user_env(env: dict) -> dict:
    return {k: v for k, v in env.items() if not k.startswith("PYTHON")}


def _git(*args: str, cwd: Path | None = None) -> str:
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_AUTHOR_NAME="Bench", GIT_AUTHOR_EMAIL="b@example.com",
               GIT_COMMITTER_NAME="Bench", GIT_COMMITTER_EMAIL="b@example.com")
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout.strip()


def make_repo(base: Path, name: str, files: int = 1, commits: int = 1, seed: int = 0) -> tuple[Path, dict]:
    """A bare repository `name.git` with `files` text files over `commits` commits; (path, its size)."""
    rng = random.Random(seed)
    remote, work = base / f"{name}.git", base / f"{name}-seed"
    _git("init", "-q", "--bare", "-b", "main", str(remote))
    _git("init", "-q", "-b", "main", str(work))
    words = [f"{w}{i}" for i, w in enumerate(("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda "
                                              "mu nu xi omicron pi rho sigma tau upsilon phi chi psi omega").split())]
    paths = [work / "README.md"] + [work / f"src/pkg{i % 40:02d}/mod{i:04d}.py" for i in range(files - 1)]

    def write(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [" ".join(rng.choice(words) for _ in range(10)) for _ in range(rng.randint(40, 120))]
        path.write_text("\n".join(lines) + "\n")

    for path in paths:
        write(path)
    _git("add", "-A", cwd=work)
    _git("commit", "-q", "-m", "first", cwd=work)
    for i in range(1, commits):
        for path in rng.sample(paths, max(1, len(paths) // 10)):
            write(path)
        _git("commit", "-q", "-am", f"change {i}", cwd=work)
    _git("push", "-q", str(remote), "main", cwd=work)
    tree_bytes = sum(p.stat().st_size for p in paths)
    shutil.rmtree(work)
    disk = sum(p.stat().st_size for p in remote.rglob("*") if p.is_file())
    return remote, {"files": len(paths), "commits": commits, "tree_bytes": tree_bytes, "repo_bytes": disk}


def _size(info: dict) -> str:
    return (f"{info['files']:,} files, {info['commits']} commits, checkout {info['tree_bytes'] / 1e6:.1f} MB, "
            f"repository {info['repo_bytes'] / 1e6:.1f} MB")


def _daemon(name: str, python: str, routines_toml: str, extra: str) -> Daemon:
    daemon = Daemon(name, extra_config=(
        '[agents.true]\nbackend = "command"\ncommand = ["true", "{prompt}"]\n'
        '[http]\nlisten = "127.0.0.1:0"\n[github]\nwebhook_secret_file = "github.secret"\n' + extra),
        python=python)
    daemon.env = _user_env(daemon.env)
    (daemon.config_dir / "github.secret").write_bytes(SECRET + b"\n")
    (daemon.config_dir / "routines.toml").write_text(routines_toml)
    return daemon


def _listener(daemon: Daemon, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        http_status = daemon.rpc("daemon.status")["http"]
        if http_status["listening"]:
            return int(http_status["url"].rsplit(":", 1)[1])
        if time.monotonic() > deadline:
            raise RuntimeError(f"the daemon's HTTP listener is not up: {http_status}")
        time.sleep(0.05)


class Bare:
    """bench/bare_routines.py on a free port, from the given interpreter."""

    def __init__(self, python: str, secret_file: Path):
        import socket
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.proc = subprocess.Popen([python, str(HERE / "bare_routines.py"), str(self.port), str(secret_file)],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     env=_user_env(dict(os.environ)))
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the bare app did not start")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()

    def __enter__(self) -> "Bare":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _runs_ended(daemon: Daemon, timeout: float) -> list[dict]:
    """Every run record, once none is open any more."""
    deadline = time.monotonic() + timeout
    while True:
        runs = daemon.rpc("routine.runs", {"limit": 100_000})
        if not any(r["status"] in OPEN for r in runs):
            return runs
        if time.monotonic() > deadline:
            still = [r for r in runs if r["status"] in OPEN]
            raise RuntimeError(f"{len(still)} runs still open after {timeout:.0f} s, e.g. {still[0]}")
        time.sleep(0.25)


# ---------------------------------------------------------------- GitHub-shaped deliveries

_REPO_URLS = {  # key -> path under the repository's API URL, as GitHub sends them
    "forks": "forks", "keys": "keys{/key_id}", "collaborators": "collaborators{/collaborator}", "teams": "teams",
    "hooks": "hooks", "issue_events": "issues/events{/number}", "events": "events",
    "assignees": "assignees{/user}", "branches": "branches{/branch}", "tags": "tags", "blobs": "git/blobs{/sha}",
    "git_tags": "git/tags{/sha}", "git_refs": "git/refs{/sha}", "trees": "git/trees{/sha}",
    "statuses": "statuses/{sha}", "languages": "languages", "stargazers": "stargazers",
    "contributors": "contributors", "subscribers": "subscribers", "subscription": "subscription",
    "commits": "commits{/sha}", "git_commits": "git/commits{/sha}", "comments": "comments{/number}",
    "issue_comment": "issues/comments{/number}", "contents": "contents/{+path}",
    "compare": "compare/{base}...{head}", "merges": "merges", "archive": "{archive_format}{/ref}",
    "downloads": "downloads", "issues": "issues{/number}", "pulls": "pulls{/number}",
    "milestones": "milestones{/number}", "notifications": "notifications{?since,all,participating}",
    "labels": "labels{/name}", "releases": "releases{/id}", "deployments": "deployments"}
_USER_URLS = ("followers following{/other_user} gists{/gist_id} starred{/owner}{/repo} subscriptions "
              "organizations repos events{/privacy} received_events").split()


def _user(login: str, uid: int) -> dict:
    api = f"https://api.github.com/users/{login}"
    user = {"login": login, "id": uid, "node_id": f"MDQ6VXNlcj{uid:08d}",
            "avatar_url": f"https://avatars.githubusercontent.com/u/{uid}?v=4", "gravatar_id": "", "url": api,
            "html_url": f"https://github.com/{login}"}
    for part in _USER_URLS:
        user[f"{part.split('{')[0]}_url"] = f"{api}/{part}"
    user.update(type="Bot" if login.endswith("[bot]") else "User", site_admin=False)
    return user


def _repo(full_name: str, rid: int) -> dict:
    owner, name = full_name.split("/")
    api = f"https://api.github.com/repos/{full_name}"
    repo = {"id": rid, "node_id": f"MDEwOlJlcG9zaXRvcn{rid:08d}", "name": name, "full_name": full_name,
            "private": False, "owner": _user(owner, 9000 + rid % 7), "html_url": f"https://github.com/{full_name}",
            "description": f"The {name} service", "fork": False, "url": api}
    for key, part in _REPO_URLS.items():
        repo[f"{key}_url"] = f"{api}/{part}"
    repo.update({"created_at": "2021-03-04T05:06:07Z", "updated_at": "2024-05-06T07:08:09Z",
                 "pushed_at": "2024-05-06T07:08:09Z", "git_url": f"git://github.com/{full_name}.git",
                 "ssh_url": f"git@github.com:{full_name}.git", "clone_url": f"https://github.com/{full_name}.git",
                 "svn_url": f"https://github.com/{full_name}", "homepage": None, "size": 4242,
                 "stargazers_count": 17, "watchers_count": 17, "language": "Python", "has_issues": True,
                 "has_projects": True, "has_downloads": True, "has_wiki": True, "has_pages": False,
                 "has_discussions": False, "forks_count": 3, "mirror_url": None, "archived": False,
                 "disabled": False, "open_issues_count": 12, "license": None, "allow_forking": True,
                 "is_template": False, "web_commit_signoff_required": False, "topics": ["api", "service"],
                 "visibility": "public", "forks": 3, "open_issues": 12, "watchers": 17, "default_branch": "main",
                 "allow_squash_merge": True, "allow_merge_commit": True, "allow_rebase_merge": True,
                 "allow_auto_merge": False, "delete_branch_on_merge": False, "allow_update_branch": False,
                 "use_squash_pr_title_as_default": False, "squash_merge_commit_message": "COMMIT_MESSAGES",
                 "squash_merge_commit_title": "COMMIT_OR_PR_TITLE", "merge_commit_message": "PR_TITLE",
                 "merge_commit_title": "MERGE_MESSAGE"})
    return repo


def _pull_request(rng: random.Random, number: int, full_name: str, rid: int, fields: dict) -> dict:
    api = f"https://api.github.com/repos/{full_name}"
    author = _user(fields["author"], 100 + rng.randrange(50))
    sha = hashlib.sha1(f"{full_name}#{number}#{rng.random()}".encode()).hexdigest()
    base_sha = hashlib.sha1(f"{full_name}#base#{number}".encode()).hexdigest()
    repo = _repo(full_name, rid)
    labels = [{"id": 4000 + i, "node_id": f"LA_kwDO{i:06d}", "url": f"{api}/labels/{name}", "name": name,
               "color": "ededed", "default": False, "description": None} for i, name in enumerate(fields["labels"])]
    body = " ".join(rng.choice(("Fixes", "the", "bug", "in", "parsing", "when", "a", "header", "is", "missing.",
                                "Adds", "tests.", "See", "#12."))
                    for _ in range(rng.randint(30, 200)))
    pr = {"url": f"{api}/pulls/{number}", "id": 500_000 + number, "node_id": f"PR_kwDO{number:08d}",
          "html_url": f"https://github.com/{full_name}/pull/{number}",
          "diff_url": f"https://github.com/{full_name}/pull/{number}.diff",
          "patch_url": f"https://github.com/{full_name}/pull/{number}.patch",
          "issue_url": f"{api}/issues/{number}", "number": number, "state": "open", "locked": False,
          "title": fields["title"], "user": author, "body": body, "created_at": "2024-05-06T07:08:09Z",
          "updated_at": "2024-05-06T07:08:09Z", "closed_at": None, "merged_at": None,
          "merge_commit_sha": None, "assignee": None, "assignees": [], "requested_reviewers": [],
          "requested_teams": [], "labels": labels, "milestone": None, "draft": fields["draft"],
          "commits_url": f"{api}/pulls/{number}/commits", "review_comments_url": f"{api}/pulls/{number}/comments",
          "review_comment_url": f"{api}/pulls/comments{{/number}}", "comments_url": f"{api}/issues/{number}/comments",
          "statuses_url": f"{api}/statuses/{sha}",
          "head": {"label": f"{full_name.split('/')[0]}:{fields['head']}", "ref": fields["head"], "sha": sha,
                   "user": repo["owner"], "repo": repo},
          "base": {"label": f"{full_name.split('/')[0]}:{fields['base']}", "ref": fields["base"], "sha": base_sha,
                   "user": repo["owner"], "repo": _repo(full_name, rid)},
          "_links": {k: {"href": f"{api}/pulls/{number}/{k}"} for k in ("self", "html", "issue", "comments",
                                                                       "review_comments", "review_comment",
                                                                       "commits", "statuses")},
          "author_association": "MEMBER", "auto_merge": None, "active_lock_reason": None, "merged": False,
          "mergeable": None, "rebaseable": None, "mergeable_state": "unknown", "merged_by": None, "comments": 0,
          "review_comments": 0, "maintainer_can_modify": False, "commits": rng.randint(1, 9),
          "additions": rng.randint(1, 400), "deletions": rng.randint(0, 200), "changed_files": rng.randint(1, 20)}
    return {"action": fields["action"], "number": number, "pull_request": pr, "repository": _repo(full_name, rid),
            "sender": author}


def _release(rng: random.Random, full_name: str, rid: int, action: str) -> dict:
    api = f"https://api.github.com/repos/{full_name}"
    tag = f"v1.{rng.randrange(40)}.{rng.randrange(10)}"
    author = _user("alice", 101)
    release = {"url": f"{api}/releases/{rid}", "assets_url": f"{api}/releases/{rid}/assets",
               "upload_url": f"https://uploads.github.com/repos/{full_name}/releases/{rid}/assets{{?name,label}}",
               "html_url": f"https://github.com/{full_name}/releases/tag/{tag}", "id": rid, "author": author,
               "node_id": f"RE_kwDO{rid:08d}", "tag_name": tag, "target_commitish": "main", "name": tag,
               "draft": False, "prerelease": False, "created_at": "2024-05-06T07:08:09Z",
               "published_at": "2024-05-06T07:08:09Z", "assets": [],
               "tarball_url": f"{api}/tarball/{tag}", "zipball_url": f"{api}/zipball/{tag}", "body": "Changes."}
    return {"action": action, "release": release, "repository": _repo(full_name, rid), "sender": author}


class Plan:
    """The deliveries of one flood, in sending order, and what the daemon must make of them."""

    def __init__(self, deliveries: int, routines: int, seed: int = 11):
        rng = random.Random(seed)
        self.routines = [f"bench-{i:03d}" for i in range(routines)]
        n_forged = deliveries * 5 // 100
        n_dup = deliveries * 20 // 100
        n_new = deliveries - n_forged - n_dup
        kinds = ["new"] * n_new + ["dup"] * n_dup + ["forged"] * n_forged
        rng.shuffle(kinds)
        first_new = kinds.index("new")
        kinds[0], kinds[first_new] = kinds[first_new], kinds[0]
        # Repositories: the routines' own, picked with a Zipf-like skew, and some nobody watches.
        weights = [1 / (i + 1) ** 1.1 for i in range(routines)]
        self.items: list[dict] = []     # {"kind", "id", "body", "signature", "event"}
        self.matches: dict[str, str | None] = {}   # delivery id -> the routine it must match (None: none)
        originals: list[dict] = []
        for kind in kinds:
            if kind == "dup":
                self.items.append(dict(rng.choice(originals), kind="dup"))
                continue
            if kind == "forged" and originals and rng.random() < 0.5:
                # A copy of a real delivery (its id too) with a signature made with another secret.
                item = dict(rng.choice(originals), kind="forged")
                item["signature"] = _sign(WRONG, item["body"])
                self.items.append(item)
                continue
            event, payload, expected = self._delivery(rng, weights, len(originals))
            body = json.dumps(payload, separators=(",", ":")).encode()
            item = {"kind": kind, "id": str(uuid.UUID(int=rng.getrandbits(128))), "body": body, "event": event,
                    "signature": _sign(SECRET if kind == "new" else WRONG, body)}
            self.items.append(item)
            if kind == "new":
                originals.append(item)
                self.matches[item["id"]] = expected
        self.counts = {k: kinds.count(k) for k in ("new", "dup", "forged")}
        per_routine = {name: 0 for name in self.routines}
        for name in self.matches.values():
            if name is not None:
                per_routine[name] += 1
        self.per_routine = per_routine
        self.expected_runs = sum(min(m, CAP) for m in per_routine.values())
        self.expected_capped = sum(max(0, m - CAP) for m in per_routine.values())
        self.body_bytes = median([len(item["body"]) for item in originals])

    def _delivery(self, rng: random.Random, weights: list[float], n: int) -> tuple[str, dict, str | None]:
        watched = rng.random() < 0.85
        index = rng.choices(range(len(self.routines)), weights)[0] if watched else None
        full_name = f"bench/repo-{index:03d}" if index is not None else f"bench/unwatched-{rng.randrange(50)}"
        rid = 70_000 + (index if index is not None else 500 + n % 50)
        if rng.random() < 0.03:
            return "release", _release(rng, full_name, rid, rng.choice(("published", "created"))), None
        fields = {"action": rng.choices(("opened", "synchronize", "closed", "labeled", "edited", "reopened",
                                         "ready_for_review"), (30, 30, 10, 10, 10, 5, 5))[0],
                  "base": "main" if rng.random() < 0.85 else "release",
                  "head": f"feature/{rng.randrange(10_000)}", "draft": rng.random() < 0.1,
                  "labels": rng.sample(("bug", "enhancement", "wip", "docs", "needs-review"), rng.randint(0, 2)),
                  "title": f"{rng.choice(('fix', 'feat', 'chore', 'docs', 'feat(api)'))}: change {n}",
                  "author": rng.choices(("alice", "bob", "carol", *BOTS), (30, 30, 20, 10, 10))[0]}
        payload = _pull_request(rng, 1 + n, full_name, rid, fields)
        matched = (index is not None and fields["action"] in EVENTS and fields["base"] == "main"
                   and not fields["draft"] and "wip" not in fields["labels"]
                   and (index % 4 != 0 or re.fullmatch(TITLE_RE, fields["title"]) is not None)
                   and (index % 4 != 1 or fields["author"] not in BOTS))
        return "pull_request", payload, self.routines[index] if matched else None

    def routines_toml(self, repo: Path) -> str:
        out = []
        for i, name in enumerate(self.routines):
            out.append(f"[routines.{name}]\nprompt = \"Review the pull request.\"\nrepos = [{json.dumps(str(repo))}]\n"
                       f"agent = \"true\"\n\n[[routines.{name}.triggers]]\n"
                       f"github = [{', '.join(json.dumps('pull_request.' + e) for e in EVENTS)}]\n"
                       f"repository = \"bench/repo-{i:03d}\"\nbase = \"main\"\ndraft = false\n"
                       f"labels = {{ exclude = [\"wip\"] }}\nhourly_cap = {CAP}\n")
            if i % 4 == 0:
                out.append(f"title = {{ matches = {json.dumps(TITLE_RE)} }}\n")
            elif i % 4 == 1:
                out.append(f"author = {{ not_one_of = {json.dumps(list(BOTS))} }}\n")
            out.append("\n")
        return "".join(out)

    def warm_up(self, port: int, count: int = 200) -> list[bytes]:
        """Signed `ping` deliveries: a warm-up that both servers answer 200 and the daemon records
        nothing of (so the counts of the flood stay exact)."""
        body = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 424242}).encode()
        return [(f"POST /v1/github/webhook HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\nX-GitHub-Event: ping\r\nX-GitHub-Delivery: warm-up-{i}\r\n"
                 f"X-Hub-Signature-256: {_sign(SECRET, body)}\r\n\r\n").encode() + body for i in range(count)]

    def requests(self, port: int) -> list[bytes]:
        out = []
        for item in self.items:
            head = (f"POST /v1/github/webhook HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                    "User-Agent: GitHub-Hookshot/bench\r\nAccept: */*\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(item['body'])}\r\nX-GitHub-Event: {item['event']}\r\n"
                    f"X-GitHub-Delivery: {item['id']}\r\nX-GitHub-Hook-ID: 424242\r\n"
                    f"X-Hub-Signature-256: {item['signature']}\r\n\r\n")
            out.append(head.encode() + item["body"])
        return out


def _sign(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


# ---------------------------------------------------------------- the client

async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, body, headers.get("connection", "").lower() == "close"


async def _flood(port: int, requests: list[bytes], clients: int,
                 timeout: float = 30.0) -> tuple[list[tuple[int | None, float, bytes]], float]:
    """Send every request once over `clients` keep-alive connections, each taking the next one as soon
    as it has its answer; (status, seconds, body) per request (status None: no answer), and the wall time."""
    results: list[tuple[int | None, float, bytes]] = [(None, 0.0, b"")] * len(requests)
    order = iter(range(len(requests)))

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in order:
                t0 = time.perf_counter()
                try:
                    writer.write(requests[i])
                    status, body, close = await asyncio.wait_for(_read_answer(reader), timeout)
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
                    results[i] = (None, time.perf_counter() - t0, repr(exc).encode())
                    close = True
                else:
                    results[i] = (status, time.perf_counter() - t0, body)
                if close:
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return results, time.perf_counter() - start


def _flood_round(port: int, requests: list[bytes], clients: int, pid: int) -> dict:
    cpu0 = cpu_seconds(pid)
    results, wall = asyncio.run(_flood(port, requests, clients))
    cpu = cpu_seconds(pid) - cpu0
    latencies = [seconds for _, seconds, _ in results]
    return {"results": results, "wall_s": wall, "rate": len(requests) / wall, "cpu_ms_per": cpu * 1000 / len(requests),
            "p50_ms": percentile(latencies, 50) * 1000, "p99_ms": percentile(latencies, 99) * 1000,
            "max_ms": max(latencies) * 1000, "answered": sum(1 for s, _, _ in results if s is not None),
            "load": os.getloadavg()[0]}


def _check_bare(plan: Plan, results: list) -> list[str]:
    problems = []
    for item, (status, _, body) in zip(plan.items, results):
        want = 401 if item["kind"] == "forged" else 200
        if status != want:
            problems.append(f"bare: delivery {item['id']} ({item['kind']}) answered {status}, not {want}: {body[:200]!r}")
    return problems


def _check_bgd(plan: Plan, results: list) -> list[str]:
    """Every answer as the daemon must give it; one first (non-duplicate) answer per delivery id."""
    problems: list[str] = []
    firsts: dict[str, dict] = {}
    for item, (status, _, body) in zip(plan.items, results):
        if status is None:
            problems.append(f"delivery {item['id']} ({item['kind']}) got no answer: {body[:200]!r}")
            continue
        if item["kind"] == "forged":
            if status != 401:
                problems.append(f"forged delivery {item['id']} answered {status}, not 401")
            continue
        if status != 200:
            problems.append(f"delivery {item['id']} ({item['kind']}) answered {status}: {body[:200]!r}")
            continue
        answer = json.loads(body)
        if not answer["duplicate"]:
            if item["id"] in firsts:
                problems.append(f"delivery {item['id']} was taken as new twice")
            firsts[item["id"]] = answer
    for delivery_id, expected in plan.matches.items():
        answer = firsts.get(delivery_id)
        if answer is None:
            problems.append(f"delivery {delivery_id} was never taken as new")
        elif answer["matched"] != ([expected] if expected else []):
            problems.append(f"delivery {delivery_id} matched {answer['matched']}, expected {expected}")
    return problems


def _bgd_round(plan: Plan, python: str, repo: Path, clients: int, runs_timeout: float,
               problems: list[str]) -> dict:
    """One flood against a fresh daemon, then every check of its answers, runs and records."""
    with _daemon("routines", python, plan.routines_toml(repo), f"[routines]\nstagger = false\n"
                 f"max_concurrent_runs = {MAX_RUNS}\n") as daemon:
        daemon.start()
        port = _listener(daemon)
        listed = daemon.rpc("routine.list")
        if listed.get("errors"):
            raise RuntimeError(f"routines.toml: {listed['errors'][:3]}")
        warm, _ = asyncio.run(_flood(port, plan.warm_up(port), clients))
        if any(status != 200 for status, _, _ in warm):
            raise RuntimeError(f"the warm-up pings were not all answered 200: {warm[0]}")
        rnd = _flood_round(port, plan.requests(port), clients, daemon.pid)
        t0 = time.perf_counter()
        problems.extend(_check_bgd(plan, rnd.pop("results"))[:10])
        runs = [r for r in _runs_ended(daemon, runs_timeout) if r["trigger"] == "github"]
        rnd["runs_done_s"] = time.perf_counter() - t0
        started = [r for r in runs if r["status"] != "skipped"]
        capped = [r for r in runs if r["status"] == "skipped" and r["reason"] == "rate_limited"]
        other = [r for r in runs if r["status"] == "skipped" and r["reason"] != "rate_limited"]
        unfinished = [r for r in started if r["status"] != "finished" or not r.get("session_id")]
        per_routine: dict[str, int] = {}
        for r in started:
            per_routine[r["routine"]] = per_routine.get(r["routine"], 0) + 1
        wrong = [name for name, m in plan.per_routine.items() if per_routine.get(name, 0) != min(m, CAP)]
        if len(started) != plan.expected_runs or wrong:
            problems.append(f"{len(started)} runs started, expected {plan.expected_runs}"
                            + (f"; wrong for {wrong[:5]}" if wrong else ""))
        if len(capped) != plan.expected_capped or other:
            problems.append(f"{len(capped)} rate_limited skips (expected {plan.expected_capped}), "
                            f"{len(other)} other skips")
        if unfinished:
            problems.append(f"{len(unfinished)} runs did not finish with a session, e.g. "
                            f"{unfinished[0]['status']}: {unfinished[0].get('error')}")
        db = sqlite3.connect(f"file:{daemon.state_dir / 'bgd.sqlite3'}?mode=ro", uri=True)
        try:
            recorded, duplicates = db.execute("SELECT count(*), sum(json_extract(data, '$.duplicates')) "
                                              "FROM routine_deliveries").fetchone()
        finally:
            db.close()
        if recorded != plan.counts["new"] or duplicates != plan.counts["dup"]:
            problems.append(f"{recorded} deliveries recorded with {duplicates} redeliveries counted; "
                            f"expected {plan.counts['new']} and {plan.counts['dup']}")
        rnd.update(runs_started=len(started), rate_limited=len(capped), deliveries_recorded=recorded,
                   rss_kb=int(open(f"/proc/{daemon.pid}/status").read().split("VmRSS:")[1].split()[0]))
        return rnd


def run_webhooks(deliveries: int = 10_000, clients: int = 20, routines: int = 100, rounds: int = 2,
                 runs_timeout: float = 900.0) -> dict:
    python, venv_line = _python()
    plan = Plan(deliveries, routines)
    print(f"  {venv_line}")
    print(f"  {deliveries:,} deliveries ({plan.counts['new']:,} new, {plan.counts['dup']:,} redeliveries, "
          f"{plan.counts['forged']:,} bad signatures; median body {plan.body_bytes / 1000:.1f} KB) from {clients} "
          f"clients, {routines} routines with hourly_cap = {CAP}, max_concurrent_runs = {MAX_RUNS}; "
          f"expected {plan.expected_runs} runs + {plan.expected_capped} rate_limited")
    base = Path(tempfile.mkdtemp(prefix="bgbench-routines-", dir="/tmp"))
    done: dict[str, list[dict]] = {"bare": [], "bgd": []}
    order: list[str] = []
    problems: list[str] = []
    try:
        repo, _ = make_repo(base, "app")
        secret_file = base / "secret"
        secret_file.write_bytes(SECRET + b"\n")

        def bare_round() -> None:
            with Bare(python, secret_file) as bare:
                asyncio.run(_flood(bare.port, plan.warm_up(bare.port), clients))  # the same warm-up
                rnd = _flood_round(bare.port, plan.requests(bare.port), clients, bare.proc.pid)
                problems.extend(_check_bare(plan, rnd.pop("results"))[:5])
                done["bare"].append(rnd)
                order.append("bare")

        # bare, bgd, bare, ..., bare: a neighbour's burst of load slows both sides alike.
        for _ in range(rounds):
            bare_round()
            done["bgd"].append(_bgd_round(plan, python, repo, clients, runs_timeout, problems))
            order.append("bgd")
        bare_round()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    bgd_rate, bare_rate = median([r["rate"] for r in done["bgd"]]), median([r["rate"] for r in done["bare"]])
    ratio = bgd_rate / bare_rate
    worst = min(r["rate"] for r in done["bgd"]) / max(r["rate"] for r in done["bare"])
    cpu_ratio = median([r["cpu_ms_per"] for r in done["bare"]]) / median([r["cpu_ms_per"] for r in done["bgd"]])
    p99 = max(r["p99_ms"] for r in done["bgd"])
    checks = {"answered": all(r["answered"] == deliveries for r in done["bgd"]) and not problems,
              "p99": p99 <= TARGET_P99_S * 1000, "ratio": ratio >= TARGET_RATIO}
    seen = {"bare": 0, "bgd": 0}
    for name in order:
        rnd = done[name][seen[name]]
        seen[name] += 1
        print(f"  {name:<4}  {rnd['rate']:7.0f} deliveries/s  p50 {rnd['p50_ms']:6.1f} ms  p99 {rnd['p99_ms']:6.1f} ms  "
              f"max {rnd['max_ms']:6.0f} ms  {rnd['cpu_ms_per']:.2f} ms CPU each  "
              f"{rnd['answered']:,}/{deliveries:,} answered  load {rnd['load']:.1f}")
    for rnd in done["bgd"]:
        print(f"  bgd: {rnd['runs_started']} runs started (expected {plan.expected_runs}), {rnd['rate_limited']} "
              f"rate_limited (expected {plan.expected_capped}), {rnd['deliveries_recorded']:,} deliveries recorded; "
              f"the last run ended {rnd['runs_done_s']:.1f} s after the last answer; RSS {rnd['rss_kb'] / 1024:.0f} MiB")
    for problem in problems[:10]:
        print(f"  problem: {problem}")
    print(f"  throughput: median {bgd_rate:.0f} vs {bare_rate:.0f} deliveries/s; slowest bgd round / fastest bare "
          f"round {worst:.2f}; CPU per delivery, bare / bgd: {cpu_ratio:.2f}")
    print(f"  every delivery answered and right {verdict(checks['answered'])}; p99 (worst round) {p99:.0f} ms "
          f"{verdict(checks['p99'])} (<= {TARGET_P99_S * 1000:.0f}); ratio {ratio:.2f} of bare "
          f"{verdict(checks['ratio'])} (>= {TARGET_RATIO})")
    return {"name": "webhooks", "title": "GitHub delivery flood", "deliveries": deliveries, "clients": clients,
            "routines": routines, "hourly_cap": CAP, "max_concurrent_runs": MAX_RUNS, "counts": plan.counts,
            "body_bytes": plan.body_bytes, "expected_runs": plan.expected_runs,
            "expected_rate_limited": plan.expected_capped, "order": order,
            "rounds": {k: [{key: (round(v, 3) if isinstance(v, float) else v) for key, v in r.items()} for r in rs]
                       for k, rs in done.items()},
            "ratio": round(ratio, 3), "worst_ratio": round(worst, 3), "cpu_ratio": round(cpu_ratio, 3),
            "p99_ms": round(p99, 1), "problems": problems[:10], "checks": checks,
            "figure": f"{bgd_rate:,.0f}/s = {ratio:.2f}x bare, p99 {p99:.0f} ms, runs exact" if checks["answered"]
            else f"{bgd_rate:,.0f}/s = {ratio:.2f}x bare, p99 {p99:.0f} ms, {len(problems)} problems",
            "target": f"all answered, p99 <= {TARGET_P99_S:g} s, runs exact, >= {TARGET_RATIO}x bare",
            "pass": all(checks.values())}


# ---------------------------------------------------------------- API fire -> session created

def _post(conn: http.client.HTTPConnection, path: str, body: bytes, headers: dict) -> tuple[int, bytes, float]:
    for attempt in (1, 2):
        t0 = time.perf_counter()
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            # The server closed this keep-alive connection while it sat idle (keep_alive_timeout_s, 5 s)
            # before this request reached it: nothing was fired; again on a new connection, timed anew.
            conn.close()
            if attempt == 2:
                raise
            continue
        data = response.read()
        return response.status, data, time.perf_counter() - t0
    raise AssertionError("unreachable")


def _git_clone(url: str, dest: Path, base: Path) -> float:
    """What a run's workspace costs git alone: the clone (hooks path set, as the daemon does) and the
    rev-parse of its HEAD, timed; the copy is deleted after, untimed, as the daemon deletes its workspaces
    here (keep_workspaces_days = 0)."""
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0")
    t0 = time.perf_counter()
    subprocess.run(["git", "clone", "--quiet", "-c", f"core.hooksPath={base / 'hooks'}", "--", url, str(dest)],
                   env=env, check=True, stdin=subprocess.DEVNULL, capture_output=True)
    subprocess.run(["git", "rev-parse", "--verify", "--quiet", "HEAD"], cwd=dest, env=env, check=True,
                   stdin=subprocess.DEVNULL, capture_output=True)
    seconds = time.perf_counter() - t0
    shutil.rmtree(dest)
    return seconds


def run_fire(fires: int = 100, medium_files: int = MEDIUM_FILES, medium_commits: int = MEDIUM_COMMITS) -> dict:
    python, venv_line = _python()
    print(f"  {venv_line}")
    base = Path(tempfile.mkdtemp(prefix="bgbench-fire-", dir="/tmp"))
    body = json.dumps({"text": "release 1.4 is out: check the changelog and open an issue for anything missing"}).encode()
    problems: list[str] = []
    try:
        small, small_size = make_repo(base, "small")
        medium, medium_size = make_repo(base, "medium", medium_files, medium_commits, seed=1)
        targets = {"small": (str(small), small_size), "medium": (str(medium), medium_size),
                   "medium-file-url": (f"file://{medium}", medium_size)}
        toml = "".join(f"[routines.fire-{name}]\nprompt = \"Check the release.\"\nrepos = [{json.dumps(url)}]\n"
                       f"agent = \"true\"\n[[routines.fire-{name}.triggers]]\napi = true\nrate_limit = 100000\n\n"
                       for name, (url, _) in targets.items())
        samples: dict[str, list[float]] = {"bare": [], **{name: [] for name in targets}}
        secret_file = base / "secret"
        secret_file.write_bytes(SECRET + b"\n")
        # Workspaces deleted as each run ends: kept, 300 medium checkouts are 3 GB of writes, and the
        # machine's disk, not the daemon, would set the figures.
        with _daemon("fire", python, toml, "[routines]\nstagger = false\nmax_concurrent_runs = 64\n"
                                           "keep_workspaces_days = 0\n") as daemon, Bare(python, secret_file) as bare:
            daemon.start()
            port = _listener(daemon)
            tokens = {name: daemon.rpc("routine.token", {"name": f"fire-{name}"})["token"] for name in targets}
            conns = {"bare": http.client.HTTPConnection("127.0.0.1", bare.port, timeout=120),
                     **{name: http.client.HTTPConnection("127.0.0.1", port, timeout=120) for name in targets}}
            names = list(conns) + [f"git {name}" for name in targets]
            samples.update({f"git {name}": [] for name in targets})
            clones = base / "clones"
            load0 = os.getloadavg()[0]
            for i in range(fires + 2):  # the first two of each are a warm-up
                for name in names[i % len(names):] + names[:i % len(names)]:
                    if name.startswith("git "):
                        seconds = _git_clone(targets[name[4:]][0], clones / f"{name[4:]}-{i}", base)
                        if i >= 2:
                            samples[name].append(seconds)
                        continue
                    token = tokens.get(name, "bare-token")
                    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
                    path = f"/v1/routines/fire-{name}/fire" if name != "bare" else "/v1/routines/fire-small/fire"
                    status, data, seconds = _post(conns[name], path, body, headers)
                    answer = json.loads(data)
                    if status != 200 or not answer.get("session_id"):
                        problems.append(f"{name}: fire answered {status}: {data[:300]!r}")
                    elif i >= 2:
                        samples[name].append(seconds)
            load1 = os.getloadavg()[0]
            for conn in conns.values():
                conn.close()
            runs = _runs_ended(daemon, 300)
            bad = [r for r in runs if r["status"] != "finished"]
            if bad:
                problems.append(f"{len(bad)} runs did not finish, e.g. {bad[0]['status']}: {bad[0].get('error')}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    bare_p99 = percentile(samples["bare"], 99) * 1000 if samples["bare"] else float("nan")
    rows = []
    print(f"  {fires} fires each, sequential, interleaved; load {load0:.1f} -> {load1:.1f}")
    print(f"  {'bare app (same POST)':<38} p50 {median(samples['bare']) * 1000:7.1f} ms  p99 {bare_p99:7.1f} ms")
    for name, (url, size) in targets.items():
        if not samples[name]:
            continue
        p50, p99 = median(samples[name]) * 1000, percentile(samples[name], 99) * 1000
        git = samples[f"git {name}"]
        git_p50, git_p99 = median(git) * 1000, percentile(git, 99) * 1000
        rows.append({"repository": name, "size": size, "p50_ms": round(p50, 1), "p99_ms": round(p99, 1),
                     "max_ms": round(max(samples[name]) * 1000, 1), "bare_p99_ms": round(bare_p99, 1),
                     "our_work_p99_ms": round(p99 - bare_p99, 1), "git_clone_p50_ms": round(git_p50, 1),
                     "git_clone_p99_ms": round(git_p99, 1)})
        print(f"  {'bgd, ' + name:<38} p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  (p99 - bare p99 = {p99 - bare_p99:6.1f} ms)"
              f"  {_size(size)}")
        print(f"  {'  info: git clone + rev-parse alone':<38} p50 {git_p50:7.1f} ms  p99 {git_p99:7.1f} ms")
    for problem in problems[:10]:
        print(f"  problem: {problem}")
    ok = not problems
    print(f"  every fire answered 200 with a session {verdict(ok)}")
    figure = ", ".join(f"{r['repository']} p99 {r['p99_ms']:.0f} ms" for r in rows) + f" (bare {bare_p99:.1f} ms)"
    return {"name": "fire", "title": "API fire -> session created", "fires": fires, "rows": rows,
            "bare_p50_ms": round(median(samples["bare"]) * 1000, 1) if samples["bare"] else None,
            "bare_p99_ms": round(bare_p99, 1), "load": [load0, load1], "problems": problems[:10],
            "figure": figure, "target": "every fire 200 with a session; p99 reported", "pass": ok}


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "webhooks"
    (run_webhooks if which == "webhooks" else run_fire)()
