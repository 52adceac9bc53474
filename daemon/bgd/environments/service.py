"""Routine environments in the daemon (SPEC §8): a run's preparation (its setup script, cached, and
its workspace), and the sandbox its agent starts in, every time it starts.

The routines' runner calls `prepare` for each run and tells the service, through `lookup`, which
run a session belongs to; the session manager calls `wrap` (its `wrap_launch` hook) before it
starts any agent process. A run with network "full" and no setup script is left as it is.

What the run record gets (beside routines' own fields):
    cache        "hit" | "built" | "rebuilt" (null without a setup script), and cache_reason
    prepare_s    seconds from the start of preparation to a workspace ready for the agent
    setup        the build's exit code, duration, log path (and its last lines when it failed)
    blocked      {host: refused requests} of the run's proxies (its setup's and its agent's)
    environment  {network, confined, root, grant}: what a later start of its session needs
"""

from __future__ import annotations

import logging
import os
import shutil
import socket as stdsocket
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import trio

from bgcore import confinement
from bgcore.network_policy import allowed_names, describe, is_confined, provider_hosts
from bgcore.routines_file import clone_name
from bgd.agents.mcp_server import DAEMON_METHODS
from bgd.environments.proxy import FilteringProxy, ProxyError
from bgd.environments.sandbox import DAEMON_SOCKET, PROXY_SOCKET, Sandbox, bwrap_argv, proxy_env
from bgd.environments.setup import (RefreshFailed, ScriptResult, SetupCache, SetupFailed, check_syntax,
                                    run_script)

log = logging.getLogger("bgd.environments")

PROBE_TTL_S = 60.0
REPORT_DELAY_S = 0.5
# What a confined run's MCP server may ask of the daemon (its session's own loops, itself, its
# outcome), and the parameter that must name its session.
# A confined run's MCP tools: the daemon's, but no task.edit (a routine's run has no desktop task).
SCOPED_METHODS = {method: key for method, key in DAEMON_METHODS.items() if method != "task.edit"}


class SandboxUnavailable(Exception):
    """A routine asks for confinement this machine cannot give; the message has the reason and fix."""


@dataclass
class RunEnv:
    run_id: str
    routine: str
    network: str | tuple[str, ...]
    run_dir: Path
    root: Path | None           # a run with a setup script sees its workspace here (the template's path)
    grant: tuple[str, ...]      # absolute paths it may read

    @property
    def confined(self) -> bool:
        return is_confined(self.network)

    def to_json(self) -> dict:
        return {"network": list(self.network) if isinstance(self.network, tuple) else self.network,
                "confined": self.confined, "root": str(self.root) if self.root else None, "grant": list(self.grant)}

    @classmethod
    def from_record(cls, rec: dict) -> "RunEnv | None":
        env = rec.get("environment")
        if not isinstance(env, dict) or not rec.get("workspace"):
            return None
        network = env.get("network", "full")
        return cls(rec["id"], rec["routine"], tuple(network) if isinstance(network, list) else network,
                   Path(rec["workspace"]), Path(env["root"]) if env.get("root") else None, tuple(env.get("grant") or ()))


