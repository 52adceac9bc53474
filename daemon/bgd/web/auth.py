"""Who may use the web page (SPEC §13): login codes, login cookies, Host, Origin, CSRF.

Pure: no trio, no HTTP objects.  Time is a parameter (`now`, seconds on any
steady clock for codes; ISO strings for the record of use).

- `bgctl web` asks for a **login code**: random, shown once, valid for
  CODE_TTL_S, good for one login.  Only its hash is kept, in memory (a code
  outlives nothing, not even a daemon restart).
- Redeeming a code makes a **login token**, the value of an HttpOnly,
  SameSite=Strict cookie named for the listener's port.  Only its SHA-256 is stored (in the store, so an open
  tab survives a daemon restart).  Logging out or `bgctl web --revoke` deletes
  every one.
- The **CSRF token** of a login is an HMAC of a fixed label keyed with the login
  token: a page rendered for that cookie carries it in every form, and an attacker
  who cannot read the cookie cannot make it.
- **Host** must name the listener itself (DNS rebinding); **Origin** (or, without
  one, Referer) of a state-changing request must be the page's own origin.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

CODE_TTL_S = 300.0                # a login code is good for 5 minutes
COOKIE = "bgagents_web"           # the login cookie's name, with the listener's port after it
COOKIE_MAX_AGE_S = 30 * 24 * 3600  # the browser keeps it 30 days (logout or revoke end it before)
CSRF_FIELD = "csrf"               # the form field (or X-CSRF-Token header) that carries it
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def cookie_name(base_url: str) -> str:
    """`bgagents_web_7421`: cookies are kept per host, not per port, so two daemons on one machine
    (another user's, a test's) would otherwise log each other's browser out."""
    return f"{COOKIE}_{urlsplit(base_url).port or 0}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_token(login_token: str) -> str:
    return hmac.new(login_token.encode(), b"bgagents web csrf", hashlib.sha256).hexdigest()


def csrf_ok(login_token: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(csrf_token(login_token), given)


class LoginCodes:
    """One-time login codes, by hash, each with the time it expires."""

    def __init__(self, ttl_s: float = CODE_TTL_S):
        self.ttl_s = ttl_s
        self._expiry: dict[str, float] = {}

    def issue(self, now: float) -> str:
        self._prune(now)
        code = secrets.token_urlsafe(24)
        self._expiry[token_hash(code)] = now + self.ttl_s
        return code

    def redeem(self, code: str | None, now: float) -> bool:
        """True once for a code issued less than ttl_s ago; never again."""
        self._prune(now)
        if not code:
            return False
        return self._expiry.pop(token_hash(code), None) is not None

    def clear(self) -> None:
        self._expiry.clear()

    def __len__(self) -> int:
        return len(self._expiry)

    def _prune(self, now: float) -> None:
        for key in [k for k, until in self._expiry.items() if until <= now]:
            del self._expiry[key]


def new_login_token() -> str:
    return secrets.token_urlsafe(32)


def allowed_hosts(base_url: str) -> frozenset[str]:
    """The Host values that name the listener at `base_url`.

    A loopback listener answers to every loopback name on its port (127.0.0.1,
    localhost, [::1]); any other to exactly its own host and port."""
    parts = urlsplit(base_url)
    host, port = (parts.hostname or "").lower(), parts.port
    if ":" in host:
        host = f"[{host}]"
    default_port = 443 if parts.scheme == "https" else 80
    names = LOOPBACK_NAMES if host in LOOPBACK_NAMES or host.startswith("127.") else (host,)
    if host.startswith("127.") and host not in names:
        names = names + (host,)
    hosts = set()
    for name in names:
        hosts.add(f"{name}:{port or default_port}")
        if port in (None, default_port):
            hosts.add(name)
    return frozenset(hosts)


def host_ok(host: str | None, allowed: frozenset[str]) -> bool:
    return bool(host) and host.lower() in allowed


def origin_ok(origin: str | None, referer: str | None, scheme: str, host: str) -> bool:
    """A state-changing request came from a page of this listener.

    Browsers send Origin with every POST; without one (an old client), the
    Referer's origin stands in; with neither the request is refused."""
    expected = f"{scheme}://{host}".lower()
    if origin:
        return origin.lower() == expected
    if referer:
        parts = urlsplit(referer)
        return f"{parts.scheme}://{parts.netloc}".lower() == expected
    return False


def safe_next(path: str | None, default: str = "/") -> str:
    """A local path to go back to after an action (never another site)."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return default
    return path
