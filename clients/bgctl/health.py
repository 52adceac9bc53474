"""The checks behind `bgctl doctor`: what works, what does not, and for each problem the fix.

Nothing here starts the daemon: the socket is connected to without spawning, and when systemd listens
on it for a stopped bgd (socket activation) it is not connected to at all.  config.toml and tasks.toml
are read with the daemon's own pure parsers (`bgcore.config`, `bgcore.tasks_file`), so a file that
passes here loads there.  Imported only by the doctor command: no other command pays for it.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from bgcore import paths

from .client import Client, DaemonUnreachable

OK, WARN, FAIL = "ok", "warn", "fail"  # warn: works, but worth the fix; fail: something will not work

CALL_TIMEOUT_S = 5.0       # a daemon that takes longer to answer daemon.status counts as hung
COMMAND_TIMEOUT_S = 5.0    # `<agent> --version`, `systemctl --user ...`
DISK_FAIL_BYTES = 100 << 20
DISK_WARN_BYTES = 1 << 30
UNITS = ("bgd.socket", "bgd.service")


class Check:
    __slots__ = ("name", "status", "detail", "fix")

    def __init__(self, name: str, status: str, detail: str, fix: str | None = None):
        self.name, self.status, self.detail, self.fix = name, status, detail, fix

    def to_json(self) -> dict:
        return {"check": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}

    def __repr__(self) -> str:
        return f"Check({self.name!r}, {self.status!r}, {self.detail!r}, {self.fix!r})"


def bgctl_version() -> str | None:
    from importlib import metadata
    try:
        return metadata.version("bgagents")
    except metadata.PackageNotFoundError:
        return None


def run_all(socket_arg: str | None = None) -> list[Check]:
    socket_path = paths.socket_path(socket_arg)
    checks, status = check_daemon(socket_path, bgctl_version())
    checks += check_socket(socket_path)
    # A running daemon says which directories it uses; else they are where it would look.
    config_dir = Path(status["config_dir"]) if status else paths.config_dir()
    state_dir = Path(status["state_dir"]) if status else paths.state_dir()
    config, config_checks = check_config(config_dir, status)
    checks += config_checks
    checks += check_tasks(config_dir, config)
    if config is not None:
        checks += check_agents(config)
    else:
        checks.append(Check("agents", WARN, "not checked: which agents exist depends on config.toml",
                            "fix config.toml, then run bgctl doctor again"))
    checks += check_confinement(config_dir, config)
    checks += check_systemd()
    checks += check_disk(state_dir)
    return checks


# -- the daemon and its socket ------------------------------------------------------------------

def check_daemon(socket_path: Path, version: str | None) -> tuple[list[Check], dict | None]:
    """Is bgd answering on the socket, and is it the version installed beside bgctl?"""
    start = "start it with `bgctl daemon start` (any bgctl command starts it on demand)"
    if _systemd_will_start(socket_path):
        return [Check("daemon", OK, f"not running; systemd listens on {socket_path} and starts bgd on the first "
                                    "connection (bgd.socket)")], None
    try:
        client = Client.connect(socket_path, spawn=False)
    except DaemonUnreachable as exc:
        holder = _lock_holder(socket_path)
        if holder is not None:
            return [Check("daemon", FAIL, f"bgd (pid {holder}) holds {socket_path}'s lock but does not accept "
                                          "connections", f"see its log (bgd.log in the state dir, or `journalctl "
                                          f"--user -u bgd`); then `kill {holder}` and `bgctl daemon start`")], None
        detail = str(exc)
        if isinstance(exc.__context__, PermissionError) or "ermission denied" in detail:
            return [Check("daemon", FAIL, detail, f"{socket_path} is not yours to use: choose your own with "
                                                  "--socket or BGD_SOCKET, or fix its owner")], None
        import importlib.util
        if importlib.util.find_spec("bgd") is None:  # looks for it without importing it
            return [Check("daemon", FAIL, f"not running, and bgctl cannot start it: no bgd module for "
                                          f"{sys.executable}", "install bgagents into this environment "
                                                               "(pip install bgagents)")], None
        return [Check("daemon", WARN, f"not running (nothing answers on {socket_path})", start)], None
    try:
        client.sock.settimeout(CALL_TIMEOUT_S)
        status = client.call("daemon.status")
    except DaemonUnreachable as exc:
        return [Check("daemon", FAIL, f"bgd accepted a connection on {socket_path} but did not answer "
                                      f"daemon.status within {CALL_TIMEOUT_S:.0f} s ({exc})",
                      "see its log (bgd.log in the state dir, or `journalctl --user -u bgd`), then "
                      "`bgctl daemon restart`")], None
    except Exception as exc:  # an RpcError: something that is not bgd, or a very different one
        return [Check("daemon", FAIL, f"what answers on {socket_path} is not a bgd this bgctl understands: {exc}",
                      "stop it and run `bgctl daemon start`")], None
    finally:
        client.close()
    running = f"bgd {status.get('version')} running · pid {status.get('pid')} · up {status.get('uptime_s', 0):.0f}s"
    if version is not None and status.get("version") != version:
        return [Check("daemon", FAIL, f"{running}, but bgctl is {version}",
                      "restart it so the installed version runs: `bgctl daemon restart`")], status
    return [Check("daemon", OK, f"{running} (same version as bgctl)")], status


def _systemd_will_start(socket_path: Path) -> bool:
    """True when systemd's bgd.socket listens on `socket_path` while bgd.service is not running."""
    if not socket_path.exists() or shutil.which("systemctl") is None:
        return False
    socket_state = _systemctl("is-active", "bgd.socket")
    return socket_state == "active" and _systemctl("is-active", "bgd.service") != "active" and \
        str(socket_path) in (_systemctl("show", "bgd.socket", "--property=Listen", "--value") or "")


