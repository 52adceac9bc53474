"""Quick protocol checks of tests/fake_claude.py, the stand-in for the `claude` CLI.

These drive the fake directly (no daemon) and check the line shapes documented in
docs/claude-cli-notes.md (taken from the real Claude Code 2.1.197).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

FAKE = Path(__file__).parent / "fake_claude.py"
BASE_ARGS = ["-p", "--output-format", "stream-json", "--input-format", "stream-json", "--verbose",
             "--permission-prompt-tool", "stdio"]


def user(text, plain=False):
    content = text if plain else [{"type": "text", "text": text}]
    return {"type": "user", "message": {"role": "user", "content": content}}


class Fake:
    def __init__(self, tmp_path, extra_args=(), env=None, session_args=None):
        self.sid = str(uuid.uuid4())
        args = BASE_ARGS + (session_args if session_args is not None else ["--session-id", self.sid])
        self.proc = subprocess.Popen([sys.executable, str(FAKE), *args, *extra_args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     cwd=tmp_path, env=dict(os.environ, **(env or {})))
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for raw in self.proc.stdout:
            self.lines.put(raw.decode())
        self.lines.put(None)

    def send(self, obj):
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        self.proc.stdin.flush()

    def close(self):
        self.proc.stdin.close()

    def raw(self, timeout=3.0):
        line = self.lines.get(timeout=timeout)
        assert line is not None, "fake exited: %s" % self.proc.stderr.read().decode()
        return line

    def read(self, timeout=3.0):
        return json.loads(self.raw(timeout))

    def until(self, pred, timeout=3.0):
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            msg = self.read(max(0.01, deadline - time.monotonic()))
            seen.append(msg)
            if pred(msg):
                return msg, seen

    def result(self):
        return self.until(lambda m: m["type"] == "result")

    def wait(self, timeout=3.0):
        return self.proc.wait(timeout)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def fake(tmp_path):
    made = []

    def start(*extra, **kw):
        f = Fake(tmp_path, extra, **kw)
        made.append(f)
        return f

    yield start
    for f in made:
        f.kill()


def texts(msgs):
    return [b["text"] for m in msgs if m["type"] == "assistant"
            for b in m["message"]["content"] if b["type"] == "text"]


def test_init_say_result_and_eof(fake, tmp_path):
    f = fake("--model", "sonnet", "--permission-mode", "acceptEdits")
    time.sleep(0.05)
    assert f.lines.empty()  # nothing before the first message
    f.send(user("say hello; just echoed", plain=True))
    init = f.read()
    assert init["type"] == "system" and init["subtype"] == "init"
    assert init["session_id"] == f.sid and init["cwd"] == str(tmp_path)
    assert init["model"] == "claude-sonnet-5" and init["permissionMode"] == "acceptEdits"
    assert "Bash" in init["tools"] and isinstance(init["mcp_servers"], list)
    res, seen = f.result()
    assert texts(seen) == ["hello", "just echoed"]
    assert seen[0]["message"]["role"] == "assistant" and seen[0]["session_id"] == f.sid
    assert res["subtype"] == "success" and res["is_error"] is False
    assert res["result"] == "just echoed" and res["session_id"] == f.sid
    assert res["total_cost_usd"] == pytest.approx(0.01) and res["num_turns"] == 1
    f.send(user("say again"))
    assert f.read()["subtype"] == "init"  # the real CLI prints init at every turn
    res, _ = f.result()
    assert res["total_cost_usd"] == pytest.approx(0.02)  # cumulative for the process
    f.close()
    assert f.wait() == 0


def test_tool_allow_remember_and_deny(fake):
    f = fake()
    f.send(user('tool Bash {"command": "a; b"}; tool Bash {"command": "c"}; tool Write {}'))
    f.read()  # init
    tu = f.read()
    assert tu["message"]["content"][0]["type"] == "tool_use"
    req = f.read()
    assert req["type"] == "control_request"
    r = req["request"]
    assert r["subtype"] == "can_use_tool" and r["tool_name"] == "Bash" and r["input"] == {"command": "a; b"}
    assert r["tool_use_id"] == tu["message"]["content"][0]["id"]
    assert r["permission_suggestions"][0]["type"] == "addRules"
    f.send({"type": "control_response", "response": {
        "subtype": "success", "request_id": req["request_id"],
        "response": {"behavior": "allow", "updatedInput": {"command": "changed"},
                     "updatedPermissions": [{"type": "addRules", "rules": [{"toolName": "Bash"}],
                                             "behavior": "allow", "destination": "session"}]}}})
    tr = f.read()
    assert tr["type"] == "user"
    assert tr["message"]["content"][0]["content"] == 'ran Bash with {"command": "changed"}'
    assert texts([f.read()]) == ["allowed Bash"]
    # second Bash: remembered, not asked
    msg, seen = f.until(lambda m: m["type"] == "control_request")
    assert msg["request"]["tool_name"] == "Write"
    assert "allowed Bash" in texts(seen)
    f.send({"type": "control_response", "response": {
        "subtype": "success", "request_id": msg["request_id"],
        "response": {"behavior": "deny", "message": "no writes"}}})
    res, seen = f.result()
    assert "denied Write: no writes" in texts(seen)
    assert res["is_error"] is False and res["permission_denials"][0]["tool_name"] == "Write"


def test_allow_without_updated_input_fails_like_real_cli(fake):
    f = fake()
    f.send(user("tool Bash {}"))
    req, _ = f.until(lambda m: m["type"] == "control_request")
    f.send({"type": "control_response", "response": {
        "subtype": "success", "request_id": req["request_id"], "response": {"behavior": "allow"}}})
    res, seen = f.result()
    assert any(t.startswith("failed Bash: Tool permission request failed") for t in texts(seen))


def test_ask_question(fake):
    f = fake()
    f.send(user("ask Ship it?"))
    req, _ = f.until(lambda m: m["type"] == "control_request")
    r = req["request"]
    assert r["tool_name"] == "AskUserQuestion" and r["input"]["questions"][0]["question"] == "Ship it?"
    f.send({"type": "control_response", "response": {
        "subtype": "success", "request_id": req["request_id"],
        "response": {"behavior": "allow", "updatedInput": dict(r["input"], answers={"Ship it?": "no"})}}})
    res, seen = f.result()
    assert res["result"] == "answer: no"


def test_interrupt_during_sleep_and_pending_permission(fake):
    f = fake()
    f.send(user("sleep 10; say never"))
    f.read()  # init
    f.send({"type": "control_request", "request_id": "int_1", "request": {"subtype": "interrupt"}})
    resp = f.read()
    assert resp == {"type": "control_response", "response": {"subtype": "success", "request_id": "int_1"}}
    res, seen = f.result()
    assert res["subtype"] == "error_during_execution" and res["is_error"] is True
    assert "result" not in res and "never" not in texts(seen)
    # interrupt while a permission request is pending: the fake withdraws it first
    f.send(user("tool Bash {}"))
    req, _ = f.until(lambda m: m["type"] == "control_request")
    f.send({"type": "control_request", "request_id": "int_2", "request": {"subtype": "interrupt"}})
    assert f.read() == {"type": "control_cancel_request", "request_id": req["request_id"]}
    assert f.read()["response"]["request_id"] == "int_2"
    res, _ = f.result()
    assert res["subtype"] == "error_during_execution" and res["terminal_reason"] == "aborted_tools"
    f.close()
    assert f.wait() == 1  # like the real CLI: the last turn ended in error


def test_cancel_after_withdraws(fake):
    f = fake()
    f.send(user("tool Bash {}; cancel-after 0.1; say after"))
    req, _ = f.until(lambda m: m["type"] == "control_request")
    assert f.read() == {"type": "control_cancel_request", "request_id": req["request_id"]}
    res, seen = f.result()
    assert texts(seen) == ["withdrawn", "after"]


def test_crash_fail_garbage_unknown_stream(fake):
    f = fake()
    f.send(user("garbage; unknown; stream 3 10; fail Not logged in · Please run /login"))
    f.read()  # init
    assert f.raw().strip() == "this is not json"
    assert f.read() == {"type": "weird_future_type", "x": 1}
    res, seen = f.result()
    assert [m.get("ts") is not None for m in seen[:3]] == [True] * 3
    assert texts(seen)[:3] == ["line 1", "line 2", "line 3"]
    assert res["subtype"] == "success" and res["is_error"] is True
    assert res["result"] == "Not logged in · Please run /login"
    f.send(user("say x; crash 7; say never"))
    assert f.wait() == 7
    assert "fake crash" in f.proc.stderr.read().decode()


def test_sigterm_and_ignore_stop(fake):
    f = fake()
    f.send(user("sleep 10"))
    f.read()
    f.proc.send_signal(signal.SIGTERM)
    assert f.wait() == 143
    g = fake()
    g.send(user("ignore-stop"))
    while "ignoring stop" not in texts([g.read()]):
        pass  # the fake says so once its signal handlers are in place
    g.proc.send_signal(signal.SIGTERM)
    g.send({"type": "control_request", "request_id": "i", "request": {"subtype": "interrupt"}})
    g.close()
    with pytest.raises(subprocess.TimeoutExpired):
        g.wait(0.3)


def test_bad_arguments(tmp_path):
    def run(args):
        return subprocess.run([sys.executable, str(FAKE), *args], input=b"", capture_output=True,
                              cwd=tmp_path, timeout=5)

    sid = ["--session-id", str(uuid.uuid4())]
    r = run([a for a in BASE_ARGS if a != "--verbose"] + sid)
    assert r.returncode == 1 and b"requires --verbose" in r.stderr  # the real CLI's message
    r = run([a for a in BASE_ARGS if a != "-p"] + sid)
    assert r.returncode == 2 and b"-p" in r.stderr  # the fake's own strictness
    r = run(BASE_ARGS)
    assert r.returncode == 2 and b"--session-id" in r.stderr
    r = run(BASE_ARGS + ["--session-id", "nope"])
    assert r.returncode == 1 and b"Invalid session ID" in r.stderr
    r = run(BASE_ARGS + sid + ["--some-future-flag"])
    assert r.returncode == 0 and r.stdout == b""  # unknown flags ignored; EOF without input: exit 0


def test_argv_log_state_dir_and_resume(tmp_path):
    log = tmp_path / "argv.jsonl"
    env = dict(os.environ, FAKE_CLAUDE_ARGV_LOG=str(log), FAKE_CLAUDE_STATE_DIR=str(tmp_path / "state"),
               CLAUDE_CODE_DISABLE_CRON="1")
    sid = str(uuid.uuid4())

    def run(session_args, text="say hi"):
        return subprocess.run([sys.executable, str(FAKE), *BASE_ARGS, *session_args],
                              input=(json.dumps(user(text)) + "\n").encode(), capture_output=True,
                              cwd=tmp_path, env=env, timeout=5)

    r = run(["--session-id", sid])
    assert r.returncode == 0
    init = json.loads(r.stdout.splitlines()[0])
    assert "CronCreate" not in init["tools"]
    r = run(["--session-id", sid])
    assert r.returncode == 1 and b"already in use" in r.stderr
    r = run(["--resume", sid])
    assert r.returncode == 0 and json.loads(r.stdout.splitlines()[0])["session_id"] == sid
    r = run(["--resume", str(uuid.uuid4())])
    assert r.returncode == 1 and b"No conversation found" in r.stderr
    assert json.loads(r.stdout)["subtype"] == "error_during_execution"
    entries = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(entries) == 4 and entries[0]["env_disable_cron"] == "1"
    assert entries[2]["argv"][-2:] == ["--resume", sid] and entries[0]["cwd"] == str(tmp_path)


MINI_MCP = r'''
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if "id" not in m:
        continue
    if m["method"] == "initialize":
        r = {"protocolVersion": m["params"]["protocolVersion"], "capabilities": {"tools": {}},
             "serverInfo": {"name": "mini", "version": "0"}}
    elif m["method"] == "tools/call" and m["params"]["name"] == "echo":
        r = {"content": [{"type": "text", "text": "echo " + m["params"]["arguments"]["text"]}]}
    else:
        print(json.dumps({"jsonrpc": "2.0", "id": m["id"], "error": {"code": -32602, "message": "no such tool"}}),
              flush=True)
        continue
    print(json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": r}), flush=True)
'''


def test_mcp_directive(fake, tmp_path):
    server = tmp_path / "mini_mcp.py"
    server.write_text(MINI_MCP)
    conf = json.dumps({"mcpServers": {"mini": {"command": sys.executable, "args": [str(server)], "env": {}}}})
    f = fake("--mcp-config", conf, "--allowedTools", "mcp__mini__echo")
    f.send(user('mcp echo {"text": "ping"}; mcp mcp__mini__nope {}'))
    init = f.read()
    assert init["mcp_servers"] == [{"name": "mini", "status": "connected"}]
    res, seen = f.until(lambda m: m["type"] == "control_request")  # nope is not in --allowedTools
    assert "mcp: echo ping" in texts(seen) and res["request"]["tool_name"] == "mcp__mini__nope"
    f.send({"type": "control_response", "response": {
        "subtype": "success", "request_id": res["request_id"],
        "response": {"behavior": "allow", "updatedInput": {}}}})
    res, _ = f.result()
    assert res["result"] == "mcp error: no such tool"


def test_bigline_and_garbage_stdin(fake):
    f = fake()
    f.send(user("bigline 2"))
    f.read()
    line = f.raw()
    assert len(line) > 2 * 1024 * 1024 and json.loads(line)["type"] == "assistant"
    f.result()
    f.proc.stdin.write(b"this is not json\n")
    f.proc.stdin.flush()
    assert f.wait() == 1  # the real CLI dies on a non-JSON stdin line
    assert b"Error parsing streaming input line" in f.proc.stderr.read()
