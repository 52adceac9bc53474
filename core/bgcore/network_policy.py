"""A routine's network policy (SPEC §8): `full`, `none`, `trusted` or a list of host names, what
each lets through, and which hosts an agent needs for its own model provider.

Pure: names are validated and matched here; the daemon turns the allowed names into the filtering
proxy's rules (bgd/environments/proxy.py) and a test checks that the proxy and `host_allowed`
agree.

A name matches exactly (`pypi.org` is pypi.org and nothing else); `*.github.com` matches every
name under github.com at any depth (api.github.com, a.b.github.com) but not github.com itself, so a
list that wants both says both. Matching ignores case and one trailing dot.
"""

from __future__ import annotations

import os
import re
from typing import Iterable, Mapping
from urllib.parse import urlsplit

__all__ = ["CONFINED", "POLICIES", "PROVIDER_HOSTS", "TRUSTED", "allowed_names", "describe", "domain_problem",
           "host_allowed", "is_confined", "normalize_host", "parse_network", "provider_hosts"]

POLICIES = ("none", "trusted", "full")
CONFINED = ("none", "trusted")   # and every list of names

# `trusted`: the package registries and git hosts a project's setup commonly needs. Documented in
# docs/routines.md ("Network"); a routine that needs more lists its names instead.
TRUSTED: tuple[str, ...] = (
    # git hosts (clones, archives, release downloads)
    "github.com", "*.github.com", "*.githubusercontent.com", "ghcr.io",
    "gitlab.com", "*.gitlab.com", "bitbucket.org", "*.bitbucket.org", "codeberg.org", "git.sr.ht",
    # Python
    "pypi.org", "files.pythonhosted.org", "pypi.python.org", "conda.anaconda.org", "repo.anaconda.com",
    # JavaScript
    "registry.npmjs.org", "registry.yarnpkg.com", "repo.yarnpkg.com", "nodejs.org",
    # Rust
    "crates.io", "index.crates.io", "static.crates.io", "static.rust-lang.org", "sh.rustup.rs",
    # Go
    "proxy.golang.org", "sum.golang.org", "index.golang.org", "go.dev", "dl.google.com",
    # Ruby, PHP, .NET, Elixir, Dart, Perl
    "rubygems.org", "index.rubygems.org", "packagist.org", "repo.packagist.org", "api.nuget.org",
    "hex.pm", "repo.hex.pm", "builds.hex.pm", "pub.dev", "cpan.metacpan.org",
    # Java and Kotlin
    "repo.maven.apache.org", "repo1.maven.org", "plugins.gradle.org", "services.gradle.org",
    "downloads.gradle.org",
    # Debian and Ubuntu packages
    "deb.debian.org", "security.debian.org", "archive.ubuntu.com", "security.ubuntu.com",
)

# The hosts an agent talks to for its model, by backend and by the program's name (the command's
# basename); a confined run lets these through for the agent, never for the setup script. An agent
# configured otherwise names its own with `network_hosts` under [agents.NAME] in config.toml.
PROVIDER_HOSTS: dict[str, tuple[str, ...]] = {
    "claude": ("api.anthropic.com",),
    "gemini": ("generativelanguage.googleapis.com", "cloudcode-pa.googleapis.com", "oauth2.googleapis.com"),
    "codex": ("api.openai.com", "chatgpt.com", "auth.openai.com"),
    "aider": ("api.anthropic.com", "api.openai.com"),
    "goose": ("api.anthropic.com", "api.openai.com"),
}
# Variables that move a provider to another address; the host of their URL is let through too.
BASE_URL_VARIABLES = ("ANTHROPIC_BASE_URL", "OPENAI_BASE_URL", "GOOGLE_GEMINI_BASE_URL")

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_NAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


