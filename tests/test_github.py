"""GitHub deliveries: the signature check, events, every filter and operator, and the prompt's context."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, strategies as st

from bgcore.github import (FIELDS, Match, Matcher, TriggerIndex, expand_ruled_out, check_filter, compile_filter, event_context, field_value,
                           match_delivery, parse_event, sign, verify_signature)
from bgcore.github import FilterError


def test_githubs_published_test_vector():
    # docs.github.com, "Validating webhook deliveries"
    secret, payload = b"It's a Secret to Everybody", b"Hello, World!"
    expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert sign(secret, payload) == expected
    assert verify_signature(secret, payload, expected)


@pytest.mark.parametrize("header", [
    None, "", "sha256=", "sha1=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
    "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e18",
    "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17", "sha256=ünïcode",
])
def test_forged_and_missing_signatures(header):
    assert not verify_signature(b"It's a Secret to Everybody", b"Hello, World!", header)


def test_a_stale_secret_or_another_body_fails():
    good = sign(b"old secret", b"{}")
    assert not verify_signature(b"new secret", b"{}", good)
    assert not verify_signature(b"old secret", b"{} ", good)
    assert not verify_signature(b"", b"{}", sign(b"", b"{}"))  # no secret configured: nothing passes


@given(st.binary(max_size=64), st.binary(max_size=200))
def test_sign_and_verify_agree(secret, body):
    if secret:
        assert verify_signature(secret, body, sign(secret, body))
        assert not verify_signature(secret, body + b"x", sign(secret, body))


def test_events():
    assert parse_event("pull_request.opened") == ("pull_request", "opened")
    assert parse_event("release") == ("release", None)
    with pytest.raises(FilterError, match="unknown GitHub event 'issues.opened'"):
        parse_event("issues.opened")
    with pytest.raises(FilterError, match="did you mean 'published'"):
        parse_event("release.publish")
    with pytest.raises(FilterError, match="merged = true"):
        parse_event("pull_request.merged")


def pr(**kw) -> dict:
    pull = {"number": 7, "title": "Fix the hotfix path", "body": "details", "draft": False, "merged": False,
            "html_url": "https://github.com/acme/api/pull/7", "user": {"login": "octocat"},
            "base": {"ref": "main"}, "head": {"ref": "fix/path", "sha": "0123456789abcdef"},
            "labels": [{"name": "needs-review"}, {"name": "bug"}]}
    pull.update(kw)
    return {"action": "opened", "number": 7, "pull_request": pull, "repository": {"full_name": "Acme/API"}}


def release(**kw) -> dict:
    rel = {"tag_name": "v1.2.0", "name": "1.2", "body": None, "draft": False, "prerelease": False,
           "target_commitish": "main", "author": {"login": "octocat"},
           "html_url": "https://github.com/acme/api/releases/tag/v1.2.0"}
    rel.update(kw)
    return {"action": "published", "release": rel, "repository": {"full_name": "acme/api"}}


def check(name, value, payload, event="pull_request"):
    return check_filter(compile_filter(name, value), event, payload)


@pytest.mark.parametrize("name, value, passes", [
    ("repository", "acme/api", True),            # GitHub's names ignore case
    ("repository", "acme/web", False),
    ("base", "main", True), ("base", "develop", False),
    ("head", {"starts_with": "fix/"}, True), ("head", {"starts_with": "feat/"}, False),
    ("title", {"contains": "hotfix"}, True), ("title", {"contains": "HOTFIX"}, False),
    ("title", {"matches": ".*hotfix.*"}, True), ("title", {"matches": "hotfix"}, False),  # the whole value
    ("title", {"equals": "Fix the hotfix path"}, True),
    ("author", {"one_of": ["OctoCat", "hubot"]}, True), ("author", {"not_one_of": ["octocat"]}, False),
    ("author", {"not_one_of": ["hubot"]}, True), ("body", {"contains": "tail"}, True),
    ("title", {"starts_with": "Fix", "contains": "nothing"}, False),  # every operator must hold
    ("labels", {"include": ["needs-review"]}, True), ("labels", {"include": ["needs-review", "ui"]}, False),
    ("labels", {"exclude": ["wip"]}, True), ("labels", {"exclude": ["bug"]}, False),
    ("labels", "bug", True), ("labels", ["bug", "needs-review"], True),
    ("draft", False, True), ("draft", True, False), ("merged", False, True), ("merged", {"equals": True}, False),
])
def test_every_pull_request_filter(name, value, passes):
    assert (check(name, value, pr()) is None) is passes


def test_release_filters():
    payload = release()
    assert check("tag", {"starts_with": "v"}, payload, "release") is None
    assert check("title", "1.2", payload, "release") is None
    assert check("prerelease", True, payload, "release") == "prerelease is false, not true"
    assert check("body", {"contains": "x"}, payload, "release") == "body '' does not contain 'x'"
    assert field_value("title", "release", release(name=None)) == "v1.2.0"


def test_reasons_say_which_filter_said_no():
    assert check("base", "develop", pr()) == "base is 'main', not 'develop'"
    assert check("labels", {"include": ["ui"]}, pr()) == "labels: 'ui' missing"
    assert check("labels", {"exclude": ["bug"]}, pr()) == "labels: has 'bug'"
    assert check("title", {"matches": "hotfix"}, pr()) == "title 'Fix the hotfix path' does not match 'hotfix'"
    assert check("base", "main", {"pull_request": {}}) == "base: the delivery has none"


def test_matching_a_delivery():
    events = (("pull_request", "opened"), ("pull_request", "synchronize"))
    filters = (compile_filter("base", "main"), compile_filter("draft", False))
    assert match_delivery(events, filters, "pull_request", "opened", pr()) == Match(True)
    assert match_delivery(events, filters, "pull_request", "closed", pr()).reason == (
        "event pull_request.closed is not one of pull_request.opened, pull_request.synchronize")
    assert match_delivery(events, filters, "pull_request", "synchronize", pr(draft=True)).reason == (
        "draft is true, not false")
    # any action; a filter of the other event is skipped
    both = (("pull_request", None), ("release", None))
    assert match_delivery(both, (compile_filter("labels", "bug"),), "release", "published", release()).matched
    assert not match_delivery(both, (compile_filter("labels", "ui"),), "pull_request", "labeled", pr()).matched


def _one_by_one(events, filters, event, action, payload):
    """What a trigger says, filter by filter (the reference the shared Matcher must agree with)."""
    if not any(e == event and (a is None or a == action) for e, a in events):
        wanted = ", ".join(e if a is None else f"{e}.{a}" for e, a in events)
        return f"event {event if action is None else f'{event}.{action}'} is not one of {wanted}"
    for flt in filters:
        if event in FIELDS[flt.field][1] and (why := check_filter(flt, event, payload)) is not None:
            return why
    return None


def test_one_matcher_for_every_trigger_answers_as_each_filter_would():
    # The webhook matches a delivery against every routine with one Matcher: the payload's values are
    # read once and an events list's verdict is reused, so each trigger must still get its own answer.
    opened = (("pull_request", "opened"), ("pull_request", "synchronize"))
    both = (("pull_request", None), ("release", None))
    triggers = [(opened, (compile_filter("repository", f"acme/{name}"), compile_filter("base", "main")))
                for name in ("api", "web", "API")]
    triggers += [(opened, (compile_filter("labels", {"exclude": ["wip"]}), compile_filter("draft", False))),
                 (both, (compile_filter("labels", "bug"), compile_filter("tag", {"starts_with": "v"}))),
                 (both, (compile_filter("title", {"matches": "Fix.*"}),
                         compile_filter("author", {"one_of": ["octocat"]}))),
                 ((("release", "published"),), (compile_filter("prerelease", True),)), (opened, ())]
    deliveries = [("pull_request", "opened", pr()), ("pull_request", "closed", pr()),
                  ("pull_request", "synchronize", pr(draft=True, labels=[{"name": "wip"}])),
                  ("release", "published", release()), ("release", "created", release(name=None))]
    for event, action, payload in deliveries:
        matcher = Matcher(event, action, payload)
        for events, filters in triggers * 2:  # twice: the second time from what the Matcher kept
            expected = _one_by_one(events, filters, event, action, payload)
            assert matcher.why_not(events, filters) == expected
            assert matcher.match(events, filters) == Match(expected is None, expected)
            assert match_delivery(events, filters, event, action, payload) == Match(expected is None, expected)


def test_the_index_rules_out_only_what_could_not_match_and_says_why():
    # A delivery meets only the routines its event and repository can match; the others get the reason
    # the full match would give them (their repository filter comes first here, so it is the same one).
    from types import SimpleNamespace as T
    opened = (("pull_request", "opened"), ("pull_request", "synchronize"))
    both = (("pull_request", None), ("release", None))

    def trigger(events, *filters, enabled=True):
        return T(events=events, filters=tuple(compile_filter(n, v) for n, v in filters), enabled=enabled)

    entries = [
        ("api", True, [trigger(opened, ("repository", "Acme/API"), ("base", "main"))]),
        ("web", True, [trigger(opened, ("repository", "acme/web"))]),
        ("releases", True, [trigger((("release", "published"),), ("repository", "acme/api"))]),
        ("any-repo", True, [trigger(both, ("labels", "bug"))]),                       # no repository: examined
        ("regex-repo", True, [trigger(opened, ("repository", {"matches": "acme/.*"}))]),  # not a plain value
        ("two", True, [trigger(opened, ("repository", "acme/web")), trigger(both, ("repository", "acme/api"))]),
        ("off", True, [trigger(opened, ("repository", "acme/api"), enabled=False)]),
        ("paused", False, [trigger(opened, ("repository", "acme/api"))]),
    ]
    index = TriggerIndex([(name, enabled, triggers, name) for name, enabled, triggers in entries])
    deliveries = [("pull_request", "opened", pr()), ("pull_request", "closed", pr()),
                  ("pull_request", "opened", {**pr(), "repository": {"full_name": "ACME/web"}}),
                  ("pull_request", "opened", {"pull_request": pr()["pull_request"]}),  # no repository at all
                  ("release", "published", release()), ("issues", "opened", {"action": "opened"})]
    for event, action, payload in deliveries:
        matcher = Matcher(event, action, payload)
        examined, ruled_out = index.split(matcher)
        expanded = {r["routine"]: r["reason"] for r in expand_ruled_out(ruled_out)}
        assert [n for n, _, _ in entries if n in examined] == examined  # in their order
        assert sorted([*examined, *expanded]) == sorted(n for n, _, _ in entries)  # each routine once
        for name, enabled, triggers in entries:
            if name not in expanded:
                continue
            if not enabled:
                assert expanded[name] == "the routine is paused"
            elif event not in ("pull_request", "release"):
                assert expanded[name] == "routines take pull_request and release events, not issues"
            else:  # the full match says no, and says the same
                assert [matcher.why_not(t.events, t.filters) for t in triggers] == [expanded[name]], (event, name)
    api = Matcher("pull_request", "opened", {**pr(), "repository": {"full_name": "acme/web"}})
    examined, ruled_out = index.split(api)
    assert examined == ["web", "any-repo", "regex-repo", "two", "off"]
    assert {r["routine"]: r["reason"] for r in expand_ruled_out(ruled_out)}["api"] == (
        "repository is 'acme/web', not 'Acme/API'")


@pytest.mark.parametrize("name, value, message", [
    ("colour", "x", "unknown GitHub filter 'colour'"),
    ("titel", "x", "did you mean 'title'"),
    ("title", {"matches": "(x"}, "not a valid regular expression"),
    ("title", {"match": "x"}, "did you mean 'matches'"),
    ("title", {}, "a table of operators"),
    ("title", 3, "must be a string (equals)"),
    ("title", {"one_of": "x"}, "non-empty list of strings"),
    ("labels", {"with": ["x"]}, "use include and exclude"),
    ("labels", {"include": [1]}, "list of label names"),
    ("merged", "yes", "true or false"),
])
def test_bad_filters(name, value, message):
    with pytest.raises(FilterError, match=re.escape(message)):
        compile_filter(name, value)


def test_a_bad_regex_says_where():
    with pytest.raises(FilterError) as info:
        compile_filter("title", {"matches": "ab[c"})
    assert info.value.position == 2 and info.value.key == "matches"


@given(st.text(max_size=30), st.text(min_size=1, max_size=5))
def test_matches_is_the_whole_value(text, extra):
    payload = pr(title=text)
    assert check("title", {"matches": re.escape(text)}, payload) is None
    assert check("title", {"matches": re.escape(text + extra)}, payload) is not None
    assert (check("title", {"one_of": [text]}, payload) is None) and check("title", {"not_one_of": [text]}, payload)


def test_the_prompt_gets_the_essentials():
    text = event_context("pull_request", pr(labels=[{"name": "bug"}]), "abc-123")
    assert text.splitlines() == [
        "GitHub event: pull_request.opened (delivery abc-123)", "Repository: Acme/API",
        "Pull request #7: Fix the hotfix path", "URL: https://github.com/acme/api/pull/7", "Author: octocat",
        "Base: main  Head: fix/path (0123456789ab)", "Labels: bug"]
    text = event_context("release", release(prerelease=True))
    assert "Release: 1.2 (tag v1.2.0)" in text and "State: prerelease" in text and "Target: main" in text
