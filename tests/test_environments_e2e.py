"""Routine environments end to end: a real bgd, bgctl and the fake agent, local bare repositories,
and two local HTTP servers reachable by name (allowed.test and blocked.test, see env_helpers).

The setup script is cached (built once for two runs that start together, built again when it
changes or when asked), fails clearly, gets EOF on stdin and leaves nothing running; the network
policy holds for the setup script and for the agent; a machine that cannot confine a run refuses
it; a confined run sees only what it may."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import Bgd, wait_until
from bgcore.confinement import probe_argv
from env_helpers import (bridges, hosts_file, named_prefix, need_confinement, need_names, servers,  # noqa: F401
                         user_prefix)
from routine_helpers import make_remote, transcript_text, wait_run

CONFIG = '[routines]\nstagger = false\n'


def start(bgd: Bgd, routines_toml: str, *, config: str = "", names: Path | None = None, env: dict | None = None) -> None:
    bgd.write_config(CONFIG + config)
    (bgd.config_dir / "routines.toml").write_text(routines_toml)
    bgd.start(extra_env=env, prefix=named_prefix(names) if names else None)


def routine(name: str, remote: Path, prompt: str, environment: str) -> str:
    return (f'[routines.{name}]\nprompt = {json.dumps(prompt)}\nrepos = ["{remote}"]\n'
            f'[routines.{name}.environment]\n{environment}\n')


def run(bgd: Bgd, name: str, **params) -> dict:
    rec = bgd.rpc("routine.run", {"name": name, **params})
    return wait_run(bgd, rec["id"], timeout=60)


def said(bgd: Bgd, session_id: str) -> list[str]:
    entries = bgd.rpc("session.transcript", {"id": session_id, "full": True})["entries"]
    return [c["text"] for e in entries if e["kind"] == "agent" and e["data"].get("type") == "assistant"
            for c in e["data"]["message"]["content"] if c.get("type") == "text"]


def not_running(marker: str) -> bool:
    return subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True).returncode == 1


def unique_marker() -> str:
    return str(60_000_000 + time.monotonic_ns() % 10_000_000)


def test_a_setup_runs_once_for_two_runs_and_again_when_it_changes(bgd, tmp_path):
    remote = make_remote(tmp_path)
    count = tmp_path / "setup-runs.log"
    setup = f"echo run >> {count}; date +%s%N > marker.txt; mkdir -p .venv && echo made > .venv/tool"
    start(bgd, routine("build", remote, "sh cat marker.txt .venv/tool && pwd; say done",
                       f"setup = {json.dumps(setup)}"))
    results: list[dict] = []
    threads = [threading.Thread(target=lambda: results.append(run(bgd, "build"))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r["cache"] for r in results) == ["built", "hit"], results
    assert all(r["status"] == "finished" for r in results)
    assert count.read_text() == "run\n"
    outputs = [said(bgd, r["session_id"])[0] for r in results]
    assert outputs[0] == outputs[1] and " | made | " in outputs[0]   # the same template, copied
    template = bgd.state_dir / "setup-cache" / "build" / "template"
    assert outputs[0].endswith(f"| {template / 'app'}")        # seen at the template's path
    assert all(isinstance(r["prepare_s"], float) for r in results)
    assert results[0]["environment"] == {"network": "full", "confined": False, "root": str(template), "grant": []}

    third = run(bgd, "build")
    assert (third["cache"], third["cache_reason"]) == ("hit", "the cached setup is current")
    assert count.read_text() == "run\n"
    # The copy's branch guard is this run's: a push to main is refused and recorded.
    guard = bgd.rpc("session.reply", {"id": third["session_id"], "text": "sh git -c user.name=T -c user.email=t@x commit -q --allow-empty -m x && "
                                                              "git push origin HEAD:main; say pushed"})
    assert guard is not None
    bgd.wait_state(third["session_id"], "completed")
    assert said(bgd, third["session_id"])[-2].startswith("sh exit 1: bgagents: this run may push only to claude/*")
    log = (bgd.state_dir / "runs" / third["id"] / "app" / ".git" / "bgagents-pushes.log").read_text()
    assert log.startswith("refused origin refs/heads/main")

    path = bgd.config_dir / "routines.toml"
    path.write_text(path.read_text().replace("mkdir -p .venv", "mkdir -p  .venv"))
    wait_until(lambda: "mkdir -p  .venv" in (bgd.rpc("routine.get", {"name": "build"})["environment"]["setup"]),
               what="the edited setup to load")
    changed = run(bgd, "build")
    assert changed["cache"] == "rebuilt" and "the setup script changed" in changed["cache_reason"]
    assert count.read_text() == "run\nrun\n"

    forced = bgd.ctl("routine", "run", "build", "--rebuild")
    assert forced.returncode == 0, forced.stderr
    run_id = forced.stdout.split(" · ")[1].removeprefix("run ")
    rec = wait_run(bgd, run_id)
    assert rec["cache"] == "rebuilt" and "--rebuild" in rec["cache_reason"] and count.read_text() == "run\n" * 3
    listing = bgd.ctl("routine", "runs", "build").stdout
    assert "PREPARED" in listing and "rebuilt " in listing and "hit " in listing
    shown = bgd.ctl("routine", "show", "build").stdout
    assert "  network:        full\n" in shown and f"  setup:          echo run >> {count}" in shown


def test_a_failing_setup_is_setup_failed_with_its_code_and_last_lines_and_is_tried_again(bgd, tmp_path):
    remote = make_remote(tmp_path)
    (bgd.config_dir / "broken.env").write_text("DEPLOY_TOKEN=s3cr3t-value-42\n")
    start(bgd, routine("broken", remote, "say never", 'env_file = "broken.env"\n'
                       'setup = "echo step one with $DEPLOY_TOKEN; echo no such thing >&2; exit 3"')
          + routine("slow", remote, "say never", 'setup = "echo waiting; sleep 60"\nsetup_timeout = "1s"')
          + routine("unparsed", remote, "say never", 'setup = "if true; then echo x"'))
    first = run(bgd, "broken")
    assert first["status"] == "setup_failed" and first["session_id"] is None
    assert first["error"] == "the setup script exited with code 3: no such thing"
    assert first["setup"]["exit_code"] == 3
    assert first["setup"]["last_lines"] == ["step one with ***", "no such thing"]   # env_file values masked
    assert first["prepare_s"] > 0
    log = Path(first["setup"]["log"]).read_text()
    assert "step one with ***" in log and "s3cr3t" not in log
    assert first["cache"] == "built"
    again = run(bgd, "broken")
    assert again["status"] == "setup_failed" and again["cache"] == "rebuilt"
    slow = run(bgd, "slow")
    assert slow["status"] == "setup_failed"
    assert slow["error"] == "the setup script did not finish within 1 second; it was stopped: waiting"
    assert slow["setup"]["exit_code"] is None
    unparsed = run(bgd, "unparsed")
    assert unparsed["status"] == "setup_failed"
    assert unparsed["error"].startswith("the setup script is not valid bash (bash -n): ")
    assert "syntax error" in unparsed["error"]
    listing = bgd.ctl("routine", "runs").stdout
    assert "setup_failed" in listing and "the setup script exited with code 3: no such thing" in listing


def test_a_setup_reads_eof_and_what_it_leaves_running_is_ended(bgd, tmp_path):
    remote = make_remote(tmp_path)
    marker, plain = unique_marker(), unique_marker() + "1"
    setup = f"read line || echo got-eof > eof.txt; setsid sleep {marker} > /dev/null 2>&1 & echo started"
    start(bgd, routine("daemonizing", remote, "sh cat eof.txt; say done", f"setup = {json.dumps(setup)}")
          + routine("plain", remote, "say done", f'setup = "sleep {plain} > /dev/null 2>&1 &"'),
          config='[environment]\nbwrap = "/nonexistent/bwrap"\n' if shutil.which("bwrap") is None else "")
    rec = run(bgd, "daemonizing")
    assert rec["status"] == "finished", rec
    assert said(bgd, rec["session_id"])[0] == "sh exit 0: got-eof"
    assert not_running(marker)
    bgd.stop()
    # Without bubblewrap the script's process group is what ends.
    bgd.write_config(CONFIG + '[environment]\nbwrap = "/nonexistent/bwrap"\n')
    bgd.start()
    rec = run(bgd, "plain")
    assert rec["status"] == "finished" and not_running(plain)


@pytest.fixture
def named(tmp_path, servers):  # noqa: F811
    need_confinement()
    need_names()
    return hosts_file(tmp_path), servers


PROBE = ("curl -s -o /dev/null -w '%{{http_code}}\\n' {a} > codes.txt; "
         "curl -s -o /dev/null -w '%{{http_code}}\\n' {b} >> codes.txt")


@pytest.mark.parametrize("network, setup_codes, agent_codes, blocked", [
    ('["allowed.test"]', ["200", "403"], ["200", "403"], {"blocked.test": 2}),
    ('"none"', ["403", "403"], ["403", "403"], {"allowed.test": 2, "blocked.test": 2}),
    ('"full"', ["200", "200"], ["200", "200"], {}),
])
def test_the_network_policy_holds_for_the_setup_and_the_agent(bgd, tmp_path, named, network, setup_codes,
                                                              agent_codes, blocked):
    hosts, servers = named
    a, b = servers.url("allowed.test"), servers.url("blocked.test")
    remote = make_remote(tmp_path)
    prompt = f"sh cat codes.txt; fetch {a}; fetch {b}; say done"
    start(bgd, routine("net", remote, prompt, f"network = {network}\nsetup = {json.dumps(PROBE.format(a=a, b=b))}"),
          names=hosts)
    rec = run(bgd, "net")
    assert rec["status"] == "finished", rec
    lines = said(bgd, rec["session_id"])
    assert lines[0] == "sh exit 0: " + " | ".join(setup_codes)
    assert lines[1:3] == [f"fetch {a}: {agent_codes[0]}", f"fetch {b}: {agent_codes[1]}"]
    rec = wait_until(lambda: (r := bgd.rpc("routine.get_run", {"id": rec["id"]})).get("blocked", {}) == blocked and r,
                     what=f"blocked hosts {blocked}") if blocked else rec
    assert rec["environment"]["confined"] is (network != '"full"')
    if blocked:
        assert rec["blocked_total"] == sum(blocked.values())
        listing = bgd.ctl("routine", "runs", "net").stdout
        assert f"{sum(blocked.values())} ({len(blocked)} host" in listing
        assert "blocked by network policy: " + ", ".join(f"{h} ×{n}" for h, n in sorted(blocked.items())) in listing


def test_a_routine_asking_for_confinement_is_refused_where_there_is_none(bgd, tmp_path):
    remote = make_remote(tmp_path)
    start(bgd, routine("closed", remote, "say never", 'network = "trusted"')
          + routine("open", remote, "sh cat made.txt; say done", 'setup = "echo made > made.txt"'),
          config='[environment]\nbwrap = "/nonexistent/bwrap"\n')
    rec = run(bgd, "closed")
    assert rec["status"] == "sandbox_unavailable" and rec["session_id"] is None
    assert rec["error"].startswith('network = "trusted" needs a sandbox, and this machine cannot make one: '
                                   "bubblewrap ('/nonexistent/bwrap') is not installed")
    assert "never run open" in rec["error"] and "apt-get install bubblewrap" in rec["error"]
    assert not (bgd.state_dir / "runs" / rec["id"]).exists()
    check = bgd.rpc("environment.check")
    assert check["ok"] is False and check["bwrap"] == "/nonexistent/bwrap"
    opened = run(bgd, "open")   # network "full" needs no sandbox: it runs, its setup too
    assert opened["status"] == "finished" and said(bgd, opened["session_id"])[0] == "sh exit 0: made"
    assert "sandbox_unavailable" in bgd.ctl("routine", "runs").stdout


def test_a_confined_run_sees_its_workspace_and_not_the_rest(tmp_path):
    need_confinement()
    base = Path(tempfile.mkdtemp(prefix="bgagents-e2e-", dir="/var/tmp"))   # outside /tmp: hidden by the list
    sock_dir = base / "run"
    sock_dir.mkdir()
    bgd = Bgd(base, sock_dir)
    home = base / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("PRIVATE KEY\n")
    (home / ".netrc").write_text("machine github.com password hunter2\n")
    remote = make_remote(tmp_path)
    prompt = ("sh ls {state}/runs | wc -l; sh cat {home}/.ssh/id_ed25519; sh cat {home}/.netrc | wc -c; "
              "sh cat {config}/routines.toml; sh touch {home}/new 2>&1 | grep -c Read-only; "
              "sh echo w > made.txt && cat made.txt; "
              """sh {py} -c "__import__('socket').socket(1).connect('{sock}')" 2>&1 | tail -1; """
              "sh ls -A {sock_dir}/env | wc -l; "
              "sh {py} -m bgctl --no-spawn --socket /tmp/.bgagents-daemon.sock ls; "
              'mcp report_outcome {{"status": "done", "summary": "confined and done"}}; say done')
    try:
        bgd.write_config(CONFIG)
        (bgd.config_dir / "routines.toml").write_text(routine("closed", remote, prompt.format(
            state=bgd.state_dir, home=home, config=bgd.config_dir, sock=bgd.socket, sock_dir=sock_dir,
            py=os.sys.executable),
            'network = "none"'))
        bgd.start(extra_env={"HOME": str(home)})
        first = run(bgd, "closed")
        second = run(bgd, "closed")
        assert first["status"] == second["status"] == "finished", second
        lines = said(bgd, second["session_id"])
        assert lines[0] == "sh exit 0: 1"                                   # only its own run's workspace
        assert lines[1].startswith("sh exit 1: cat: ") and "No such file" in lines[1]   # ~/.ssh: empty
        assert lines[2] == "sh exit 0: 0"                                   # ~/.netrc: empty
        assert lines[3].startswith("sh exit 1: cat: ")                      # bgd's config dir: empty
        assert lines[4] == "sh exit 0: 1"                                   # the rest: read-only
        assert lines[5] == "sh exit 0: w"                                   # its workspace: writable
        assert lines[6] == "sh exit 0: ConnectionRefusedError: [Errno 111] Connection refused"  # bgd's socket
        assert lines[7] == "sh exit 0: 0"                                   # other runs' proxy sockets: hidden
        assert "not available to a confined run" in lines[8]                # its scoped socket: its own calls only
        assert lines[9].startswith("mcp: ") and "recorded: done" in lines[9]
        assert bgd.rpc("routine.get_run", {"id": second["id"]})["outcome"] == "done"
        assert "hunter2" not in transcript_text(bgd, second["session_id"])
    finally:
        bgd.stop_any()
        shutil.rmtree(sock_dir, ignore_errors=True)
        subprocess.run(["rm", "-rf", str(base)])


@dataclass
class User:
    name: str
    uid: int
    gid: int
    base: Path       # theirs: the daemon's dirs and the routine's remote


class UserBgd(Bgd):
    """A daemon run as another user: it answers only that user, so every call goes through bgctl
    run as them (`prefix`)."""

    prefix: list[str] = []

    def rpc(self, method: str, params: dict | None = None):
        result = subprocess.run([*self.prefix, sys.executable, "-m", "bgctl", "--no-spawn", "--json", "rpc", method,
                                 json.dumps(params or {})], env=self.env, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"bgctl rpc {method}: {result.stderr}"
        return json.loads(result.stdout)


@pytest.fixture
def test_user():
    """A real user without privileges, made for the test (useradd) and removed after it (userdel)."""
    if os.geteuid() != 0:
        pytest.skip("running bgd as another user needs root (to create the user)")
    missing = [tool for tool in ("useradd", "userdel", "setpriv", "unshare") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed")
    name = f"bgt{os.getpid()}"
    base = Path(tempfile.mkdtemp(prefix="bgagents-user-", dir="/var/tmp"))
    base.chmod(0o755)
    made = subprocess.run(["useradd", "--home-dir", str(base / "home"), "--create-home", "--shell", "/bin/sh",
                           "--user-group", name], capture_output=True, text=True)
    if made.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"useradd {name} failed: {made.stderr.strip()}")
    try:
        entry = pwd.getpwnam(name)
        yield User(name, entry.pw_uid, entry.pw_gid, base)
    finally:
        removed = subprocess.run(["userdel", "--remove", name], capture_output=True, text=True)
        shutil.rmtree(base, ignore_errors=True)
        assert removed.returncode == 0, f"userdel {name}: {removed.stderr}"


@pytest.mark.parametrize("bridge", bridges())
def test_a_confined_routine_runs_as_a_user_without_privileges(test_user, tmp_path, servers, bridge):  # noqa: F811
    """Every other test here runs bgd as root; a user runs it as themselves, and bubblewrap then
    makes its namespaces in a user namespace of its own."""
    need_confinement()
    user = test_user
    hosts = hosts_file(tmp_path)
    hosts.chmod(0o644)
    tree = Path(__file__).resolve().parent.parent
    prefix = user_prefix(hosts, user.uid, user.gid, [sys.executable, sys.prefix, sys.base_prefix, str(tree)],
                         tmp_path / "stage")
    # Whether this kernel lets a user without privileges make the namespaces of a confined run.
    tried = subprocess.run([*prefix, *probe_argv("bwrap")], capture_output=True, text=True, timeout=30)
    if tried.returncode != 0:
        pytest.skip("bubblewrap cannot make a sandbox as a user without privileges here "
                    f"({tried.stderr.strip().splitlines()[-1:] or tried.returncode}); see /proc/sys/user/"
                    "max_user_namespaces and kernel.unprivileged_userns_clone")
    a, b = servers.url("allowed.test"), servers.url("blocked.test")
    remote = make_remote(user.base)
    sock_dir = user.base / "run"
    sock_dir.mkdir()
    bgd = UserBgd(user.base, sock_dir)
    bgd.prefix = prefix
    bgd.write_config(CONFIG + f'[environment]\nbridge = "{bridge.kind}"\n')
    prompt = f"sh id -u; sh cat codes.txt; fetch {a}; fetch {b}; sh touch {user.base}/home/x 2>&1 | grep -c Read-only; say done"
    (bgd.config_dir / "routines.toml").write_text(
        routine("mine", remote, prompt, f'network = ["allowed.test"]\nsetup = {json.dumps(PROBE.format(a=a, b=b))}'))
    subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", str(user.base)], check=True)
    env = {k: v for k, v in bgd.env.items() if k not in ("XDG_RUNTIME_DIR", "SSH_AUTH_SOCK")}
    bgd.env = dict(env, HOME=str(user.base / "home"), USER=user.name, LOGNAME=user.name)
    try:
        bgd.start(prefix=prefix, wait=False)
        wait_until(lambda: bgd.socket.exists() or bgd.proc.poll() is not None, what="the socket")
        assert bgd.proc.poll() is None, bgd.log()
        assert Path(f"/proc/{bgd.proc.pid}/status").read_text().count(f"\t{user.uid}\t") >= 1
        check = bgd.rpc("environment.check")
        assert check["ok"] is True and check["bridge"] == bridge.kind, check
        rec = run(bgd, "mine")
        assert rec["status"] == "finished", (rec, bgd.log())
        assert rec["cache"] == "built" and rec["environment"]["confined"] is True
        lines = said(bgd, rec["session_id"])
        assert lines[:5] == [f"sh exit 0: {user.uid}", "sh exit 0: 200 | 403", f"fetch {a}: 200", f"fetch {b}: 403",
                             "sh exit 0: 1"], lines
        rec = wait_until(lambda: (r := bgd.rpc("routine.get_run", {"id": rec["id"]})).get("blocked") and r,
                         what="blocked hosts")
        assert rec["blocked"] == {"blocked.test": 2}
        owners = {p.stat().st_uid for p in (bgd.state_dir / "runs").rglob("*")}
        assert owners == {user.uid}     # everything the run made is the user's
    finally:
        bgd.stop_any()
