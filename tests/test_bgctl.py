"""bgctl's contract (SPEC §3): output, --json, exit codes, spawning, following, and a light hot path."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from bgcore.jsonrpc import NEED_DATA, FrameReader, encode_result
from conftest import Bgd


def test_hot_path_imports_no_trio(running_bgd):
    bgd = running_bgd
    code = ("import sys, runpy; sys.argv = ['bgctl', 'ls', '--no-spawn'];\n"
            "from bgctl.main import main\n"
            "rc = main()\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('trio', 'textual', 'pygls', 'croniter', 'sqlite3', 'bgd'))\n"
            "print(rc, heavy)")
    out = subprocess.run([sys.executable, "-c", code], env=bgd.env, capture_output=True, text=True, timeout=30)
    assert out.stdout.strip().splitlines()[-1] == "0 []", out.stdout + out.stderr


def test_ls_json_imports_only_what_it_needs(running_bgd):
    """SPEC §12: a cold `bgctl ls --json` imports the socket, the codec and its own command, no more."""
    bgd = running_bgd
    bgd.dispatch("say hi")
    code = ("import sys; before = set(sys.modules)\n"
            "from bgctl.main import main\n"
            "rc = main(['ls', '--json'], out=open('/dev/null', 'w'))\n"
            "loaded = sorted(m for m in set(sys.modules) - before if not m.startswith('_'))\n"
            "import json; print(rc, json.dumps(loaded))")
    out = subprocess.run([sys.executable, "-c", code], env=bgd.env, capture_output=True, text=True, timeout=30)
    rc, loaded = out.stdout.strip().split(" ", 1)
    assert rc == "0", out.stderr
    loaded = set(json.loads(loaded))
    for slow in ("argparse", "pathlib", "typing", "datetime", "tempfile", "shutil", "urllib", "gettext", "locale",
                 "bgctl.render", "bgctl.full_parser", "bgcore.aio_link", "bgcore.schedule", "bgctl.commands.tasks",
                 "bgctl.health", "bgctl.commands.doctor", "bgcore.config"):
        assert slow not in loaded, f"{slow} is on the hot path: {sorted(loaded)}"
    assert "bgctl.commands.sessions" in loaded and "socket" in loaded


def test_exit_codes(bgd):
    # 3: cannot reach the daemon (and not allowed to start one)
    out = bgd.ctl("ls", "--no-spawn")
    assert out.returncode == 3
    assert out.stderr.startswith("bgctl: no daemon answers on") and "bgctl daemon start" in out.stderr
    assert bgd.ctl("ls", env={"BGCTL_NO_SPAWN": "1"}).returncode == 3
    # 2: usage
    out = bgd.ctl("dispatch")
    assert out.returncode == 2 and out.stderr.splitlines()[0] == "bgctl: missing prompt"
    assert bgd.ctl("ls", "--state", "sleepy").returncode == 2
    assert bgd.ctl("frobnicate").returncode == 2
    bgd.start()
    # 1: the daemon said no
    out = bgd.ctl("show", "nosuchid")
    assert out.returncode == 1 and out.stderr.strip() == "bgctl: no session 'nosuchid'; `bgctl ls --all` lists them"
    # 0
    assert bgd.ctl("ls").returncode == 0


def test_bgctl_starts_the_daemon_on_demand(bgd):
    out = bgd.ctl("ls", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []
    status = bgd.ctl_json("daemon", "status")
    assert status["socket"] == str(bgd.socket)
    assert bgd.ctl("daemon", "stop").returncode == 0
    assert bgd.ctl("daemon", "status").returncode == 3


def test_daemon_start_stop_restart(bgd):
    started = bgd.ctl_json("daemon", "start")
    assert started["already_running"] is False
    again = bgd.ctl_json("daemon", "start")
    assert again["already_running"] is True and again["pid"] == started["pid"]
    restarted = bgd.ctl_json("daemon", "restart")
    assert restarted["pid"] != started["pid"]
    assert "stopped" in bgd.ctl("daemon", "stop").stdout
    assert "not running" in bgd.ctl("daemon", "stop").stdout


def test_stop_returns_once_the_old_daemon_is_gone(bgd):
    """A stopping daemon stops answering before it has closed its store and let go of its lock.
    `daemon stop` (and so `restart`) returns only once that process is gone: a bgd started before
    then finds the old one still holding the lock and gives up (CI saw restart fail so).  Here a
    stand-in daemon answers daemon.shutdown on the real socket with a real process's pid, then
    drops every connection (as a daemon past its listener does), and ends that process only once
    bgctl has looked three more times."""
    old = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(bgd.socket))
    listener.listen(4)
    listener.settimeout(30)
    ended: list[str] = []
    over = threading.Event()

    def stand_in() -> None:
        conn, _ = listener.accept()
        reader = FrameReader(1 << 20)
        while (frame := reader.next_frame()) is NEED_DATA:
            reader.receive_data(conn.recv(1 << 16))
        assert frame.method == "daemon.shutdown"
        conn.sendall(encode_result(frame.id, {"shutting_down": True, "pid": old.pid}))
        conn.close()
        looks = 0
        while not over.is_set():
            listener.accept()[0].close()   # bgctl looks again: no answer
            looks += 1
            if looks == 3:
                ended.append("old daemon")
                old.kill()
                old.wait()

    thread = threading.Thread(target=stand_in, daemon=True)
    thread.start()
    try:
        out = bgd.ctl("--json", "daemon", "stop")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == {"stopped": True, "pid": old.pid}
        assert ended == ["old daemon"]   # bgctl waited for the process, not only for the socket
    finally:
        over.set()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as wake:   # out of its accept()
            wake.connect(str(bgd.socket))
        thread.join(10)
        listener.close()
        if old.poll() is None:
            old.kill()
            old.wait()


def test_json_may_stand_anywhere_before_the_prompt(running_bgd):
    bgd = running_bgd
    for argv in (["--json", "dispatch", "say a"], ["dispatch", "--json", "say", "b"],
                 ["dispatch", "--name", "x", "--json", "say c"]):
        out = bgd.ctl(*argv)
        assert out.returncode == 0, out.stderr
        session = json.loads(out.stdout)
        assert session["state"] == "working"
    # after the prompt words, it is part of the prompt
    out = bgd.ctl("dispatch", "say", "--json")
    assert out.stdout.startswith("backgrounded · ")
    session_id = out.stdout.split(" · ")[1]
    assert bgd.wait_state(session_id, "completed")["last_message"] == "--json"


@pytest.mark.parametrize("argv", [["ls"], ["daemon", "status"], ["events"]])
def test_every_data_command_prints_one_json_document(running_bgd, argv):
    out = running_bgd.ctl(*argv, "--json")
    assert out.returncode == 0, out.stderr
    json.loads(out.stdout)


def test_show_and_session_commands_in_json(running_bgd):
    bgd = running_bgd
    s = bgd.dispatch('tool Bash {"command": "ls"}')
    bgd.wait_state(s["id"], "needs_input")
    shown = bgd.ctl_json("show", s["id"])
    assert shown["pending"]["tool_name"] == "Bash"
    for key in ("id", "name", "cwd", "agent", "state", "waiting_for", "error", "agent_session_id", "created_at",
                "updated_at", "pid", "cost_usd", "turns", "last_message", "pinned", "origin", "next_wake_at"):
        assert key in shown
    assert shown["created_at"].endswith("+00:00")
    approved = bgd.ctl_json("approve", s["id"])
    assert approved["state"] == "working"


def test_rpc_calls_any_method(running_bgd):
    bgd = running_bgd
    out = bgd.ctl("rpc", "daemon.status")
    assert json.loads(out.stdout)["pid"] == bgd.proc.pid
    out = bgd.ctl("rpc", "session.list", '{"all": true}')
    assert json.loads(out.stdout) == []
    out = bgd.ctl("rpc", "session.list", "{not json")
    assert out.returncode == 2 and "not valid JSON" in out.stderr
    out = bgd.ctl("rpc", "no.such")
    assert out.returncode == 1 and "unknown method" in out.stderr


def _popen_ctl(bgd: Bgd, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bgctl", *args], env=bgd.env, cwd=str(bgd.work),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _read_until(proc: subprocess.Popen, needle: str, timeout: float = 20) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        if time.monotonic() > deadline:
            raise AssertionError(f"never saw {needle!r} in {seen!r}")
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"output ended before {needle!r}: {seen!r} {proc.stderr.read()}")
        seen += line
    return seen


def test_logs_follow_prints_live_until_ctrl_c(running_bgd):
    bgd = running_bgd
    s = bgd.dispatch("say first")
    bgd.wait_state(s["id"], "completed")
    follower = _popen_ctl(bgd, "logs", s["id"], "-f")
    try:
        _read_until(follower, "first")
        bgd.ctl("reply", s["id"], "say second")
        _read_until(follower, "second")
        follower.send_signal(signal.SIGINT)
        assert follower.wait(10) == 130
    finally:
        follower.kill()


def test_events_follow_prints_live_until_ctrl_c(running_bgd):
    bgd = running_bgd
    seq = bgd.rpc("daemon.status")["event_seq"]
    follower = _popen_ctl(bgd, "events", "-f", "--json", "--since", str(seq))
    try:
        s = bgd.dispatch("say evented")
        text = _read_until(follower, '"completed"')
        events = [json.loads(line) for line in text.splitlines()]
        assert events[0]["type"] == "session.created" and events[0]["session"]["id"] == s["id"]
        assert all(b["seq"] > a["seq"] for a, b in zip(events, events[1:]))
        follower.send_signal(signal.SIGINT)
        assert follower.wait(10) == 130
    finally:
        follower.kill()


def test_dispatch_uses_the_current_directory(running_bgd, tmp_path):
    bgd = running_bgd
    here = tmp_path / "proj"
    here.mkdir()
    out = bgd.ctl("--json", "dispatch", "say hi", cwd=str(here))
    assert json.loads(out.stdout)["cwd"] == str(here)
    out = bgd.ctl("dispatch", "--cwd", str(tmp_path / "missing"), "say hi")
    assert out.returncode == 2 and "not a directory" in out.stderr


def test_real_claude_cli_without_credentials_fails_with_its_own_message(bgd, tmp_path):
    claude = shutil.which("claude")
    if claude is None:
        pytest.skip("the Claude Code CLI is not installed (npm install -g @anthropic-ai/claude-code); "
                    ".ci/run installs it where the npm registry is reachable")
    home = tmp_path / "home"
    home.mkdir()
    bgd.write_config(f'[agents.real]\nbackend = "claude"\ncommand = [{json.dumps(claude)}]\n'
                     f'env = {{ HOME = {json.dumps(str(home))}, ANTHROPIC_API_KEY = "" }}\n')
    bgd.start()
    s = bgd.dispatch("hello", agent="real")
    s = bgd.wait_state(s["id"], "failed", "completed", timeout=90)
    assert s["state"] == "failed"
    entries = bgd.rpc("session.transcript", {"id": s["id"]})["entries"]
    results = [e["data"] for e in entries if e["kind"] == "agent" and e["data"].get("type") == "result"]
    assert results and results[-1]["is_error"] is True
    assert s["error"] == results[-1]["result"].splitlines()[0].strip()
    assert "login" in s["error"].lower() or "api key" in s["error"].lower(), s["error"]
    inits = [e["data"] for e in entries if e["kind"] == "agent" and e["data"].get("subtype") == "init"]
    assert inits and inits[0]["session_id"] == s["agent_session_id"]