def domain_problem(name: object) -> str | None:
    """Why `name` cannot stand in a routine's network list, or None."""
    if not isinstance(name, str) or not name.strip():
        return f"a network entry must be a host name such as \"pypi.org\" or \"*.github.com\", not {name!r}"
    text = name.strip().lower().rstrip(".")
    if "://" in text or "/" in text:
        return f"{name!r} is a URL; give its host name only (e.g. \"{urlsplit(text).hostname or 'pypi.org'}\")"
    if ":" in text:
        return f"{name!r} has a port; the policy is about host names (every port of an allowed host is open)"
    bare = text[2:] if text.startswith("*.") else text
    if not bare or "*" in bare:
        return (f"{name!r}: a wildcard may only open a name, as in \"*.github.com\" (every name under "
                "github.com)")
    if len(bare) > 253:
        return f"{name[:40]!r}...: a host name has at most 253 characters"
    if not _NAME_RE.fullmatch(bare):
        return (f"{name!r} is not a host name: use letters, digits and '-' in dot-separated labels of at most "
                "63 characters, optionally after \"*.\"")
    return None


def parse_network(value: object) -> tuple[str | tuple[str, ...] | None, str | None]:
    """routines.toml's `network` value -> (policy, None) or (None, why not). A policy is "full",
    "none", "trusted" or a tuple of lower-cased names (duplicates dropped, order kept)."""
    if isinstance(value, str):
        if value in POLICIES:
            return value, None
        return None, (f"network must be \"none\", \"trusted\", \"full\" or a list of host names such as "
                      f"[\"pypi.org\", \"*.github.com\"], not {value!r}")
    if isinstance(value, (list, tuple)):
        if not value:
            return None, "network = [] lets nothing through; say network = \"none\" for that"
        names: list[str] = []
        for item in value:
            problem = domain_problem(item)
            if problem:
                return None, f"network: {problem}"
            item = item.strip().lower().rstrip(".")
            if item not in names:
                names.append(item)
        return tuple(names), None
    return None, "network must be a string or a list of host names"


def is_confined(policy: str | tuple[str, ...]) -> bool:
    return policy != "full"


def allowed_names(policy: str | tuple[str, ...], extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The names a confined run's proxy lets through: the policy's, then `extra` (the agent's own)."""
    if policy == "full":
        raise ValueError("a full network policy has no proxy")
    base = () if policy == "none" else TRUSTED if policy == "trusted" else tuple(policy)
    out: list[str] = []
    for name in (*base, *extra):
        name = name.strip().lower().rstrip(".")
        if name and name not in out:
            out.append(name)
    return tuple(out)


def normalize_host(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host


def host_allowed(host: str, names: Iterable[str]) -> bool:
    """Whether a request for `host` passes a proxy that allows `names`."""
    host = normalize_host(host)
    for name in names:
        if name.startswith("*."):
            if host.endswith(name[1:]) and len(host) > len(name) - 1:
                return True
        elif host == name:
            return True
    return False


def provider_hosts(backend: str, command: Iterable[str], configured: Iterable[str] = (),
                   env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The hosts an agent needs for its model: its backend's, its program's (by basename), the
    hosts of any *_BASE_URL variable in its environment, and those its config names."""
    found: list[str] = []
    program = os.path.basename(next(iter(command), "")).lower()
    for key in (backend, program):
        found += PROVIDER_HOSTS.get(key, ())
    for variable in BASE_URL_VARIABLES:
        url = (env or {}).get(variable)
        host = urlsplit(url).hostname if url else None
        if host:
            found.append(host.lower())
    found += [h.strip().lower().rstrip(".") for h in configured]
    out: list[str] = []
    for host in found:
        if host and host not in out:
            out.append(host)
    return tuple(out)


def describe(policy: str | tuple[str, ...]) -> str:
    """How a policy reads in messages: `"trusted"` or `["pypi.org", "*.github.com"]`."""
    if isinstance(policy, tuple):
        return "[" + ", ".join(f'"{n}"' for n in policy) + "]"
    return f'"{policy}"'
