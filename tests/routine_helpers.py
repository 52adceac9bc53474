"""Helpers of the routine tests: local bare repositories, a daemon with its HTTP listener on a free
port, GitHub's example payloads (the npm package @octokit/webhooks-examples) and signed deliveries."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from bgcore.github import sign
from conftest import wait_until

TESTS = Path(__file__).parent
SECRET = b"It's a Secret to Everybody"
EXAMPLES = TESTS / "node_modules" / "@octokit" / "webhooks-examples" / "api.github.com" / "index.json"
ROUTINE_CONFIG = ('[http]\nlisten = "127.0.0.1:0"\n[github]\nwebhook_secret_file = "github.secret"\n'
                  '[routines]\nstagger = false\n')


def git(*args: str, cwd: Path | None = None, check: bool = True) -> str:
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_AUTHOR_NAME="Test", GIT_AUTHOR_EMAIL="t@example.com",
               GIT_COMMITTER_NAME="Test", GIT_COMMITTER_EMAIL="t@example.com")
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)}: {result.stderr}")
    return result.stdout.strip()


def make_remote(base: Path, name: str = "app") -> Path:
    """A bare repository `name.git` whose main branch has one commit."""
    remote = base / f"{name}.git"
    seed = base / f"{name}-seed"
    git("init", "-q", "--bare", "-b", "main", str(remote))
    git("init", "-q", "-b", "main", str(seed))
    (seed / "README.md").write_text(f"# {name}\n")
    git("add", "README.md", cwd=seed)
    git("commit", "-q", "-m", "first", cwd=seed)
    git("push", "-q", str(remote), "main", cwd=seed)
    return remote


def start_routine_daemon(bgd, routines_toml: str, routines_config: str = "", env: dict | None = None) -> str:
    """Write the config (listener on a free port; `routines_config`: more lines of [routines]) and
    routines.toml, start bgd; returns the listener's URL."""
    bgd.write_config(ROUTINE_CONFIG + routines_config)
    (bgd.config_dir / "github.secret").write_bytes(SECRET + b"\n")
    (bgd.config_dir / "routines.toml").write_text(routines_toml)
    bgd.start(extra_env=env)
    return listener_url(bgd)


def listener_url(bgd, timeout: float = 10.0) -> str | None:
    """The listener's URL once it listens; None when nothing wants it (no API or GitHub trigger)."""
    def settled():
        http = bgd.rpc("daemon.status")["http"]
        if http["listening"]:
            return {"url": http["url"]}
        return {"url": None} if not http["wanted_by"] and not http["error"] else None
    return wait_until(settled, timeout, "the HTTP listener to start")["url"]


def wait_run(bgd, run_id: str, done=lambda r: r["status"] not in ("queued", "preparing", "running"),
             timeout: float = 30.0) -> dict:
    """Poll a run record until `done` (run records change in the store; a query shows them)."""
    def reached():
        rec = bgd.rpc("routine.get_run", {"id": run_id})
        return rec if done(rec) else None
    return wait_until(reached, timeout, f"run {run_id} to get there")


def transcript_text(bgd, session_id: str) -> str:
    return json.dumps(bgd.rpc("session.transcript", {"id": session_id, "full": True}))


# ---------------------------------------------------------------- GitHub

def examples() -> dict[str, list[dict]]:
    """GitHub's example payloads by event name; skips the test when the npm package is not installed."""
    if not EXAMPLES.exists():
        pytest.skip("GitHub's example payloads (npm package @octokit/webhooks-examples) are not installed: "
                    "tests/run installs them with npm, which was not available or could not reach the registry")
    return {entry["name"]: entry["examples"] for entry in json.loads(EXAMPLES.read_text())}


def example(events: dict, name: str, action: str | None = None, **match) -> dict:
    for payload in events[name]:
        if action is not None and payload.get("action") != action:
            continue
        if all(_dig(payload, key) == value for key, value in match.items()):
            return json.loads(json.dumps(payload))
    raise AssertionError(f"no {name} example with action {action} and {match}")


def _dig(payload: dict, dotted: str):
    value = payload
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def deliver(client, url: str, event: str, payload: dict | bytes, *, delivery: str | None = None,
            secret: bytes = SECRET, signature: str | None = None):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
               "Content-Type": "application/json"}
    if signature is None:
        headers["X-Hub-Signature-256"] = sign(secret, body)
    elif signature:
        headers["X-Hub-Signature-256"] = signature
    return client.post(f"{url}/v1/github/webhook", content=body, headers=headers)
