"""Where the listener may listen (SPEC §8, §12): loopback unless a person opted in, with TLS.

Pure: no sockets. The service resolves the name and checks the resolved address
again with `is_loopback`, so a `localhost` that /etc/hosts points elsewhere is
caught too.
"""

from __future__ import annotations

import ipaddress

from bgcore.config import HttpConfig


def is_loopback(host: str) -> bool:
    """An address (or the name `localhost`, RFC 6761) that only this machine can reach."""
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name.partition("%")[0]).is_loopback
    except ValueError:
        return False


def refusal(http: HttpConfig) -> str | None:
    """Why this [http] section may not listen, in one line that says what to do; None if it may."""
    if is_loopback(http.host):
        return None
    if not http.allow_remote:
        return (f"http.listen {http.listen} is not a loopback address: listen on 127.0.0.1, or set "
                f"[http] allow_remote = true with tls_cert and tls_key to serve other machines")
    if not http.tls:
        return (f"http.listen {http.listen} is not a loopback address and allow_remote needs TLS: "
                f"set [http] tls_cert and tls_key")
    return None


def url_host(host: str) -> str:
    """A host as it stands in a URL: IPv6 in brackets."""
    return f"[{host}]" if ":" in host else host
