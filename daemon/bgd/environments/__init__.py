"""Routine environments (SPEC §8): the setup script, cached (`setup`), and the network policy,
enforced by a bubblewrap sandbox (`sandbox`) whose only way out is a filtering proxy (`proxy`);
`service` puts them together for the routines' runner and the session manager; `methods` has
`environment.check`.

The routines feature uses this package through `Environments` (daemon.environments); nothing here
imports the routines feature.
"""

from bgd.environments.service import Environments, RefreshFailed, RunEnv, SandboxUnavailable, SetupFailed

__all__ = ["Environments", "RefreshFailed", "RunEnv", "SandboxUnavailable", "SetupFailed", "install"]


def install(daemon) -> Environments:
    """`daemon.environments`, its service, and the session manager's hooks (the sandbox of a routine
    run's agent, and its MCP server's socket)."""
    environments = Environments(state_dir=daemon.state_dir, config_dir=daemon.config_dir,
                                socket_path=daemon.socket_path, config=lambda: daemon.config, daemon=daemon)
    daemon.environments = environments
    daemon.services.append(environments.run)
    daemon.sessions.wrap_launch = environments.wrap
    previous = daemon.sessions.mcp_config_for
    daemon.sessions.mcp_config_for = lambda session: environments.mcp_config(session, previous(session))
    return environments
