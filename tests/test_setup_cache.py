"""The setup cache's pure core: its key, and when a template is reused or built again."""

from __future__ import annotations

from bgcore.setup_cache import DEFAULT_MAX_AGE_S, cache_key, decide, last_lines, meta_for, what_changed

REPOS = [("/srv/app.git", None), ("https://example.com/lib.git", "v2")]
DAY = 86400.0


def meta(script="make deps", repos=REPOS, network="full", ok=True, built_at=1000.0):
    return meta_for(cache_key(script, repos, network), script, repos, network, ok=ok, built_at=built_at,
                    duration_s=3.2, exit_code=0 if ok else 1, error=None if ok else "failed")


def test_the_key_follows_the_script_the_repositories_and_the_network():
    base = cache_key("make deps", REPOS, "full")
    assert cache_key("make deps", REPOS, "full") == base
    assert cache_key("make deps ", REPOS, "full") != base
    assert cache_key("make deps", REPOS[:1], "full") != base
    assert cache_key("make deps", REPOS[::-1], "full") != base
    assert cache_key("make deps", [("/srv/app.git", "main"), REPOS[1]], "full") != base
    assert cache_key("make deps", REPOS, "trusted") != base
    assert cache_key("make deps", REPOS, ("pypi.org",)) != cache_key("make deps", REPOS, ("pypi.org", "a.com"))


def test_first_build_hit_and_every_reason_to_build_again():
    key = cache_key("make deps", REPOS, "full")
    first = decide(None, key, 2000.0)
    assert (first.build, first.cache) == (True, "built") and first.reason == "no cached setup yet"
    hit = decide(meta(), key, 1000.0 + DAY)
    assert (hit.build, hit.cache) == (False, "hit")
    forced = decide(meta(), key, 1001.0, rebuild=True)
    assert (forced.build, forced.cache) == (True, "rebuilt") and "--rebuild" in forced.reason
    failed = decide(meta(ok=False), key, 1001.0)
    assert (failed.build, failed.cache) == (True, "rebuilt") and "last setup failed" in failed.reason
    old = decide(meta(), key, 1000.0 + DEFAULT_MAX_AGE_S)
    assert (old.build, old.cache) == (True, "rebuilt") and "older than 7 days" in old.reason
    assert not decide(meta(), key, 1000.0 + DEFAULT_MAX_AGE_S - 1).build
    assert decide(meta(), key, 1000.0 + 2 * DAY, max_age_s=DAY).build
    assert decide(meta(), key, 1000.0, max_age_s=0).build  # 0 days: every run builds
    # A clock that went back more than a day: the template's age is unknown.
    assert decide(meta(), key, 1000.0 - 2 * DAY).build


def test_a_changed_input_is_named_in_the_reason():
    old = meta()
    new_key = cache_key("make deps && make test-deps", REPOS, "trusted")
    changed = what_changed(old, "make deps && make test-deps", REPOS, "trusted")
    assert changed == "the setup script and the network policy"
    decision = decide(old, new_key, 1001.0, changed=changed)
    assert decision.cache == "rebuilt" and decision.reason == \
        "the setup script and the network policy changed since the cached setup was built"
    assert what_changed(old, "make deps", REPOS[:1], "full") == "the repositories"
    assert what_changed(old, "make deps", REPOS, "full") is None


def test_last_lines_of_the_output():
    text = "one\r\ntwo\n\n   \nthree\r" + "x" * 500 + "\n"
    assert last_lines(text, 3) == ["two", "three", "x" * 400 + "…"]
    assert last_lines("", 5) == []
