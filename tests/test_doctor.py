"""`bgctl doctor`: end to end against a real bgd (conftest), broken files, missing agents, a wrong socket.

Each check is one line with its fix; exit 0 when nothing fails, 1 otherwise; the daemon is never started.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bgctl import health
from bgctl.client import Client
from bgcore.jsonrpc import FrameReader, NEED_DATA, encode_result
from conftest import ROOT


@pytest.fixture
def home(tmp_path):
    """XDG dirs of the test's own, so no systemd unit of this machine's user is seen."""
    base = tmp_path / "xdg"
    (base / "config").mkdir(parents=True)
    (base / "data").mkdir()
    return {"XDG_CONFIG_HOME": str(base / "config"), "XDG_DATA_HOME": str(base / "data")}


def doctor(bgd, home, *args: str, env: dict | None = None) -> tuple[int, dict]:
    out = bgd.ctl("doctor", "--json", *args, env={**home, **(env or {})}, timeout=60)
    assert out.stderr == "", out.stderr
    return out.returncode, json.loads(out.stdout)


def by_name(report: dict) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for check in report["checks"]:
        found.setdefault(check["check"], []).append(check)
    return found


def test_all_well_with_a_running_daemon(running_bgd, home):
    code, report = doctor(running_bgd, home)
    checks = by_name(report)
    assert code == 0 and report["ok"] is True, report
    assert report["bgctl_version"]
    daemon, = checks["daemon"]
    assert daemon["status"] == "ok" and f"pid {running_bgd.proc.pid}" in daemon["detail"]
    assert f"bgd {report['bgctl_version']} running" in daemon["detail"] and "same version" in daemon["detail"]
    sock, = checks["socket"]
    assert sock["status"] == "ok" and "socket 0600, yours" in sock["detail"]
    assert checks["config.toml"][0]["status"] == "ok" and "loads" in checks["config.toml"][0]["detail"]
    assert checks["tasks.toml"][0]["status"] == "ok"
    agent, = checks["agent claude"]
    assert agent["status"] == "ok" and sys.executable in agent["detail"] and "Python 3." in agent["detail"]
    assert checks["systemd"][0]["status"] == "ok" and "not installed" in checks["systemd"][0]["detail"]
    disk, = checks["disk"]
    assert str(running_bgd.state_dir) in disk["detail"] and "free" in disk["detail"]
    assert all(set(c) == {"check", "status", "detail", "fix"} for c in report["checks"])


def test_doctor_never_starts_the_daemon(bgd, home):
    code, report = doctor(bgd, home)
    daemon, = by_name(report)["daemon"]
    assert daemon["status"] == "warn" and "not running" in daemon["detail"]
    assert "bgctl daemon start" in daemon["fix"]
    assert code == 0  # nothing is broken: bgctl starts it on demand
    with pytest.raises(Exception):
        Client.connect(bgd.socket, spawn=False)
    assert not bgd.socket.exists()


def test_text_output_one_line_per_check_with_the_fix(bgd, home):
    bgd.write_config('[agents.aider]\nbackend = "command"\ncommand = ["no-such-agent-binary-for-doctor"]\n')
    out = bgd.ctl("doctor", env=home)
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    problem = next(line for line in lines if "no-such-agent-binary-for-doctor" in line)
    assert problem.startswith("✗ agent aider") and " — fix: " in problem and "config.toml" in problem
    assert next(line for line in lines if line.startswith("! daemon")).count(" — fix: ") == 1
    assert all(" — fix: " not in line for line in lines if line.startswith("✓"))
    assert lines[-1] == "1 problem, 1 warning"


def test_missing_agent_binary_fails(running_bgd, home):
    running_bgd.write_config('[agents.aider]\nbackend = "command"\ncommand = ["no-such-agent-binary-for-doctor"]\n')
    code, report = doctor(running_bgd, home)
    assert code == 1 and report["ok"] is False
    aider, = by_name(report)["agent aider"]
    assert aider["status"] == "fail" and "not found on PATH" in aider["detail"]
    assert "[agents.aider]" in aider["fix"]
    assert by_name(report)["agent claude"][0]["status"] == "ok"


def test_broken_config_fails_with_its_line(running_bgd, home):
    (running_bgd.config_dir / "config.toml").write_text('stop_grace_s = 1\npermission_mode = "yolo"\n')
    code, report = doctor(running_bgd, home)
    assert code == 1
    config, = by_name(report)["config.toml"]
    assert config["status"] == "fail"
    assert config["detail"].startswith(f"{running_bgd.config_dir / 'config.toml'}:2: permission_mode must be")
    assert "last config that loaded" in config["fix"]  # the daemon runs on
    assert by_name(report)["agents"][0]["status"] == "warn"  # which agents exist is unknown


def test_config_that_is_not_toml(bgd, home):
    (bgd.config_dir / "config.toml").write_text("stop_grace_s = \n")
    code, report = doctor(bgd, home)
    config, = by_name(report)["config.toml"]
    assert code == 1 and config["status"] == "fail" and "not valid TOML" in config["detail"]
    assert "does not start" in config["fix"]


def test_unknown_config_key_is_a_warning(bgd, home):
    bgd.write_config("stop_grace = 3\n")
    code, report = doctor(bgd, home)
    warning, = [c for c in by_name(report)["config.toml"]]
    assert warning["status"] == "warn" and "unknown key 'stop_grace'" in warning["detail"]
    assert code == 0


def test_tasks_file_errors_fail_with_their_lines(running_bgd, home):
    (running_bgd.config_dir / "tasks.toml").write_text(
        f'[tasks.good]\nprompt = "p"\ncwd = {json.dumps(str(running_bgd.work))}\nschedule = "hourly"\n\n'
        f'[tasks.bad]\nprompt = "p"\ncwd = {json.dumps(str(running_bgd.work))}\nschedule = "every blue moon"\n'
        f'agent = "nobody"\n')
    code, report = doctor(running_bgd, home)
    assert code == 1
    errors = by_name(report)["tasks.toml"]
    assert all(e["status"] == "fail" for e in errors) and len(errors) == 2
    details = " | ".join(e["detail"] for e in errors)
    assert f"{running_bgd.config_dir / 'tasks.toml'}:9" in details   # the schedule's line
    assert "unknown agent 'nobody'" in details


def test_a_valid_tasks_file_counts_its_tasks(bgd, home):
    (bgd.config_dir / "tasks.toml").write_text(
        f'[tasks.one]\nprompt = "p"\ncwd = {json.dumps(str(bgd.work))}\nschedule = "weekdays at 9am"\n')
    code, report = doctor(bgd, home)
    tasks, = by_name(report)["tasks.toml"]
    assert tasks["status"] == "ok" and "1 task, no errors" in tasks["detail"]


def test_socket_others_can_use_fails(running_bgd, home):
    os.chmod(running_bgd.socket, 0o666)
    try:
        code, report = doctor(running_bgd, home)
    finally:
        os.chmod(running_bgd.socket, 0o600)
    sock, = by_name(report)["socket"]
    assert code == 1 and sock["status"] == "fail" and "mode 0666" in sock["detail"]
    assert f"chmod 600 {running_bgd.socket}" in sock["fix"]


def test_runtime_dir_open_to_others_fails(bgd, home, tmp_path):
    runtime = tmp_path / "run"
    (runtime / "bgagents").mkdir(parents=True, mode=0o755)
    os.chmod(runtime / "bgagents", 0o755)
    env = {"XDG_RUNTIME_DIR": str(runtime), "BGD_SOCKET": ""}
    code, report = doctor(bgd, home, env=env)
    sock, = by_name(report)["socket"]
    assert sock["status"] == "fail" and "mode 0755" in sock["detail"]
    assert sock["fix"] == f"chmod 700 {runtime / 'bgagents'}"


def test_a_daemon_of_another_version_fails(bgd, home, tmp_path):
    """Something that speaks the protocol and says it is another bgd."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(bgd.socket))
    os.chmod(bgd.socket, 0o600)
    listener.listen(4)
    status = {"version": "0.0.1", "pid": os.getpid(), "uptime_s": 3.0, "socket": str(bgd.socket),
              "config_dir": str(bgd.config_dir), "state_dir": str(bgd.state_dir), "config_error": None}

    def serve():
        conn, _ = listener.accept()
        reader = FrameReader()
        while True:
            data = conn.recv(65536)
            if not data:
                break
            reader.receive_data(data)
            frame = reader.next_frame()
            if frame is not NEED_DATA:
                conn.sendall(encode_result(frame.id, status))
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        code, report = doctor(bgd, home)
    finally:
        listener.close()
    daemon, = by_name(report)["daemon"]
    assert code == 1 and daemon["status"] == "fail"
    assert "bgd 0.0.1 running" in daemon["detail"] and f"bgctl is {report['bgctl_version']}" in daemon["detail"]
    assert daemon["fix"] == "restart it so the installed version runs: `bgctl daemon restart`"


