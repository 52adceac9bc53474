"""`web.*`: the login link `bgctl web` prints, and ending every login (SPEC §13)."""

from __future__ import annotations

from bgcore.jsonrpc import INVALID_STATE, RpcError

from bgd.rpc.table import method


def _web(daemon):
    web = getattr(daemon, "web", None)
    if web is None or not daemon.config.web_enabled:
        raise RpcError(INVALID_STATE, "the web page is off; set [web] enabled = true in config.toml "
                                      "and run `bgctl rpc daemon.reload`")
    http = getattr(daemon, "http", None)
    if http is not None and not http.base_url:
        raise RpcError(INVALID_STATE, "the daemon's HTTP listener is not running; `bgctl doctor` or the "
                                      "daemon's log says why")
    return web


@method("web.login_code")
def login_code(daemon, params, conn):
    """A one-time login link for the web page, valid for 5 minutes."""
    return _web(daemon).login_code()


@method("web.revoke")
def revoke(daemon, params, conn):
    """End every login of the web page, in every browser."""
    web = getattr(daemon, "web", None)
    if web is None:
        return {"revoked": daemon.store.delete_web_logins()}
    return {"revoked": web.revoke()}
