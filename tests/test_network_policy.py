"""The network policy's pure core: names validated, policies read, hosts matched, provider hosts
per agent; and the proxy's filter rules mean what `host_allowed` means."""

from __future__ import annotations

import re

from hypothesis import given, strategies as st

from bgcore.network_policy import (TRUSTED, allowed_names, describe, domain_problem, host_allowed, is_confined,
                                   parse_network, provider_hosts)
from bgd.environments.proxy import blocked_host, filter_rules, tinyproxy_conf


def test_names_are_validated_with_a_reason():
    for good in ("pypi.org", "*.github.com", "localhost", "a-b.c-d.example", "10.0.0.5", "PyPI.org", "x.y."):
        assert domain_problem(good) is None, good
    assert "not a host name" in domain_problem("bad_name.org")
    assert "not a host name" in domain_problem("-a.com")
    assert "not a host name" in domain_problem("a..com")
    assert "wildcard may only open a name" in domain_problem("*.*.com")
    assert "wildcard may only open a name" in domain_problem("*")
    assert "wildcard may only open a name" in domain_problem("git*.com")
    assert "is a URL" in domain_problem("https://pypi.org/simple") and '"pypi.org"' in domain_problem("https://pypi.org/x")
    assert "has a port" in domain_problem("pypi.org:443")
    assert "at most 253" in domain_problem("a." * 130 + "com")
    assert "not a host name" in domain_problem("a" * 64 + ".com")
    assert "must be a host name" in domain_problem(3)
    assert "must be a host name" in domain_problem("  ")


def test_policies_are_read():
    assert parse_network("full") == ("full", None)
    assert parse_network("none") == ("none", None)
    assert parse_network(["PyPI.org.", "*.github.com", "pypi.org"]) == (("pypi.org", "*.github.com"), None)
    assert parse_network("some")[1].startswith('network must be "none", "trusted", "full"')
    assert 'say network = "none"' in parse_network([])[1]
    assert "network: 'a_b' is not a host name" in parse_network(["ok.com", "a_b"])[1]
    assert "string or a list" in parse_network(3)[1]
    assert not is_confined("full") and is_confined("none") and is_confined(("a.com",))
    assert describe(("a.com", "*.b.org")) == '["a.com", "*.b.org"]' and describe("trusted") == '"trusted"'


def test_what_each_policy_lets_through():
    assert allowed_names("none") == ()
    assert allowed_names("none", ["api.anthropic.com"]) == ("api.anthropic.com",)
    assert allowed_names("trusted") == TRUSTED
    assert {"pypi.org", "registry.npmjs.org", "github.com", "crates.io"} <= set(allowed_names("trusted"))
    assert allowed_names(("a.com",), ["A.com", "b.com"]) == ("a.com", "b.com")


def test_hosts_match_exactly_or_under_a_wildcard():
    names = ("pypi.org", "*.github.com")
    assert host_allowed("pypi.org", names) and host_allowed("PyPI.org.", names)
    assert not host_allowed("files.pypi.org", names) and not host_allowed("pypi.org.evil.com", names)
    assert host_allowed("api.github.com", names) and host_allowed("a.b.github.com", names)
    assert not host_allowed("github.com", names) and not host_allowed("evilgithub.com", names)
    assert not host_allowed("github.com.evil.com", names)


def test_provider_hosts_per_agent():
    assert provider_hosts("claude", ["claude"]) == ("api.anthropic.com",)
    assert provider_hosts("command", ["/usr/local/bin/gemini", "-p"])[0] == "generativelanguage.googleapis.com"
    assert "api.openai.com" in provider_hosts("command", ["codex", "exec"])
    assert provider_hosts("command", ["my-agent"]) == ()
    assert provider_hosts("claude", ["claude"], ["llm.internal"],
                          {"ANTHROPIC_BASE_URL": "https://gateway.example.com:8443/v1"}) == (
        "api.anthropic.com", "gateway.example.com", "llm.internal")


def _matches(rules: str, host: str) -> bool:
    patterns = [line for line in rules.splitlines() if line and not line.startswith("#")]
    # tinyproxy matches without case (FilterCaseSensitive is off) and searches (the rules anchor).
    return any(re.search(p, host, re.I) for p in patterns)


_label = st.text(alphabet="abcxyz019-", min_size=1, max_size=6).filter(lambda s: s[0] != "-" and s[-1] != "-")
_name = st.lists(_label, min_size=1, max_size=4).map(".".join)


@given(st.lists(st.tuples(st.booleans(), _name), min_size=1, max_size=4), _name)
def test_the_proxys_filter_means_what_host_allowed_means(entries, host):
    names = tuple(("*." if wild else "") + name for wild, name in entries)
    rules = filter_rules(names)
    for candidate in (host, *(n.removeprefix("*.") for n in names), *("q." + n.removeprefix("*.") for n in names)):
        assert _matches(rules, candidate) == host_allowed(candidate, names), (names, candidate)


def test_the_proxys_configuration_and_log():
    conf = tinyproxy_conf(4321, "/run/f", "/run/e.html")
    assert "Port 4321\n" in conf and "Listen 127.0.0.1\n" in conf and "FilterDefaultDeny Yes\n" in conf
    assert 'Filter "/run/f"' in conf and "FilterType ere" in conf and 'ErrorFile 403 "/run/e.html"' in conf
    assert blocked_host('NOTICE    Dec 01 07:28:51.169 [31461]: Proxying refused on filtered domain "Blocked.Test"') \
        == "blocked.test"
    assert blocked_host("CONNECT   Dec 01 07:28:51.167 [31461]: Request (file descriptor 4): GET http://x/") is None
    assert filter_rules(()) .splitlines()[1:] == []
