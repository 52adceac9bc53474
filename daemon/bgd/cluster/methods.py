"""cluster.* handlers (SPEC §14)."""

from __future__ import annotations

from bgd.rpc.table import method


@method("cluster.status")
async def status(daemon, params, conn):
    """The Temporal server, each connected worker with its slots and runs, and this daemon's open runs."""
    return await daemon.cluster.status()
