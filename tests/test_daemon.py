"""The daemon process: one per socket, signals, config reload, crash recovery, socket safety."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys

from conftest import pid_alive, wait_until


def test_socket_is_private(running_bgd):
    bgd = running_bgd
    assert stat.S_IMODE(os.stat(bgd.socket).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(bgd.socket.parent).st_mode) == 0o700


def test_a_socket_in_a_shared_directory_leaves_that_directory_alone(bgd, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o1777)
    os.chmod(shared, 0o1777)
    bgd.socket = shared / "bgd.sock"
    bgd.env["BGD_SOCKET"] = str(bgd.socket)
    bgd.start()
    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o1777
    assert stat.S_IMODE(os.stat(shared / "bgd.sock").st_mode) == 0o600


def test_second_daemon_on_the_same_socket_exits_1(running_bgd):
    bgd = running_bgd
    second = subprocess.run([sys.executable, "-m", "bgd"], env=bgd.env, capture_output=True, text=True, timeout=30)
    assert second.returncode == 1
    assert "a daemon is already running" in second.stderr and str(bgd.socket) in second.stderr
    assert bgd.rpc("daemon.status")["pid"] == bgd.proc.pid


def test_stale_socket_of_a_dead_daemon_is_replaced(bgd):
    bgd.start()
    os.kill(bgd.proc.pid, signal.SIGKILL)
    bgd.proc.wait()
    assert bgd.socket.exists()  # left behind
    bgd.start()
    assert bgd.rpc("daemon.status")["pid"] == bgd.proc.pid


def test_sigterm_stops_agents_and_flushes_state(bgd):
    bgd.start()
    s = bgd.dispatch("sleep 60")
    s = bgd.wait_session(s["id"], lambda x: x["pid"] is not None)
    assert bgd.stop(signal.SIGTERM) == 0
    assert not bgd.socket.exists()
    assert not pid_alive(s["pid"])
    bgd.start()
    after = bgd.rpc("session.get", {"id": s["id"]})
    assert after["state"] == "failed" and "shut down" in after["error"]


def test_kill_9_recovery_lists_everything_and_replies_resume(bgd, tmp_path):
    log = tmp_path / "argv.log"
    bgd.start(extra_env={"FAKE_CLAUDE_ARGV_LOG": str(log)})
    done = bgd.dispatch("say finished")
    bgd.wait_state(done["id"], "completed")
    working = [bgd.dispatch("sleep 60") for _ in range(3)]
    for s in working:
        bgd.wait_session(s["id"], lambda x: x["pid"] is not None)
    asking = bgd.dispatch('tool Bash {"command": "ls"}')
    bgd.wait_state(asking["id"], "needs_input")
    agents = [bgd.rpc("session.get", {"id": s["id"]})["pid"] for s in working]
    os.kill(bgd.proc.pid, signal.SIGKILL)
    bgd.proc.wait()
    # Working agents outlive a daemon killed with SIGKILL (one that writes meanwhile may die of SIGPIPE).
    assert any(pid_alive(pid) for pid in agents)

    bgd.start(extra_env={"FAKE_CLAUDE_ARGV_LOG": str(log)})
    # The new daemon ends them: none goes on working unseen, or beside the process a reply starts.
    wait_until(lambda: not any(pid_alive(pid) for pid in agents), 5, "the left-behind agents to end")
    assert "left running by the previous daemon" in bgd.log()
    listed = {s["id"]: s for s in bgd.ctl_json("ls", "--all")}
    assert set(listed) == {done["id"], asking["id"]} | {s["id"] for s in working}
    assert listed[done["id"]]["state"] == "completed"
    for s in working + [asking]:
        assert listed[s["id"]]["state"] == "failed"
        assert "bgd restarted" in listed[s["id"]]["error"]
        assert listed[s["id"]]["pid"] is None
    target = working[0]
    assert bgd.ctl("reply", target["id"], "say back again").returncode == 0
    s = bgd.wait_session(target["id"], lambda x: x["state"] == "completed" and x["last_message"] == "back again")
    last = json.loads(log.read_text().splitlines()[-1])["argv"]
    assert last[last.index("--resume") + 1] == s["agent_session_id"] == target["agent_session_id"]
    db = sqlite3.connect(bgd.state_dir / "bgd.sqlite3")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_the_wal_is_checkpointed_in_the_background_while_a_session_streams(running_bgd):
    # SQLite's own checkpoint is off (it stalled commits); the daemon's worker-thread one
    # must copy the WAL back, or the database file would never grow while bgd runs.
    bgd = running_bgd
    db_file = bgd.state_dir / "bgd.sqlite3"
    size = db_file.stat().st_size
    s = bgd.dispatch("stream 300 0")
    bgd.wait_state(s["id"], "completed", timeout=60)
    # Within one idle back-off (8 s) of the first write, plus the stream; generous for loaded machines.
    wait_until(lambda: db_file.stat().st_size > size, timeout=30, what="the database file to take the WAL's pages")
    assert len(bgd.ctl_json("logs", s["id"])) > 300


def test_sighup_reloads_config_and_a_broken_edit_keeps_the_old_one(running_bgd):
    bgd = running_bgd
    config = bgd.config_dir / "config.toml"
    config.write_text(config.read_text() + '[agents.shout]\nbackend = "command"\n'
                      f'command = [{json.dumps(sys.executable)}, "-c", "print(\'HEY\')"]\n')
    bgd.proc.send_signal(signal.SIGHUP)
    s = bgd.wait_session(bgd.dispatch_retry("x", agent="shout")["id"], lambda x: x["state"] == "completed")
    assert s["last_message"] == "HEY"

    config.write_text("this is [ not toml")
    bgd.proc.send_signal(signal.SIGHUP)
    status = _wait_status(bgd, lambda st: st["config_error"])
    assert "config.toml" in status["config_error"] and "not valid TOML" in status["config_error"]
    assert "config error" in bgd.ctl("daemon", "status").stdout
    # last good config still in force: the agent defined before still works
    s = bgd.wait_state(bgd.dispatch("y", agent="shout")["id"], "completed")
    assert s["last_message"] == "HEY"


def _wait_status(bgd, predicate, timeout=10):
    def matching():
        status = bgd.rpc("daemon.status")
        return status if predicate(status) else None
    return wait_until(matching, timeout, what="the daemon status")


def test_invalid_config_at_start_names_file_and_line(bgd):
    (bgd.config_dir / "config.toml").write_text('default_agent = "claude"\nstop_grace_s = "soon"\n')
    bgd.start(wait=False)
    assert bgd.proc.wait(30) == 2
    log = bgd.log()
    assert "config.toml:2" in log and "stop_grace_s must be a number" in log


def test_peer_from_another_uid_is_refused(running_bgd):
    if os.getuid() != 0:
        import pytest
        pytest.skip("needs root to connect as another uid")
    bgd = running_bgd
    os.chmod(bgd.socket.parent, 0o755)
    os.chmod(bgd.socket, 0o777)
    # The daemon answers and hangs up without reading, so the request may meet a closed socket.
    code = ("import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
            "try: s.sendall(b'{\"jsonrpc\":\"2.0\",\"method\":\"daemon.status\",\"id\":1}\\n')\n"
            "except OSError: pass\n"
            "print(s.recv(4096).decode())")
    python = "/usr/bin/python3"
    if not os.access(python, os.X_OK):
        import pytest
        pytest.skip("no system python3 another user can run")
    out = subprocess.run([python, "-c", code, str(bgd.socket)], capture_output=True, text=True,
                         user=65534, timeout=30)
    assert "another user" in out.stdout and "-32007" in out.stdout


def test_a_left_behind_agent_is_killed_only_if_its_pid_is_still_that_process():
    from bgd.agents.process import end_left_behind, start_time
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        started = start_time(proc.pid)
        assert started is not None
        # Another process now has that pid (its start time differs): it is left alone.
        assert not end_left_behind(proc.pid, started - 1) and proc.poll() is None
        assert not end_left_behind(proc.pid, None) and proc.poll() is None
        assert end_left_behind(proc.pid, started)
        assert proc.wait(5) == -signal.SIGKILL
        assert start_time(proc.pid) is None and not end_left_behind(proc.pid, started)
    finally:
        if proc.poll() is None:
            proc.kill()