def test_a_daemon_that_does_not_answer_fails(tmp_path, monkeypatch):
    sock_path = Path(f"/tmp/bgd-doctor-{os.getpid()}.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    listener.listen(4)  # connections wait in the backlog; nobody reads them
    monkeypatch.setattr(health, "CALL_TIMEOUT_S", 0.2)
    try:
        checks, status = health.check_daemon(sock_path, "0.1.0")
    finally:
        listener.close()
        sock_path.unlink()
    check, = checks
    assert status is None and check.status == "fail" and "did not answer daemon.status" in check.detail
    assert "bgctl daemon restart" in check.fix


def test_a_lock_holder_that_does_not_listen_is_named(bgd, home):
    lock = bgd.socket.with_name(bgd.socket.name + ".lock")
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        code, report = doctor(bgd, home)
    daemon, = by_name(report)["daemon"]
    assert code == 1 and daemon["status"] == "fail"
    assert f"bgd (pid {os.getpid()}) holds" in daemon["detail"] and f"kill {os.getpid()}" in daemon["fix"]


def _install_units(home: dict, exec_start: str, units=("bgd.socket", "bgd.service")) -> Path:
    unit_dir = Path(home["XDG_CONFIG_HOME"]) / "systemd" / "user"
    unit_dir.mkdir(parents=True)
    for unit in units:
        text = (ROOT / "contrib" / "systemd" / unit).read_text()
        (unit_dir / unit).write_text(text.replace("ExecStart=%h/.local/bin/bgd", f"ExecStart={exec_start}"))
    return unit_dir


def test_installed_units_with_a_missing_bgd_fail(bgd, home):
    unit_dir = _install_units(home, "/nonexistent/bin/bgd")
    code, report = doctor(bgd, home)
    check, = by_name(report)["systemd"]
    assert code == 1 and check["status"] == "fail"
    assert check["detail"] == f"{unit_dir / 'bgd.service'}: ExecStart /nonexistent/bin/bgd does not exist"
    assert check["fix"].startswith("`systemctl --user edit bgd.service` and set ExecStart=")


def test_installed_units_pointing_at_bgd_pass(bgd, home):
    bgd_script = Path(sys.executable).parent / "bgd"
    unit_dir = _install_units(home, str(bgd_script))
    code, report = doctor(bgd, home)
    check, = by_name(report)["systemd"]
    assert check["status"] in ("ok", "warn")  # warn: a user manager says bgd.socket is not enabled
    assert f"installed in {unit_dir}" in check["detail"]


def test_half_installed_units_fail(bgd, home):
    unit_dir = _install_units(home, "/usr/bin/true", units=("bgd.socket",))
    code, report = doctor(bgd, home)
    check, = by_name(report)["systemd"]
    assert code == 1 and check["status"] == "fail" and "bgd.service missing" in check["detail"]
    assert f"contrib/systemd/bgd.service to {unit_dir}" in check["fix"]


def test_state_dir_that_cannot_be_written_fails(bgd, home, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere: a read-only directory cannot be made here")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code, report = doctor(bgd, home, env={"BGD_STATE_DIR": str(locked / "state")})
    disk, = by_name(report)["disk"]
    assert code == 1 and disk["status"] == "fail" and "not writable" in disk["detail"]


def test_disk_verdicts():
    state = Path("/var/lib/x")
    assert health.disk_verdict(state, 50 << 20).status == "fail"
    assert "50.0 MiB free for /var/lib/x" in health.disk_verdict(state, 50 << 20).detail
    assert health.disk_verdict(state, 500 << 20).status == "warn"
    assert health.disk_verdict(state, 20 << 30).status == "ok"


def test_a_binary_without_a_version_still_counts_as_found(tmp_path):
    from bgcore.config import AgentConfig

    script = tmp_path / "quiet-agent"
    script.write_text("#!/bin/sh\nexit 3\n")
    script.chmod(0o755)
    check = health.check_agent(AgentConfig("quiet", "command", (str(script),)))
    assert check.status == "ok" and "gave no version" in check.detail


def test_doctor_stays_off_the_other_commands_path():
    code = ("import sys, io\nfrom bgctl.main import main\n"
            "try:\n    main(['--help'], out=io.StringIO())\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m in ('bgctl.health', 'bgcore.config', 'bgcore.tasks_file')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr


def test_ready_made_acp_agents_listed_found_or_not_with_their_package(bgd, home, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gemini = bin_dir / "gemini"
    gemini.write_text("#!/bin/sh\necho 0.99.1\n")
    gemini.chmod(0o755)
    path = f"{bin_dir}{os.pathsep}{os.path.dirname(sys.executable)}{os.pathsep}/usr/bin{os.pathsep}/bin"
    code, report = doctor(bgd, home, env={"PATH": path})
    checks = by_name(report)
    found, = checks["agent gemini"]
    assert found["status"] == "ok" and found["detail"] == f"{gemini} · 0.99.1"
    missing, = checks["agent goose"]
    assert missing["status"] == "ok" and missing["detail"].startswith("goose not installed (optional; ")
    assert "agent qwen" in checks and "agent opencode" in checks and "agent codex" in checks
    assert "npm install -g @qwen-code/qwen-code" in checks["agent qwen"][0]["detail"] or \
        checks["agent qwen"][0]["detail"].startswith("/")


def test_confinement_is_checked_and_fails_only_for_routines_that_need_it(bgd, home):
    from bgcore.confinement import probe
    code, report = doctor(bgd, home)
    here, = by_name(report)["confinement"]
    assert here["status"] == ("ok" if probe().ok else "warn"), here
    if here["status"] == "ok":   # it names the bridge in use
        assert "bridge: systemd-socket-proxyd (" in here["detail"] or "bridge: socat (" in here["detail"]
        bgd.write_config('[environment]\nbridge = "socat"\n')
        code, report = doctor(bgd, home)
        chosen, = by_name(report)["confinement"]
        assert chosen["status"] == "ok" and "bridge: socat (" in chosen["detail"], chosen
    bgd.write_config('[environment]\nbwrap = "/nonexistent/bwrap"\n')
    code, report = doctor(bgd, home)
    off, = by_name(report)["confinement"]
    assert off["status"] == "warn" and "'/nonexistent/bwrap') is not installed" in off["detail"]
    assert "(none asks for one now)" in off["detail"] and "apt-get install bubblewrap" in off["fix"]
    (bgd.config_dir / "routines.toml").write_text(
        '[routines.closed]\nprompt = "p"\nrepos = ["/srv/app"]\n[routines.closed.environment]\nnetwork = "none"\n')
    code, report = doctor(bgd, home)
    refused, = by_name(report)["confinement"]
    assert code == 1 and refused["status"] == "fail" and refused["detail"].endswith("(sandbox_unavailable): closed")
