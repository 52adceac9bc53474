"""`environment.*`: whether this machine can confine a routine run (for `bgctl doctor`)."""

from __future__ import annotations

from bgcore.confinement import Bridge, find_bridge
from bgcore.jsonrpc import INVALID_STATE, RpcError
from bgd.rpc.table import method


@method("environment.check")
async def check(daemon, params, conn):
    """Whether confined routine runs work here: a test sandbox made now with the configured
    bubblewrap, proxy and bridge (`ok`, `reason`, `fix`; `bridge`: the one in use,
    "systemd-socket-proxyd" or "socat", or null when neither is there)."""
    environments = getattr(daemon, "environments", None)
    if environments is None:
        raise RpcError(INVALID_STATE, "routine environments are not enabled in this daemon")
    probe = await environments.check(fresh=True)
    settings = daemon.config.environment
    bridge = find_bridge(settings.bridge, settings.socat)
    return {**probe.to_json(), "bwrap": settings.bwrap, "proxy_command": list(settings.proxy_command),
            "bridge": bridge.kind if isinstance(bridge, Bridge) else None, "socat": settings.socat,
            "proxy_port": settings.proxy_port}
