"""A routine's setup cache (SPEC §8): when the template a setup script made can be reused, and when
it must be built again.

Pure: the key is a digest of what the template depends on (the script, the repositories, the
network policy it ran under); the decision is a function of the cache's recorded state, that key,
the time and whether a rebuild was asked for. The daemon (bgd/environments/setup.py) does the
building, copying and refreshing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Iterable

__all__ = ["CACHE_FORMAT", "DEFAULT_MAX_AGE_S", "Decision", "cache_key", "decide", "last_lines", "meta_for",
           "what_changed"]

CACHE_FORMAT = 1                 # bumped when a template made by an older bgd cannot be reused
DEFAULT_MAX_AGE_S = 7 * 86400    # a template older than this is built again


def cache_key(script: str, repos: Iterable[tuple[str, str | None]], network: str | tuple[str, ...]) -> str:
    """The digest a template is filed under: its setup script (the text itself, so an edited
    setup_file counts), its repositories (url and ref, in order) and its network policy."""
    material = {"format": CACHE_FORMAT, "script": script, "repos": [[url, ref] for url, ref in repos],
                "network": list(network) if isinstance(network, tuple) else network}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Decision:
    build: bool          # run the setup script (again) before this run
    cache: str           # what the run record says: "hit" | "built" | "rebuilt"
    reason: str          # why, for the run record and the log

    def to_json(self) -> dict:
        return {"cache": self.cache, "reason": self.reason}


def decide(meta: dict | None, key: str, now: float, *, rebuild: bool = False,
           max_age_s: float = DEFAULT_MAX_AGE_S, changed: str | None = None) -> Decision:
    """Whether a run reuses the template described by `meta` (its recorded key, built_at and
    whether its build succeeded; None when there is none) or builds it. `changed` names what
    differs when the key does (`what_changed`), for the reason.

    A failed build is never reused: the next run tries again."""
    if not meta or not meta.get("ok"):
        failed = bool(meta) and meta.get("ok") is False
        return Decision(True, "rebuilt" if failed else "built",
                        "the last setup failed; trying again" if failed else "no cached setup yet")
    if rebuild:
        return Decision(True, "rebuilt", "a rebuild was asked for (--rebuild)")
    if meta.get("key") != key:
        what = changed or "the setup script, the repositories or the network policy"
        return Decision(True, "rebuilt", f"{what} changed since the cached setup was built")
    built_at = meta.get("built_at")
    if not isinstance(built_at, (int, float)) or now - built_at >= max_age_s or now < built_at - 86400:
        days = max_age_s / 86400
        return Decision(True, "rebuilt", f"the cached setup is older than {days:g} day{'s' if days != 1 else ''}")
    return Decision(False, "hit", "the cached setup is current")


def what_changed(meta: dict, script: str, repos: Iterable[tuple[str, str | None]],
                 network: str | tuple[str, ...]) -> str | None:
    """Which input differs from the ones `meta` recorded (for the reason of a rebuild), or None."""
    parts = []
    if meta.get("script_sha256") != hashlib.sha256(script.encode()).hexdigest():
        parts.append("the setup script")
    if meta.get("repos") != [[url, ref] for url, ref in repos]:
        parts.append("the repositories")
    wanted = list(network) if isinstance(network, tuple) else network
    if meta.get("network") != wanted:
        parts.append("the network policy")
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def meta_for(key: str, script: str, repos: Iterable[tuple[str, str | None]], network: str | tuple[str, ...],
             *, ok: bool, built_at: float, duration_s: float, exit_code: int | None, error: str | None) -> dict:
    """What the daemon records beside a template once its setup has run."""
    return {"format": CACHE_FORMAT, "key": key, "ok": ok, "built_at": built_at, "duration_s": round(duration_s, 3),
            "exit_code": exit_code, "error": error,
            "script_sha256": hashlib.sha256(script.encode()).hexdigest(),
            "repos": [[url, ref] for url, ref in repos],
            "network": list(network) if isinstance(network, tuple) else network}


def last_lines(text: str, count: int = 20, width: int = 400) -> list[str]:
    """The last `count` non-empty lines of a script's output, each cut to `width` characters."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    lines = [line if len(line) <= width else line[:width] + "…" for line in lines if line.strip()]
    return lines[-count:]
