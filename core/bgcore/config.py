"""config.toml (SPEC §5.3): agents and defaults, every key defaulted.

Loading is a pure function of the file's text, so a broken edit is reported
with its file and line and the daemon keeps the last good config.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .network_policy import domain_problem

# The agent backends the daemon has (bgd/agents/base.py BACKENDS maps each to its module).
BACKENDS = ("claude", "command", "acp")
PERMISSION_MODES = ("default", "acceptEdits", "plan", "bypassPermissions", "dontAsk", "auto")


class ConfigError(ValueError):
    """A config file that cannot be used: message names the file and line."""


@dataclass(frozen=True)
class AgentConfig:
    name: str
    backend: str                 # one of BACKENDS
    command: tuple[str, ...]     # argv prefix; for "command" may hold a "{prompt}" placeholder
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    install: str = ""                # how to install the binary, named when it is not found
    auth_method: str | None = None   # acp: the authenticate method, used only when the agent demands one
    start_timeout_s: float = 30.0    # acp: how long the agent may take to answer initialize
    # In a confined routine run (docs/environments.md): hosts it needs for its model beyond the
    # built-in ones, and files or directories (under ~ when relative) it keeps its own state in.
    network_hosts: tuple[str, ...] = ()
    state_paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class EnvironmentConfig:
    """[environment]: how routine environments are made (docs/environments.md)."""
    bwrap: str = "bwrap"                          # bubblewrap, for confined runs
    proxy_command: tuple[str, ...] = ("tinyproxy",)  # the filtering proxy (run with -d -c FILE)
    bridge: str = "auto"                          # between the sandbox and the proxy: auto | systemd-socket-proxyd | socat
    socat: str = "socat"                          # the bridge where systemd-socket-proxyd is missing (or chosen)
    proxy_port: int = 3128                        # where HTTP_PROXY points inside the sandbox
    setup_timeout_s: float = 600.0                # a routine's setup script, unless it sets its own
    setup_cache_days: float = 7.0                 # a cached setup older than this is built again


@dataclass(frozen=True)
class HttpConfig:
    """[http]: the daemon's HTTP listener (docs/http.md)."""
    listen: str = "127.0.0.1:7421"
    host: str = "127.0.0.1"          # parsed from listen (IPv6 without brackets)
    port: int = 7421
    enabled: bool = False            # listen even when no feature needs it
    allow_remote: bool = False       # a non-loopback listen address needs this and TLS
    tls_cert: str | None = None      # as written; relative paths are relative to the config dir
    tls_key: str | None = None
    max_body_bytes: int = 1 << 20    # per request body, unless a route sets its own
    body_timeout_s: float = 30.0     # a request body must have arrived in full within this
    keep_alive_timeout_s: float = 5.0  # an idle connection, or one whose request head is incomplete, is closed

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


@dataclass(frozen=True)
class ClusterConfig:
    """`[cluster]` (SPEC §14): where the Temporal server is and how runs on workers are watched."""

    temporal: str                    # host:port of the Temporal frontend
    namespace: str = "default"
    task_queue: str = "bgagents"
    heartbeat_s: float = 10.0        # how often a run's activity heartbeats
    key_file: str = "cluster.key"    # the payloads' encryption key (bgd.cluster.codec); relative to the config dir

    @property
    def heartbeat_timeout_s(self) -> float:
        """A run whose worker has not heartbeated for this long is lost (three missed heartbeats)."""
        return self.heartbeat_s * 3


@dataclass(frozen=True)
class RoutinesConfig:
    """[routines] and [github]: what all routines share (SPEC §8, docs/routines.md)."""
    max_concurrent_runs: int = 4        # runs at once; the rest are queued
    keep_workspaces_days: float = 7.0   # an ended run's workspace is deleted after this (its session stays)
    stagger: bool = True                # schedule fires offset by up to 5 minutes per routine (off in tests)
    webhook_secret_file: str | None = None  # [github]: the webhook secret; relative to the config dir