def _systemctl(*args: str) -> str | None:
    """`systemctl --user ARGS` stdout, stripped; None when systemctl cannot run or reach a user manager."""
    try:
        out = subprocess.run(["systemctl", "--user", *args], capture_output=True, text=True,
                             timeout=COMMAND_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if "Failed to connect to bus" in out.stderr or "Failed to connect to user" in out.stderr:
        return None
    return out.stdout.strip()


def _lock_holder(socket_path: Path) -> int | None:
    """The pid holding the daemon's lock file, read from /proc/locks (taking the lock, even for an
    instant, could make a bgd that is starting right then give up)."""
    lock = socket_path.with_name(socket_path.name + ".lock")
    try:
        info = os.stat(lock)
        with open("/proc/locks") as f:
            table = f.read().splitlines()
    except OSError:
        return None
    file_id = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    for line in table:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 2472 fe:00:2173203 0 EOF": pid, then major:minor:inode
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == file_id:
            try:
                pid = int(fields[4])
            except ValueError:
                continue
            if pid != os.getpid():
                return pid
    return None


def check_socket(socket_path: Path) -> list[Check]:
    """Only you may connect: the socket 0600 and yours, bgd's own runtime dir 0700."""
    problems, notes = [], []
    directory = socket_path.parent
    try:
        info = os.stat(directory)
    except FileNotFoundError:
        return [Check("socket", OK, f"{directory} does not exist yet; bgd makes it (mode 0700) when it starts")]
    except OSError as exc:
        return [Check("socket", FAIL, f"cannot look at {directory}: {exc.strerror}", "fix its permissions")]
    mode = stat.S_IMODE(info.st_mode)
    if directory.name == paths.APP and (mode & 0o077 or info.st_uid != os.getuid()):
        problems.append((f"{directory} is mode {mode:04o}" + ("" if info.st_uid == os.getuid() else ", not yours"),
                         f"chmod 700 {directory}"))
    else:
        notes.append(f"directory {mode:04o}")
    try:
        info = os.stat(socket_path)
    except FileNotFoundError:
        notes.append("no socket yet")
    except OSError as exc:
        problems.append((f"cannot look at {socket_path}: {exc.strerror}", "fix the directory's permissions"))
    else:
        mode = stat.S_IMODE(info.st_mode)
        if not stat.S_ISSOCK(info.st_mode):
            problems.append((f"{socket_path} is not a socket", f"remove it (rm {socket_path}) or choose another "
                                                               "path with --socket / BGD_SOCKET"))
        elif info.st_uid != os.getuid():
            problems.append((f"{socket_path} belongs to uid {info.st_uid}, not you",
                             "use your own socket (--socket / BGD_SOCKET)"))
        elif mode & 0o077:
            problems.append((f"{socket_path} is mode {mode:04o}: other users can connect and drive your agents",
                             f"chmod 600 {socket_path} (bgd sets 0600 when it starts: `bgctl daemon restart`)"))
        else:
            notes.append(f"socket {mode:04o}, yours")
    if problems:
        return [Check("socket", FAIL, detail, fix) for detail, fix in problems]
    return [Check("socket", OK, f"{socket_path}: " + ", ".join(notes))]


# -- the files ------------------------------------------------------------------------------------

def check_config(config_dir: Path, status: dict | None):
    """(the config to check agents and tasks against, None when it does not load; the checks)."""
    from bgcore.config import ConfigError, load_config

    path = config_dir / "config.toml"
    checks = []
    try:
        config = load_config(config_dir)
    except ConfigError as exc:
        fix = "correct that line" + ("; until then bgd keeps the last config that loaded" if status else
                                     "; bgd does not start with it")
        return None, [Check("config.toml", FAIL, str(exc), fix)]
    for warning in config.warnings:
        checks.append(Check("config.toml", WARN, warning, "remove or rename the key (it has no effect)"))
    if status and status.get("config_error"):
        checks.append(Check("config.toml", WARN, f"bgd still runs the config it had before an edit it refused "
                                                 f"({status['config_error']}); the file loads now",
                            "`bgctl rpc daemon.reload` (or `systemctl --user reload bgd`) applies it"))
    if not checks:
        detail = f"{path}: loads" if path.exists() else f"no {path}; every key has its default"
        checks.append(Check("config.toml", OK, detail))
    return config, checks


def check_tasks(config_dir: Path, config) -> list[Check]:
    from datetime import datetime

    from bgcore.tasks_file import load_tasks
    from bgcore.zones import local_zone

    path = config_dir / "tasks.toml"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return [Check("tasks.toml", OK, f"no {path} (no desktop tasks)")]
    except (OSError, UnicodeDecodeError) as exc:
        return [Check("tasks.toml", FAIL, f"{path}: cannot read: {exc}", "fix its permissions or encoding")]
    tz = local_zone()
    agents = set(config.agents) if config is not None else None
    tasks, errors = load_tasks(text, str(path), datetime.now(tz), tz, agents=agents)
    if errors:
        fix = ("correct that line (bgls shows it in the editor); the other tasks run, and a broken task keeps "
               "its last valid definition")
        return [Check("tasks.toml", FAIL, str(error), fix) for error in errors]
    return [Check("tasks.toml", OK, f"{path}: {len(tasks)} task{'' if len(tasks) == 1 else 's'}, no errors")]


# -- routine confinement ------------------------------------------------------------------------

def check_confinement(config_dir: Path, config) -> list[Check]:
    """Whether routines with a closed network can run here (bgcore.confinement.probe: a test sandbox
    with the configured bubblewrap, tinyproxy and bridge, named in the line). A failure matters only to routines that ask
    for one: a warning otherwise, naming which ones would be refused when some do."""
    from bgcore.confinement import probe

    env = getattr(config, "environment", None)
    result = probe(env.bwrap, env.proxy_command[0], env.socat, bridge=env.bridge) if env is not None else probe()
    if result.ok:
        return [Check("confinement", OK, result.reason)]
    closed = _closed_routines(config_dir, config)
    detail = f"{result.reason}; routines with network other than \"full\" are refused here (sandbox_unavailable)"
    if closed:
        return [Check("confinement", FAIL, detail + f": {', '.join(closed)}", result.fix)]
    return [Check("confinement", WARN, detail + " (none asks for one now)", result.fix)]


def _closed_routines(config_dir: Path, config) -> list[str]:
    from datetime import datetime

    from bgcore.routines_file import load_routines
    from bgcore.zones import local_zone

    path = config_dir / "routines.toml"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    tz = local_zone()
    routines, _ = load_routines(text, str(path), datetime.now(tz), tz,
                                agents=set(config.agents) if config is not None else None)
    return sorted(name for name, routine in routines.items() if routine.network != "full")


# -- the agents ---------------------------------------------------------------------------------

def check_agents(config) -> list[Check]:
    from bgcore.config import DEFAULT_AGENTS

    checks = []
    for name, agent in sorted(config.agents.items()):
        # The built-in claude that nobody configured or chose matters less when it is missing.
        optional = DEFAULT_AGENTS.get(name) is agent and config.default_agent != name
        checks.append(check_agent(agent, optional=optional))
    return checks


def check_agent(agent, *, optional: bool = False) -> Check:
    label = f"agent {agent.name}"
    program = agent.command[0]
    search = agent.env.get("PATH") or os.environ.get("PATH", os.defpath)
    found = shutil.which(program, path=search) if os.sep not in program else (
        program if os.path.isfile(program) and os.access(program, os.X_OK) else None)
    if found is None:
        where = "on PATH" if os.sep not in program else "(no such executable)"
        install = getattr(agent, "install", "")
        fix = (f"install {program}" + (f" ({install})" if install else "")
               + f", or point [agents.{agent.name}] command at it in config.toml")
        if optional:  # a ready-made agent nobody chose: listed, not a problem
            return Check(label, OK, f"{program} not installed (optional" + (f"; {install}" if install else "") + ")")
        return Check(label, FAIL, f"{program} not found {where}", fix)
    version = _version_of(found)
    return Check(label, OK, f"{found}" + (f" · {version}" if version else " · `--version` gave no version"))


def _version_of(program: str) -> str | None:
    """The first line `program --version` prints, within a short timeout; None when it will not say."""
    try:
        out = subprocess.run([program, "--version"], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                             stdin=subprocess.DEVNULL, errors="replace")
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    lines = [line.strip() for line in (out.stdout or out.stderr).splitlines() if line.strip()]
    return lines[0][:100] if lines else None


# -- systemd and the disk -----------------------------------------------------------------------

def unit_dirs() -> list[Path]:
    """Where systemd looks for user units, the user's own first."""
    home = Path(os.path.expanduser("~"))
    config_home = Path(os.environ.get("XDG_CONFIG_HOME", "").strip() or home / ".config")
    data_home = Path(os.environ.get("XDG_DATA_HOME", "").strip() or home / ".local/share")
    return [config_home / "systemd/user", data_home / "systemd/user", Path("/etc/systemd/user"),
            Path("/usr/local/lib/systemd/user"), Path("/usr/lib/systemd/user")]


def check_systemd() -> list[Check]:
    found = {unit: next((d / unit for d in unit_dirs() if (d / unit).is_file()), None) for unit in UNITS}
    if not any(found.values()):
        return [Check("systemd", OK, "user units not installed (optional: bgctl starts bgd on demand; README, "
                                     "\"Running under systemd\", has them start it at login)")]
    missing = [unit for unit, path in found.items() if path is None]
    if missing:
        there = next(path for path in found.values() if path)
        return [Check("systemd", FAIL, f"{', '.join(missing)} missing beside {there}",
                      f"copy contrib/systemd/{missing[0]} to {there.parent} and `systemctl --user daemon-reload`")]
    exec_start = _exec_start(found["bgd.service"])
    if exec_start is not None and not (os.path.isfile(exec_start) and os.access(exec_start, os.X_OK)):
        bgd = shutil.which("bgd")
        return [Check("systemd", FAIL, f"{found['bgd.service']}: ExecStart {exec_start} does not exist",
                      "`systemctl --user edit bgd.service` and set ExecStart=" + (bgd or "the path of bgd"))]
    enabled = _systemctl("is-enabled", "bgd.socket")
    where = f"installed in {found['bgd.socket'].parent}"
    if enabled is None:
        return [Check("systemd", OK, f"{where} (systemctl --user cannot reach a user manager here)")]
    if enabled != "enabled":
        return [Check("systemd", WARN, f"{where}, bgd.socket {enabled or 'not enabled'}",
                      "systemctl --user enable --now bgd.socket")]
    return [Check("systemd", OK, f"{where}, bgd.socket enabled")]


def _exec_start(unit: Path) -> str | None:
    """The program of a unit's last ExecStart= (an override empties and sets it again), %h expanded."""
    program = None
    try:
        lines = unit.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        key, sep, value = line.strip().partition("=")
        if sep and key.strip() == "ExecStart":
            words = value.split()
            program = words[0].lstrip("-@:+!") if words else None
    if program is None:
        return None
    return program.replace("%h", os.path.expanduser("~"))


def check_disk(state_dir: Path) -> list[Check]:
    existing = state_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not os.access(existing, os.W_OK):
        return [Check("disk", FAIL, f"{existing} is not writable: bgd cannot keep its state in {state_dir}",
                      "fix its owner or permissions, or set BGD_STATE_DIR to a directory of yours")]
    free = shutil.disk_usage(existing).free
    return [disk_verdict(state_dir, free)]


def disk_verdict(state_dir: Path, free: int) -> Check:
    detail = f"{_size(free)} free for {state_dir}"
    if free < DISK_FAIL_BYTES:
        return Check("disk", FAIL, detail + ": SQLite writes will start failing",
                     "free some space on that filesystem (old transcripts: `bgctl rm ID`)")
    if free < DISK_WARN_BYTES:
        return Check("disk", WARN, detail, "free some space on that filesystem soon")
    return Check("disk", OK, detail)


def _size(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"
