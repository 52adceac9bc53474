"""The real ACP agents, with no credentials: `initialize` succeeds, `session/new` is refused, and the
dispatched session ends `failed` with the CLI's own message (docs/acp-notes.md has what they answer).

tests/run installs both CLIs with npm; where that was not possible the tests skip and say why."""

from __future__ import annotations

import json
import shutil

import pytest

CREDENTIAL_VARS = ("GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT",
                   "OPENAI_API_KEY", "CODEX_API_KEY")


def real_agent(bgd, tmp_path, name: str, binary: str, package: str, args: list[str]) -> None:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed (npm install -g {package}); tests/run installs it where the "
                    "npm registry is reachable")
    home = tmp_path / "home"     # a home of its own: no logins, no settings
    home.mkdir()
    env = {"HOME": str(home), **{var: "" for var in CREDENTIAL_VARS}}
    command = ", ".join(json.dumps(part) for part in [path, *args])
    bgd.write_config(f'[agents.{name}]\ncommand = [{command}]\nstart_timeout_s = 60\n'
                     f'env = {{ {", ".join(f"{k} = {json.dumps(v)}" for k, v in env.items())} }}\n')
    bgd.start()


def failed_session(bgd, agent: str) -> dict:
    s = bgd.dispatch("hello", agent=agent)
    s = bgd.wait_session(s["id"], lambda x: x["state"] != "working", timeout=120)
    assert s["state"] == "failed", s
    bgd.wait_session(s["id"], lambda x: x["pid"] is None, timeout=30)   # and the process is gone
    return s


def test_real_gemini_cli_without_credentials_fails_with_its_own_message(bgd, tmp_path):
    real_agent(bgd, tmp_path, "gemini", "gemini", "@google/gemini-cli", ["--acp"])
    s = failed_session(bgd, "gemini")
    # Gemini CLI 0.61: "Gemini API key is missing or not configured." (code -32000, authentication required)
    assert "(session/new)" in s["error"], s["error"]
    own = s["error"].split(" (session/new)")[0]
    assert own and ("key" in own.lower() or "auth" in own.lower() or "log" in own.lower()), s["error"]
    assert "auth_method under [agents.gemini]" in s["error"] and "gemini-api-key" in s["error"]


def test_real_codex_acp_without_credentials_fails_with_its_own_message(bgd, tmp_path):
    real_agent(bgd, tmp_path, "codex", "codex-acp", "@zed-industries/codex-acp", [])
    s = failed_session(bgd, "codex")
    # codex-acp 0.16: "Authentication required" (code -32000)
    assert s["error"].startswith("Authentication required (session/new)"), s["error"]
    assert "auth_method under [agents.codex]" in s["error"] and "codex-api-key" in s["error"]