@dataclass(frozen=True)
class Config:
    default_agent: str = "claude"
    permission_mode: str = "default"
    model: str | None = None
    stop_grace_s: float = 5.0
    idle_timeout_s: float = 600.0
    event_retention: int = 10_000
    max_frame_bytes: int = 1 << 20
    loop_jitter: bool = True
    task_jitter: bool = True
    max_concurrent_runs: int = 4
    web_enabled: bool = True
    keep_worktrees_days: float = 7.0
    http: HttpConfig = field(default_factory=HttpConfig)
    routines: RoutinesConfig = field(default_factory=RoutinesConfig)
    environment: EnvironmentConfig = field(default_factory=EnvironmentConfig)
    agents: dict[str, AgentConfig] = field(default_factory=dict)
    cluster: ClusterConfig | None = None
    warnings: tuple[str, ...] = ()

    def agent(self, name: str | None) -> AgentConfig | None:
        return self.agents.get(name or self.default_agent)


def _acp(name: str, command: tuple[str, ...], install: str) -> AgentConfig:
    return AgentConfig(name, "acp", command, install=install)


# Ready-made agents (SPEC §5.5), each overridable under [agents.NAME].
DEFAULT_AGENTS = {
    "claude": AgentConfig("claude", "claude", ("claude",), install="Claude Code: npm install -g @anthropic-ai/claude-code"),
    "gemini": _acp("gemini", ("gemini", "--acp"), "Gemini CLI: npm install -g @google/gemini-cli"),
    "qwen": _acp("qwen", ("qwen", "--acp"), "Qwen Code: npm install -g @qwen-code/qwen-code"),
    "opencode": _acp("opencode", ("opencode", "acp"), "OpenCode: npm install -g opencode-ai"),
    "codex": _acp("codex", ("codex-acp",), "Codex's ACP adapter: npm install -g @zed-industries/codex-acp"),
    "claude-acp": _acp("claude-acp", ("claude-code-acp",),
                       "Claude Code's ACP adapter: npm install -g @zed-industries/claude-code-acp"),
    "goose": _acp("goose", ("goose", "acp"), "goose, Block's CLI: brew install block-goose-cli, "
                                            "or the download_cli.sh script from its releases"),
}

_TOP_KEYS: dict[str, type | tuple[type, ...]] = {
    "default_agent": str,
    "permission_mode": str,
    "model": str,
    "stop_grace_s": (int, float),
    "idle_timeout_s": (int, float),
    "event_retention": int,
    "max_frame_bytes": int,
    "agents": dict,
    "loops": dict,
    "scheduler": dict,
    "web": dict,
    "tasks": dict,
    "http": dict,
    "routines": dict,
    "github": dict,
    "cluster": dict,
    "environment": dict,
}
_KIND_NAMES = {str: "a string", (int, float): "a number", int: "an integer", dict: "a table",
               list: "a list", (str, list): "a list of strings", bool: "true or false"}
_CLUSTER_KEYS = {"temporal": str, "namespace": str, "task_queue": str, "heartbeat_s": (int, float), "key_file": str}
_AGENT_KEYS = {"backend": str, "command": (str, list), "args": list, "env": dict, "install": str,
               "auth_method": str, "start_timeout_s": (int, float), "network_hosts": list, "state_paths": list}
_HTTP_KEYS: dict[str, type | tuple[type, ...]] = {
    "listen": str, "enabled": bool, "allow_remote": bool, "tls_cert": str, "tls_key": str,
    "max_body_bytes": int, "body_timeout_s": (int, float), "keep_alive_timeout_s": (int, float),
}


