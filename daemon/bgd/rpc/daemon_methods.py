from __future__ import annotations

from bgd.rpc.table import METHODS, method


@method("daemon.status")
def status(daemon, params, conn):
    """Version, pid, socket, uptime, session counts by state and the HTTP listener."""
    return {
        **daemon.identity,
        "uptime_s": round(daemon.uptime(), 3),
        "counts": daemon.sessions.state_counts(),
        "sessions": len(daemon.sessions.sessions),
        "event_seq": daemon.bus.seq,
        "config_error": daemon.config_error,
        "http": daemon.http.status(),
    }


@method("daemon.shutdown")
async def shutdown(daemon, params, conn):
    """Stop the daemon gracefully (agents asked to stop, state flushed)."""
    daemon.request_shutdown()
    return {"stopping": True, "pid": daemon.pid}


@method("daemon.reload")
async def reload(daemon, params, conn):
    """Re-read config.toml (as SIGHUP does); an invalid file keeps the old config."""
    return daemon.reload_config()


@method("daemon.methods")
async def methods(daemon, params, conn):
    """Every method name with its one-line summary."""
    return [{"name": m.name, "summary": m.summary} for m in sorted(METHODS.values(), key=lambda m: m.name)]