class Environments:
    def __init__(self, *, state_dir: Path, config_dir: Path, socket_path: Path, config: Callable[[], Any],
                 daemon: Any = None, probe: Callable[..., confinement.Probe] = confinement.probe,
                 now: Callable[[], float] = time.time):
        self.state_dir = Path(state_dir)
        self.config_dir = Path(config_dir)
        self.socket_path = Path(socket_path)
        # Beside bgd's socket (short paths: a Unix socket's is at most 107 bytes; private to the user).
        self.runtime = self.socket_path.parent / "env"
        self.config = config
        self.daemon = daemon
        self.probe = probe
        self.cache = SetupCache(self.state_dir / "setup-cache", now=now)
        self.lookup: Callable[[str], dict | None] = lambda session_id: None   # session id -> its run's record
        self.lookup_run: Callable[[str], dict | None] = lambda run_id: None   # run id -> its record
        self.report: Callable[[str, dict[str, int]], None] = lambda run_id, blocked: None
        # Refused requests of the runs that have a proxy up (from their record's count on): a run's
        # counter goes once its last proxy stops, after its count is in the record.
        self.blocked: dict[str, Counter[str]] = {}
        self._live: Counter[str] = Counter()
        self._pending_reports: set[str] = set()
        self.proxies: set[FilteringProxy] = set()   # running ones, stopped with the service at the latest
        self._probe: tuple[float, tuple, confinement.Probe] | None = None
        self._probe_lock = trio.Lock()
        self.nursery: trio.Nursery | None = None

    async def run(self, daemon=None, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The service: holds the proxies and scoped sockets of live sandboxes."""
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                for proxy in list(self.proxies):
                    await proxy.close()

    # -- can this machine confine a run? -------------------------------------------------

    async def check(self, *, fresh: bool = False) -> confinement.Probe:
        """The confinement probe (bgcore.confinement.probe) for the configured programs; kept a
        minute, so a machine that changes is seen soon and a busy one does not probe per run."""
        env = self.config().environment
        key = (env.bwrap, env.proxy_command[0], env.socat, env.bridge)
        async with self._probe_lock:
            cached = self._probe
            if not fresh and cached is not None and cached[1] == key and time.monotonic() - cached[0] < PROBE_TTL_S:
                return cached[2]
            result = await trio.to_thread.run_sync(
                lambda: self.probe(env.bwrap, env.proxy_command[0], env.socat, bridge=env.bridge))
            self._probe = (time.monotonic(), key, result)
            return result

    async def _refuse_unless_confinable(self, routine) -> None:
        probe = await self.check()
        if not probe.ok:
            raise SandboxUnavailable(f"network = {describe(routine.network)} needs a sandbox, and this machine "
                                     f"cannot make one: {probe.reason}; the run was not started (never run open)"
                                     + (f"; fix: {probe.fix}" if probe.fix else ""))

    # -- a run's preparation ---------------------------------------------------------------

    async def prepare(self, rec: dict, routine, run_dir: Path, values: dict[str, str], mask: Callable[[str], str], *,
                      rebuild: bool, prepare_workspace: Callable[..., Awaitable[list]],
                      make_clone: Callable[..., Any]) -> list:
        """Make the run's workspace: a copy of its routine's cached setup (built first when needed)
        or fresh clones. Raises SandboxUnavailable, SetupFailed, RefreshFailed, or what
        `prepare_workspace` raises (routines' CloneFailed)."""
        started = time.monotonic()
        try:
            confined = is_confined(routine.network)
            where = getattr(routine, "where", "local")
            if confined and where != "local":
                raise SandboxUnavailable(f"network = {describe(routine.network)} is enforced only for runs on this "
                                         f"machine, and this routine runs on where = {where!r} (whose workers do "
                                         "not confine their runs); the run was not started (never run open); "
                                         "set where = \"local\" or network = \"full\"")
            if confined:
                await self._refuse_unless_confinable(routine)
            grant = self._grants(routine)
            script = self._script(routine)
            env = RunEnv(rec["id"], routine.name, routine.network, run_dir, None, grant)
            rec["cache"] = None
            if script is None:
                clones = await prepare_workspace(run_dir, routine.repos, routine.push)
            else:
                problem = await check_syntax(script)
                if problem:
                    raise SetupFailed(f"the setup script is not valid bash (bash -n): {problem}")
                settings = self.config().environment
                timeout = routine.setup_timeout_s or settings.setup_timeout_s

                async def build(template: Path, tmp: Path) -> ScriptResult:
                    return await self._run_setup(env, routine, script, values, template, tmp, timeout, mask)

                try:
                    prepared = await self.cache.prepare(
                        routine.name, script=script, repos=routine.repos, push=routine.push, network=routine.network,
                        run_dir=run_dir, rebuild=rebuild, max_age_s=settings.setup_cache_days * 86400,
                        prepare_workspace=prepare_workspace, make_clone=make_clone, build=build, mask=mask)
                except SetupFailed as exc:
                    rec["cache"] = exc.cache
                    rec["setup"] = {"exit_code": exc.exit_code, "duration_s": exc.duration_s, "last_lines": exc.lines,
                                    "log": str(self.cache.slot(routine.name) / "setup.log")}
                    raise
                env.root = prepared.root
                clones = prepared.clones
                rec.update(cache=prepared.cache, cache_reason=prepared.reason, setup=prepared.setup)
        finally:
            rec["prepare_s"] = round(time.monotonic() - started, 3)
        rec["environment"] = env.to_json()
        return clones

    def _grants(self, routine) -> tuple[str, ...]:
        out = []
        for path in getattr(routine, "grant", ()) or ():
            full = os.path.expanduser(path)
            if not os.path.lexists(full):
                raise SetupFailed(f"grant {path!r} of routine {routine.name!r} does not exist ({full}); "
                                  "fix the path or remove it from grant")
            out.append(full)
        return tuple(out)

    @staticmethod
    def _script(routine) -> str | None:
        if getattr(routine, "setup", None) is not None:
            return routine.setup
        path = getattr(routine, "setup_path", None)
        if path is None:
            return None
        try:
            return Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SetupFailed(f"cannot read setup_file {path}: {getattr(exc, 'strerror', None) or exc}") from None

    async def _run_setup(self, env: RunEnv, routine, script: str, values: dict[str, str], template: Path, tmp: Path,
                         timeout: float, mask: Callable[[str], str]) -> ScriptResult:
        settings = self.config().environment
        first = template / clone_name(routine.repos[0].url)
        (tmp / ".bgagents-setup.sh").write_text(script)
        process_env = dict(os.environ, **values, BGAGENTS_ROUTINE=routine.name, BGAGENTS_RUN_ID=env.run_id)
        bash = ["bash", "--noprofile", "--norc", "-e", "-o", "pipefail"]

        def on_line(line: str) -> None:
            log.debug("setup of %s: %s", routine.name, mask(line))

        if env.confined:
            self._strip_sockets(process_env)
            process_env.update(proxy_env(settings.proxy_port), TMPDIR="/tmp")
            proxy = await self._start_proxy(env, "setup", allowed_names(routine.network), self.lookup_run(env.run_id))
            try:
                sandbox = Sandbox(settings.bwrap, confined=True, binds=[(str(template), str(template))], tmp=str(tmp),
                                  hidden=self._hidden(), readable=list(env.grant), empty=self._empty_file(),
                                  proxy_socket=str(proxy.socket_path), proxy_port=settings.proxy_port,
                                  bridge=proxy.bridge, chdir=str(first))
                argv = bwrap_argv(sandbox, [*bash, "/tmp/.bgagents-setup.sh"])
                return await run_script(argv, cwd=str(first), env=process_env, timeout_s=timeout, on_line=on_line,
                                        own_group=False)
            finally:
                await proxy.close()
        process_env["TMPDIR"] = str(tmp)
        command = [*bash, str(tmp / ".bgagents-setup.sh")]
        if (await self.check()).ok:
            # Not confined, but in a pid namespace of its own, so nothing it starts outlives it.
            sandbox = Sandbox(settings.bwrap, confined=False, chdir=str(first))
            return await run_script(bwrap_argv(sandbox, command), cwd=str(first), env=process_env, timeout_s=timeout,
                                    on_line=on_line, own_group=False)
        return await run_script(command, cwd=str(first), env=process_env, timeout_s=timeout, on_line=on_line,
                                own_group=True)

    async def _start_proxy(self, env: RunEnv, phase: str, names: tuple[str, ...], rec: dict | None) -> FilteringProxy:
        settings = self.config().environment
        bridge = confinement.find_bridge(settings.bridge, settings.socat)
        if isinstance(bridge, confinement.Probe):
            raise SandboxUnavailable(f"{bridge.reason}; the run was not started (never run open); fix: {bridge.fix}")
        run_id = env.run_id
        if run_id not in self.blocked:
            self.blocked[run_id] = Counter((rec or {}).get("blocked") or {})
        self._live[run_id] += 1
        directory = self._runtime_dir(env.run_id, phase)
        proxy = FilteringProxy(names, directory, policy=describe(env.network), command=settings.proxy_command,
                               bridge=bridge, on_blocked=lambda host: self._on_blocked(env.run_id, host))
        assert self.nursery is not None, "the environments service is not running"
        self.proxies.add(proxy)

        def closed() -> None:
            self.proxies.discard(proxy)
            self._live[run_id] -= 1
            if self._live[run_id] <= 0:
                del self._live[run_id]
                self._flush(run_id)
                self.blocked.pop(run_id, None)

        proxy.on_close = closed
        try:
            await proxy.start(self.nursery)
        except ProxyError as exc:
            await proxy.close()
            raise SandboxUnavailable(f"{exc}; the run was not started (never run open)") from None
        except BaseException:
            await proxy.close()
            raise
        return proxy

    def _runtime_dir(self, run_id: str, phase: str) -> Path:
        directory = self.runtime / f"{run_id}-{phase}"
        shutil.rmtree(directory, ignore_errors=True)
        self.runtime.mkdir(mode=0o700, exist_ok=True)
        directory.mkdir(mode=0o700)
        return directory

    def _hidden(self) -> list[tuple[str, bool]]:
        """What a confined run cannot see (see docs/routines.md, "What a confined run sees")."""
        home = os.path.expanduser("~")
        # Every run's proxy and scoped sockets (each sandbox gets its own bound in), bgd's socket and
        # its lock, and the user's runtime dir.
        paths = [str(self.state_dir), str(self.config_dir), str(self.runtime), str(self.socket_path),
                 str(self.socket_path) + ".lock"]
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        if runtime:
            paths.append(runtime)
        paths += confinement.SYSTEM_SOCKETS
        paths += confinement.credential_paths(home)
        out: list[tuple[str, bool]] = []
        for path in paths:
            if not os.path.exists(path):
                continue
            real = os.path.realpath(path)   # a symlink's target is what must not be seen
            if not any(real == p for p, _ in out):
                out.append((real, os.path.isdir(real)))
        return out

    def _empty_file(self) -> str:
        """An empty, read-only file to put over hidden files (a device node such as /dev/null would
        read as "permission denied" there: bubblewrap's mounts are nodev)."""
        self.runtime.mkdir(mode=0o700, exist_ok=True)
        path = self.runtime / "empty"
        if not path.is_file() or path.stat().st_size:
            path.write_bytes(b"")
            path.chmod(0o444)
        return str(path)

    @staticmethod
    def _strip_sockets(env: dict[str, str]) -> None:
        for name in confinement.SOCKET_VARIABLES:
            env.pop(name, None)

    # -- blocked hosts ------------------------------------------------------------------------

    def _on_blocked(self, run_id: str, host: str) -> None:
        self.blocked.setdefault(run_id, Counter())[host] += 1
        if run_id not in self._pending_reports and self.nursery is not None:
            self._pending_reports.add(run_id)
            self.nursery.start_soon(self._report_soon, run_id)

    async def _report_soon(self, run_id: str) -> None:
        await trio.sleep(REPORT_DELAY_S)   # one record save for a burst of refusals
        self._pending_reports.discard(run_id)
        self._flush(run_id)

    def _flush(self, run_id: str) -> None:
        counts = self.blocked.get(run_id)
        if counts:
            self.report(run_id, dict(counts))

    def blocked_of(self, run_id: str) -> dict[str, int]:
        return dict(self.blocked.get(run_id) or {})

    # -- an agent's start -------------------------------------------------------------------------

    def _env_of(self, session_id: str) -> tuple[RunEnv | None, dict | None]:
        rec = self.lookup(session_id)
        if rec is None:
            return None, None
        return RunEnv.from_record(rec), rec

    async def wrap(self, session, argv: list[str], env: dict[str, str]):
        """SessionManager.wrap_launch: the agent of a routine run in its sandbox."""
        from bgd.sessions.manager import LaunchRefused
        run, rec = self._env_of(session.id)
        if run is None or (not run.confined and run.root is None):
            return argv, None
        if not run.run_dir.is_dir():
            raise LaunchRefused(f"the workspace of run {run.run_id} ({run.run_dir}) no longer exists (workspaces are "
                                "kept [routines] keep_workspaces_days); start a new run of the routine instead")
        settings = self.config().environment
        inside = session.cwd
        binds = [(str(run.run_dir), str(run.run_dir))]
        if run.root is not None:
            run.root.mkdir(parents=True, exist_ok=True)
            binds.append((str(run.run_dir), str(run.root)))
            try:
                inside = str(run.root / Path(session.cwd).relative_to(run.run_dir))
            except ValueError:
                pass
        if not run.confined:
            if not (await self.check()).ok:
                return argv, None   # no bubblewrap: the workspace at its own path (docs/routines.md)
            return bwrap_argv(Sandbox(settings.bwrap, confined=False, binds=binds[1:], chdir=inside), argv), None
        probe = await self.check()
        if not probe.ok:
            raise LaunchRefused(f"network = {describe(run.network)} of this routine needs a sandbox, and this machine "
                                f"cannot make one: {probe.reason}; the agent was not started (never run open)"
                                + (f"; fix: {probe.fix}" if probe.fix else ""))
        agent = self.config().agents.get(session.agent)
        names = allowed_names(run.network, provider_hosts(agent.backend, agent.command, agent.network_hosts, env)
                              if agent is not None else ())
        try:
            proxy = await self._start_proxy(run, f"agent-{session.id}", names, rec)
        except SandboxUnavailable as exc:
            raise LaunchRefused(str(exc).replace("the run was not started", "the agent was not started")) from None
        scope = await self._serve_scoped(session.id, proxy.directory / "daemon.sock")
        tmp = run.run_dir / ".bgagents-tmp"
        tmp.mkdir(exist_ok=True)
        home = os.path.expanduser("~")
        writable = [p for p in confinement.agent_state_paths(agent.backend if agent else "", agent.command if agent else (),
                                                             agent.state_paths if agent else (), home)
                    if os.path.exists(p)]
        sandbox = Sandbox(settings.bwrap, confined=True, binds=binds, tmp=str(tmp), hidden=self._hidden(),
                          readable=list(run.grant), writable=writable, empty=self._empty_file(), proxy_socket=str(proxy.socket_path),
                          daemon_socket=str(proxy.directory / "daemon.sock") if scope is not None else None,
                          proxy_port=settings.proxy_port, bridge=proxy.bridge, chdir=inside)
        self._strip_sockets(env)
        env.update(proxy_env(settings.proxy_port), TMPDIR="/tmp")
        if agent is not None and agent.backend == "claude":
            # Claude Code's telemetry and error reports are not the model's traffic: not asked for.
            env.setdefault("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")

        async def cleanup() -> None:
            if scope is not None:
                scope.cancel()
            await proxy.close()   # its refusals are in the run's record by then
            shutil.rmtree(proxy.directory, ignore_errors=True)

        return bwrap_argv(sandbox, argv), cleanup

    def mcp_config(self, session, base: str | None) -> str | None:
        """The MCP config of a confined run's session: the daemon's server talks to the run's scoped
        socket (the daemon's own socket is hidden from the sandbox)."""
        if not base:
            return base
        run, _ = self._env_of(session.id)
        if run is None or not run.confined:
            return base
        import json
        from bgd.agents.mcp_server import SERVER_NAME
        data = json.loads(base)
        own = data.get("mcpServers", {}).get(SERVER_NAME)
        if own is not None:
            own.setdefault("env", {})["BGD_SOCKET"] = DAEMON_SOCKET
        return json.dumps(data)

    async def _serve_scoped(self, session_id: str, path: Path) -> trio.CancelScope | None:
        """Serve the daemon, limited to `session_id`'s own calls, on `path`."""
        if self.daemon is None or self.nursery is None:
            return None
        from bgd.rpc.scope import Scope
        from bgd.rpc.server import handle_connection
        sock = trio.socket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
        await sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(16)
        listener = trio.SocketListener(sock)
        scope = Scope(session_id, SCOPED_METHODS)
        cancel = trio.CancelScope()

        async def serve() -> None:
            with cancel:
                await trio.serve_listeners(lambda stream: handle_connection(self.daemon, stream, scope), [listener])
            await listener.aclose()

        self.nursery.start_soon(serve)
        return cancel


__all__ = ["Environments", "PROXY_SOCKET", "RefreshFailed", "RunEnv", "SandboxUnavailable", "SetupFailed"]