def parse_config(text: str, path: str = "config.toml") -> Config:
    """Parse config.toml text; raise ConfigError naming file and line."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    warnings: list[str] = []

    def where(key: str) -> str:
        line = _line_of(text, key)
        return f"{path}:{line}" if line else path

    def check_type(key: str, value: Any, kind: type | tuple[type, ...], label: str) -> None:
        if isinstance(value, bool) and kind in ((int, float), int):
            raise ConfigError(f"{where(key)}: {label} must be a number, not {value!r}")
        if not isinstance(value, kind):
            raise ConfigError(f"{where(key)}: {label} must be {_KIND_NAMES.get(kind, 'something else')}, "
                              f"not {type(value).__name__}")

    for key, value in raw.items():
        if key not in _TOP_KEYS:
            hint = difflib.get_close_matches(key, list(_TOP_KEYS), n=1)
            warnings.append(f"{where(key)}: unknown key {key!r}"
                            + (f" (did you mean {hint[0]!r}?)" if hint else ""))
            continue
        check_type(key, value, _TOP_KEYS[key], key)

    agents = dict(DEFAULT_AGENTS)
    for name, spec in raw.get("agents", {}).items():
        if not isinstance(spec, dict):
            raise ConfigError(f"{where(name)}: [agents.{name}] must be a table")
        for key, value in spec.items():
            if key not in _AGENT_KEYS:
                warnings.append(f"{where(key)}: unknown key {key!r} in [agents.{name}]")
                continue
            check_type(key, value, _AGENT_KEYS[key], f"agents.{name}.{key}")
        ready = DEFAULT_AGENTS.get(name)
        backend = spec.get("backend", ready.backend if ready else "command")
        if backend not in BACKENDS:
            raise ConfigError(f"{where('backend')}: agents.{name}.backend must be one of "
                              + ", ".join(f'"{b}"' for b in BACKENDS))
        ready = ready if ready is not None and ready.backend == backend else None
        command = spec.get("command", list(ready.command) if ready else ["claude"] if backend == "claude" else None)
        if command is None:
            raise ConfigError(f"{where(name)}: [agents.{name}] needs command = [\"program\", \"arg\", ...]")
        if isinstance(command, str):
            command = [command]
        if not command or not all(isinstance(c, str) and c for c in command):
            raise ConfigError(f"{where('command')}: agents.{name}.command must be a non-empty list of strings")
        args = spec.get("args", [])
        if not all(isinstance(a, str) for a in args):
            raise ConfigError(f"{where('args')}: agents.{name}.args must be a list of strings")
        env = spec.get("env", {})
        if not all(isinstance(v, str) for v in env.values()):
            raise ConfigError(f"{where('env')}: agents.{name}.env values must be strings")
        timeout = spec.get("start_timeout_s", 30.0)
        if timeout <= 0:
            raise ConfigError(f"{where('start_timeout_s')}: agents.{name}.start_timeout_s must be positive")
        hosts = spec.get("network_hosts", [])
        problem = next((p for p in map(domain_problem, hosts) if p), None)
        if problem:
            raise ConfigError(f"{where('network_hosts')}: agents.{name}.network_hosts: {problem}")
        state_paths = spec.get("state_paths", [])
        if not all(isinstance(p, str) and p.strip() for p in state_paths):
            raise ConfigError(f"{where('state_paths')}: agents.{name}.state_paths must be a list of paths")
        agents[name] = AgentConfig(name, backend, tuple(command), tuple(args), dict(env),
                                   install=spec.get("install", ready.install if ready else ""),
                                   auth_method=spec.get("auth_method"), start_timeout_s=float(timeout),
                                   network_hosts=tuple(h.strip().lower() for h in hosts),
                                   state_paths=tuple(state_paths))

    default_agent = raw.get("default_agent", "claude")
    if default_agent not in agents:
        raise ConfigError(f"{where('default_agent')}: default_agent {default_agent!r} is not defined; "
                          f"known agents: {', '.join(sorted(agents))}")
    mode = raw.get("permission_mode", "default")
    if mode not in PERMISSION_MODES:
        raise ConfigError(f"{where('permission_mode')}: permission_mode must be one of {', '.join(PERMISSION_MODES)}")
    for key in ("stop_grace_s", "idle_timeout_s", "event_retention", "max_frame_bytes"):
        if key in raw and raw[key] <= 0:
            raise ConfigError(f"{where(key)}: {key} must be positive")

    loops = raw.get("loops", {})
    scheduler = raw.get("scheduler", {})
    max_runs = scheduler.get("max_concurrent_runs", 4)
    if not isinstance(max_runs, int) or isinstance(max_runs, bool) or max_runs < 1:
        raise ConfigError(f"{where('max_concurrent_runs')}: scheduler.max_concurrent_runs must be a positive integer")
    web = raw.get("web", {})
    for key in web:
        if key != "enabled":
            warnings.append(f"{where(key)}: unknown key {key!r} in [web] (it has only 'enabled')")
    web_enabled = web.get("enabled", True)
    if not isinstance(web_enabled, bool):
        raise ConfigError(f"{where('enabled')}: web.enabled must be true or false")
    tasks = raw.get("tasks", {})
    keep_days = tasks.get("keep_worktrees_days", 7)
    if not isinstance(keep_days, (int, float)) or isinstance(keep_days, bool) or keep_days < 0:
        raise ConfigError(f"{where('keep_worktrees_days')}: tasks.keep_worktrees_days must be a number of days, 0 or more")
    http = _parse_http(raw.get("http", {}), where, check_type, warnings)
    cluster = _parse_cluster(raw.get("cluster"), where, check_type, warnings)
    routines = _parse_routines(raw.get("routines", {}), raw.get("github", {}), where, check_type, warnings)
    environment = _parse_environment(raw.get("environment", {}), where, check_type, warnings)
    return Config(
        default_agent=default_agent,
        permission_mode=mode,
        model=raw.get("model"),
        stop_grace_s=float(raw.get("stop_grace_s", 5.0)),
        idle_timeout_s=float(raw.get("idle_timeout_s", 600.0)),
        event_retention=int(raw.get("event_retention", 10_000)),
        max_frame_bytes=int(raw.get("max_frame_bytes", 1 << 20)),
        loop_jitter=bool(loops.get("jitter", True)),
        task_jitter=bool(scheduler.get("jitter", True)),
        max_concurrent_runs=max_runs,
        web_enabled=web_enabled,
        keep_worktrees_days=float(keep_days),
        http=http,
        routines=routines,
        environment=environment,
        agents=agents,
        cluster=cluster,
        warnings=tuple(warnings),
    )


def _parse_cluster(spec: dict | None, where, check_type, warnings: list[str]) -> ClusterConfig | None:
    if spec is None:
        return None
    for key, value in spec.items():
        if key not in _CLUSTER_KEYS:
            hint = difflib.get_close_matches(key, list(_CLUSTER_KEYS), n=1)
            warnings.append(f"{where(key)}: unknown key {key!r} in [cluster]"
                            + (f" (did you mean {hint[0]!r}?)" if hint else ""))
            continue
        check_type(key, value, _CLUSTER_KEYS[key], f"cluster.{key}")
    temporal = spec.get("temporal")
    if not temporal:
        raise ConfigError(f"{where('cluster')}: [cluster] needs temporal = \"host:port\" (the Temporal server, "
                          "e.g. \"127.0.0.1:7233\")")
    host, _, port = temporal.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where('temporal')}: cluster.temporal must be host:port, not {temporal!r}")
    for key in ("namespace", "task_queue", "key_file"):
        if key in spec and not spec[key].strip():
            raise ConfigError(f"{where(key)}: cluster.{key} must not be empty")
    heartbeat = spec.get("heartbeat_s", 10)
    if heartbeat < 0.5:
        # Below it Temporal's one-second floor on workflow tasks could outlast the heartbeat timeout.
        raise ConfigError(f"{where('heartbeat_s')}: cluster.heartbeat_s must be at least 0.5 (seconds)")
    return ClusterConfig(temporal=temporal, namespace=spec.get("namespace", "default"),
                         task_queue=spec.get("task_queue", "bgagents"), heartbeat_s=float(heartbeat),
                         key_file=spec.get("key_file", ClusterConfig.key_file))


def _parse_http(raw: dict, where, check_type, warnings: list[str]) -> HttpConfig:
    for key, value in raw.items():
        if key not in _HTTP_KEYS:
            hint = difflib.get_close_matches(key, list(_HTTP_KEYS), n=1)
            warnings.append(f"{where(key)}: unknown key {key!r} in [http]"
                            + (f" (did you mean {hint[0]!r}?)" if hint else ""))
            continue
        check_type(key, value, _HTTP_KEYS[key], f"http.{key}")
    listen = raw.get("listen", HttpConfig.listen)
    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        raise ConfigError(f"{where('listen')}: http.listen {exc}") from None
    for key in ("max_body_bytes", "body_timeout_s", "keep_alive_timeout_s"):
        if key in raw and raw[key] <= 0:
            raise ConfigError(f"{where(key)}: http.{key} must be positive")
    cert, key_file = raw.get("tls_cert"), raw.get("tls_key")
    if (cert is None) != (key_file is None):
        raise ConfigError(f"{where('tls_cert' if cert is not None else 'tls_key')}: "
                          "http.tls_cert and http.tls_key go together: set both or neither")
    return HttpConfig(
        listen=listen, host=host, port=port,
        enabled=raw.get("enabled", False), allow_remote=raw.get("allow_remote", False),
        tls_cert=cert, tls_key=key_file,
        max_body_bytes=int(raw.get("max_body_bytes", HttpConfig.max_body_bytes)),
        body_timeout_s=float(raw.get("body_timeout_s", HttpConfig.body_timeout_s)),
        keep_alive_timeout_s=float(raw.get("keep_alive_timeout_s", HttpConfig.keep_alive_timeout_s)),
    )


_ROUTINES_KEYS: dict[str, type | tuple[type, ...]] = {
    "max_concurrent_runs": int, "keep_workspaces_days": (int, float), "stagger": bool}
_GITHUB_KEYS: dict[str, type | tuple[type, ...]] = {"webhook_secret_file": str}


def _parse_routines(raw: dict, github: dict, where, check_type, warnings: list[str]) -> RoutinesConfig:
    for table, keys, values in (("routines", _ROUTINES_KEYS, raw), ("github", _GITHUB_KEYS, github)):
        for key, value in values.items():
            if key not in keys:
                hint = difflib.get_close_matches(key, list(keys), n=1)
                warnings.append(f"{where(key)}: unknown key {key!r} in [{table}]"
                                + (f" (did you mean {hint[0]!r}?)" if hint else ""))
                continue
            check_type(key, value, keys[key], f"{table}.{key}")
    runs = raw.get("max_concurrent_runs", RoutinesConfig.max_concurrent_runs)
    if runs < 1:
        raise ConfigError(f"{where('max_concurrent_runs')}: routines.max_concurrent_runs must be at least 1")
    keep = raw.get("keep_workspaces_days", RoutinesConfig.keep_workspaces_days)
    if keep < 0:
        raise ConfigError(f"{where('keep_workspaces_days')}: routines.keep_workspaces_days must be 0 or more "
                          "(0: delete a run's workspace as soon as it ends)")
    secret = github.get("webhook_secret_file")
    if secret is not None and not secret.strip():
        raise ConfigError(f"{where('webhook_secret_file')}: github.webhook_secret_file must be a path")
    return RoutinesConfig(max_concurrent_runs=runs, keep_workspaces_days=float(keep),
                          stagger=raw.get("stagger", True), webhook_secret_file=secret)


BRIDGES = ("auto", "systemd-socket-proxyd", "socat")   # [environment] bridge (bgcore.confinement.find_bridge)
_ENVIRONMENT_KEYS: dict[str, type | tuple[type, ...]] = {
    "bwrap": str, "proxy_command": (str, list), "bridge": str, "socat": str, "proxy_port": int,
    "setup_timeout_s": (int, float), "setup_cache_days": (int, float)}


def _parse_environment(raw: dict, where, check_type, warnings: list[str]) -> EnvironmentConfig:
    for key, value in raw.items():
        if key not in _ENVIRONMENT_KEYS:
            hint = difflib.get_close_matches(key, list(_ENVIRONMENT_KEYS), n=1)
            warnings.append(f"{where(key)}: unknown key {key!r} in [environment]"
                            + (f" (did you mean {hint[0]!r}?)" if hint else ""))
            continue
        check_type(key, value, _ENVIRONMENT_KEYS[key], f"environment.{key}")
    d = EnvironmentConfig()
    command = raw.get("proxy_command", list(d.proxy_command))
    if isinstance(command, str):
        command = [command]
    if not command or not all(isinstance(c, str) and c for c in command):
        raise ConfigError(f"{where('proxy_command')}: environment.proxy_command must be a non-empty list of strings")
    for key in ("bwrap", "socat"):
        if key in raw and not raw[key].strip():
            raise ConfigError(f"{where(key)}: environment.{key} must be a program name or path")
    bridge = raw.get("bridge", d.bridge)
    if bridge not in BRIDGES:
        raise ConfigError(f"{where('bridge')}: environment.bridge must be one of " + ", ".join(map(repr, BRIDGES))
                          + " (\"auto\": systemd-socket-proxyd where installed, else socat)")
    port = raw.get("proxy_port", d.proxy_port)
    if not 1 <= port <= 65535:
        raise ConfigError(f"{where('proxy_port')}: environment.proxy_port must be a TCP port (1-65535)")
    timeout = raw.get("setup_timeout_s", d.setup_timeout_s)
    if timeout <= 0:
        raise ConfigError(f"{where('setup_timeout_s')}: environment.setup_timeout_s must be a number of seconds above 0")
    days = raw.get("setup_cache_days", d.setup_cache_days)
    if days < 0:
        raise ConfigError(f"{where('setup_cache_days')}: environment.setup_cache_days must be 0 or more "
                          "(0: run the setup script for every run)")
    return EnvironmentConfig(bwrap=raw.get("bwrap", d.bwrap), proxy_command=tuple(command), bridge=bridge,
                             socat=raw.get("socat", d.socat), proxy_port=port, setup_timeout_s=float(timeout),
                             setup_cache_days=float(days))


def parse_listen(text: str) -> tuple[str, int]:
    """"host:port" or "[v6]:port" -> (host, port); ValueError says what is wrong."""
    example = 'must be "host:port", e.g. "127.0.0.1:7421" or "[::1]:7421"'
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":") or ":" not in host:
            raise ValueError(f"{text!r} {example}")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"{text!r} {example}")
        if ":" in host:
            raise ValueError(f"{text!r}: put an IPv6 address in brackets, e.g. \"[::1]:7421\"")
    if not host or any(c.isspace() for c in host):
        raise ValueError(f"{text!r} {example} (0.0.0.0 for every IPv4 interface)")
    if not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"{text!r}: the port must be a number from 0 to 65535 (0: any free port)")
    return host, int(port_text)


def load_config(config_dir: Path) -> Config:
    path = config_dir / "config.toml"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return parse_config("", str(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    return parse_config(text, str(path))


def _line_of(text: str, key: str) -> int | None:
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith(key) and stripped[len(key):].lstrip().startswith("="):
            return number
        if stripped.startswith("[") and stripped.rstrip("]").endswith("." + key):
            return number
    return None
