"""Beyond one machine (SPEC §14): runs on a pool of workers through Temporal.

`protocol` (pure: names, ids, the transcript log's records), `workflows` (Temporal workflow code),
`worker` + `agent` (`bgd worker`, asyncio) + `relay` (a run's MCP tools, relayed to its owner), `link` (the daemon's Temporal client on its own thread),
`runner` (cluster sessions in the daemon), `methods` (cluster.* handlers).
"""


def install(daemon) -> None:
    from bgd.cluster.runner import install as install_cluster
    install_cluster(daemon)
