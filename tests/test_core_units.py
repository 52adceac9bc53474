"""Pure pieces without processes: config parsing, the Claude line classifier, the store's schema, paths."""

from __future__ import annotations

import os
import sqlite3
import threading

import pytest

from bgcore import paths
from bgd.agents import claude_lines as claude
from bgcore.config import ConfigError, parse_config
from bgd.store import SCHEMA_VERSION, Store, StoreError


def test_config_defaults_without_a_file():
    config = parse_config("")
    assert config.default_agent == "claude"
    assert config.agents["claude"].command == ("claude",)
    assert config.stop_grace_s == 5.0 and config.max_frame_bytes == 1 << 20
    assert config.environment.bridge == "auto" and parse_config('[environment]\nbridge = "socat"').environment.bridge == "socat"


def test_config_agents_and_warnings():
    config = parse_config('default_agent = "mine"\nstop_grace = 3\n'
                          '[agents.mine]\nbackend = "command"\ncommand = ["my-agent", "{prompt}"]\nenv = { A = "1" }\n')
    assert config.agent(None).name == "mine" and config.agent(None).env == {"A": "1"}
    assert any("stop_grace" in w and "stop_grace_s" in w and ":2" in w for w in config.warnings)


@pytest.mark.parametrize("text, message", [
    ("x = [", "not valid TOML"),
    ('default_agent = "nope"', "default_agent 'nope' is not defined"),
    ('permission_mode = "yolo"', "permission_mode must be one of"),
    ('[agents.x]\nbackend = "command"\n', "needs command"),
    ('[agents.x]\nbackend = "ssh"\ncommand = ["a"]\n', 'must be one of "claude", "command"'),
    ("idle_timeout_s = -1", "must be positive"),
    ("[scheduler]\nmax_concurrent_runs = 0", "max_concurrent_runs"),
    ('[environment]\nbridge = "netcat"', "environment.bridge must be one of 'auto', 'systemd-socket-proxyd', 'socat'"),
])
def test_config_errors_name_the_problem(text, message):
    with pytest.raises(ConfigError) as err:
        parse_config(text, "/x/config.toml")
    assert message in str(err.value) and str(err.value).startswith("/x/config.toml")


def test_build_argv_matches_the_stream_json_contract():
    agent = parse_config("").agents["claude"]
    argv = claude.build_argv(agent, agent_session_id="u1", resume=False, permission_mode="plan", model="sonnet",
                             mcp_config="/tmp/m.json")
    assert argv[:1] == ["claude"]
    for flag in ("-p", "--verbose"):
        assert flag in argv
    pairs = dict(zip(argv, argv[1:]))
    assert pairs["--output-format"] == "stream-json" and pairs["--input-format"] == "stream-json"
    assert pairs["--permission-prompt-tool"] == "stdio" and pairs["--session-id"] == "u1"
    assert pairs["--permission-mode"] == "plan" and pairs["--model"] == "sonnet" and pairs["--mcp-config"] == "/tmp/m.json"
    resumed = claude.build_argv(agent, agent_session_id="u1", resume=True, permission_mode=None, model=None, mcp_config=None)
    assert "--resume" in resumed and "--session-id" not in resumed and "--model" not in resumed


def test_classify_result_is_error_wins_over_subtype():
    line = {"type": "result", "subtype": "success", "is_error": True, "result": "Not logged in · Please run /login",
            "total_cost_usd": 0, "num_turns": 1, "session_id": "s"}
    got = claude.classify(line)
    assert isinstance(got, claude.TurnResult) and got.is_error and got.text.startswith("Not logged in")


def test_classify_permission_question_cancel_and_unknown():
    req = claude.classify({"type": "control_request", "request_id": "r1",
                           "request": {"subtype": "can_use_tool", "tool_name": "AskUserQuestion", "input": {"questions": []}}})
    assert isinstance(req, claude.PermissionRequest) and req.waiting_for == "question"
    assert isinstance(claude.classify({"type": "control_cancel_request", "request_id": "r1"}), claude.CancelRequest)
    assert isinstance(claude.classify({"type": "control_request", "request_id": "r2", "request": {"subtype": "hook_callback"}}),
                      claude.OtherControlRequest)
    assert claude.classify({"type": "brand_new"}) == claude.Other("brand_new")


def test_control_messages_shapes():
    allow = claude.allow_response("r1", {"a": 1}, [{"type": "addRules"}])
    assert allow["response"]["response"] == {"behavior": "allow", "updatedInput": {"a": 1},
                                             "updatedPermissions": [{"type": "addRules"}]}
    deny = claude.deny_response("r1", "no")
    assert deny["response"]["response"] == {"behavior": "deny", "message": "no"}
    assert claude.interrupt_request()["request"] == {"subtype": "interrupt"}
    answered = claude.answer_input({"questions": [{"question": "Go?"}]}, "yes")
    assert answered["answers"] == {"Go?": "yes"}


def test_store_migrates_and_refuses_a_newer_schema(tmp_path):
    store = Store(tmp_path / "db.sqlite3")
    assert store.schema_version() == SCHEMA_VERSION
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.save_session("a", {"id": "a"})
    store.close()
    again = Store(tmp_path / "db.sqlite3")
    assert again.load_sessions() == [{"id": "a"}]
    again.close()
    db = sqlite3.connect(tmp_path / "db.sqlite3")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError, match="newer than this bgd"):
        Store(tmp_path / "db.sqlite3")


def test_store_checkpoints_only_when_asked_and_from_another_thread(tmp_path):
    path = tmp_path / "db.sqlite3"
    store = Store(path)
    size, before = path.stat().st_size, store.changes()
    for i in range(300):
        store.save_session(f"s{i}", {"id": f"s{i}", "pad": "x" * 2000})
    assert store.changes() == before + 300
    assert path.stat().st_size == size  # no checkpoint inside the commits
    result = []
    worker = threading.Thread(target=lambda: result.append(store.checkpoint()))
    worker.start()
    worker.join()
    busy, wal_pages, copied = result[0]
    assert busy == 0 and copied == wal_pages > 100
    assert path.stat().st_size > size
    store.save_session("after", {"id": "after"})  # the owner keeps writing
    store.close()
    again = Store(path)
    assert len(again.load_sessions()) == 301
    again.close()


def test_store_migrates_an_old_version_forward(tmp_path):
    from bgd.store import MIGRATIONS
    db = sqlite3.connect(tmp_path / "old.sqlite3")
    db.executescript(MIGRATIONS[0])
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO sessions VALUES ('x', '{\"id\": \"x\"}')")
    db.commit()
    db.close()
    store = Store(tmp_path / "old.sqlite3")
    assert store.schema_version() == SCHEMA_VERSION and store.load_sessions() == [{"id": "x"}]


def test_paths_follow_the_environment_and_platformdirs(monkeypatch, tmp_path):
    import platformdirs
    monkeypatch.delenv("BGD_SOCKET", raising=False)
    monkeypatch.delenv("BGD_CONFIG_DIR", raising=False)
    monkeypatch.delenv("BGD_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "c"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "s"))
    runtime = tmp_path / "r"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert str(paths.config_dir()) == platformdirs.user_config_dir("bgagents")
    assert str(paths.state_dir()) == platformdirs.user_state_dir("bgagents")
    assert str(paths.socket_path()) == os.path.join(platformdirs.user_runtime_dir("bgagents"), "bgd.sock")
    monkeypatch.setenv("BGD_SOCKET", "/tmp/x.sock")
    assert str(paths.socket_path()) == "/tmp/x.sock"
    assert str(paths.socket_path("/tmp/y.sock")) == "/tmp/y.sock"
