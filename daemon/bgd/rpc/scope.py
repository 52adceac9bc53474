"""What a connection made for one session may call: its own session's calls, nothing else.

Pure (no trio): the daemon checks it on a confined run's socket (bgd.rpc.server) and on the calls
a cluster worker relays for a session's MCP tools (bgd.cluster.runner), and the worker checks the
same before it relays anything (bgd.cluster.relay).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from bgcore.jsonrpc import PERMISSION_DENIED, RpcError


@dataclass(frozen=True)
class Scope:
    """One session's own calls. `methods` maps each allowed method to the parameter that must name
    the session; for `task.edit` that parameter must name `task`, the desktop task that started the
    session (None: it may not edit any). `who` names the caller in refusals."""

    session: str
    methods: Mapping[str, str]
    task: str | None = None
    who: str = "a confined run"

    def check(self, method: str, params: Any) -> None:
        key = self.methods.get(method)
        if key is None:
            raise RpcError(PERMISSION_DENIED, f"{method} is not available to {self.who} "
                                              f"(only {', '.join(sorted(self.methods))})")
        own, what = (self.task, "task") if method == "task.edit" else (self.session, "session")
        if own is None or not isinstance(params, dict) or params.get(key) != own:
            raise RpcError(PERMISSION_DENIED, f"{self.who} may call {method} only for its own {what}")
