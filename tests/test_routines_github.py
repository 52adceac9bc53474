"""GitHub deliveries end to end, with GitHub's own example payloads (@octokit/webhooks-examples): the
signature, ping, every event the routines listen to with their filters, the per-routine record of
why a delivery matched or not, dedupe of redeliveries, the hourly cap, and a paused routine."""

from __future__ import annotations

import json

import httpx
import pytest

from routine_helpers import deliver, example, examples, make_remote, start_routine_daemon, wait_run


def github_routine(name: str, remote, events: list[str], filters: str = "", extra: str = "") -> str:
    return (f'[routines.{name}]\nprompt = "say reviewed"\nrepos = ["{remote}"]\n{extra}\n'
            f'[[routines.{name}.triggers]]\ngithub = {json.dumps(events)}\n{filters}\n')


@pytest.fixture
def github(bgd, tmp_path):
    events = examples()
    remote = make_remote(tmp_path)
    toml = "".join([
        github_routine("opened", remote, ["pull_request.opened"],
                       'repository = "codertocat/hello-world"\nbase = "master"\ndraft = false\n'
                       'author = { one_of = ["Codertocat", "hubot"] }\nlabels = { exclude = ["wip"] }'),
        github_routine("merged", remote, ["pull_request.closed"], "merged = true"),
        github_routine("labeled", remote, ["pull_request.labeled"], 'labels = { include = ["bug"] }'),
        github_routine("synced", remote, ["pull_request.synchronize"],
                       'head = { starts_with = "chan" }\ntitle = { contains = "README" }'),
        github_routine("ready", remote, ["pull_request.ready_for_review"], 'title = { matches = "Update .*" }'),
        github_routine("released", remote, ["release.published"],
                       'tag = { matches = "[0-9]+\\\\.[0-9]+\\\\.[0-9]+" }\nprerelease = false'),
        github_routine("never", remote, ["pull_request.opened"], 'base = "develop"'),
    ])
    url = start_routine_daemon(bgd, toml)
    with httpx.Client(timeout=30) as client:
        yield bgd, url, client, events


def test_every_event_with_its_filters(github):
    bgd, url, client, events = github
    merged = example(events, "pull_request", "closed")
    merged["pull_request"].update(merged=True, merged_at="2019-05-15T15:20:33Z")  # the package has no merged one
    cases = [("pull_request", example(events, "pull_request", "opened"), "opened"),
             ("pull_request", merged, "merged"),
             ("pull_request", example(events, "pull_request", "labeled"), "labeled"),
             ("pull_request", example(events, "pull_request", "synchronize"), "synced"),
             ("pull_request", example(events, "pull_request", "ready_for_review"), "ready"),
             ("release", example(events, "release", "published"), "released")]
    runs = {}
    for event, payload, routine in cases:
        answer = deliver(client, url, event, payload, delivery=f"d-{routine}")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["matched"] == [routine] and body["duplicate"] is False, (routine, body)
        runs[routine] = body["runs"][0]
    for routine, run_id in runs.items():
        rec = wait_run(bgd, run_id)
        assert (rec["status"], rec["trigger"], rec["delivery"]) == ("finished", "github", f"d-{routine}")
    prompt = bgd.rpc("session.transcript", {"id": wait_run(bgd, runs["opened"])["session_id"]})["entries"][0]["data"]["text"]
    assert "GitHub event: pull_request.opened (delivery d-opened)" in prompt
    assert "Repository: Codertocat/Hello-World" in prompt and "Pull request #2: Update the README" in prompt
    assert "URL: https://github.com/Codertocat/Hello-World/pull/2" in prompt and "Base: master  Head: changes" in prompt

    # A closed pull request that was not merged, and the opened one for the routine that wants develop.
    answer = deliver(client, url, "pull_request", example(events, "pull_request", "closed"), delivery="d-closed")
    assert answer.json()["matched"] == []
    records = {d["id"]: d for d in bgd.rpc("routine.deliveries", {"limit": 50})}
    why = {r["routine"]: r["reason"] for r in records["d-closed"]["results"]}
    assert why["merged"] == "merged is false, not true"
    assert why["opened"] == "event pull_request.closed is not one of pull_request.opened"
    never = {r["routine"]: r for r in records["d-opened"]["results"]}["never"]
    assert never == {"routine": "never", "matched": False, "reason": "base is 'master', not 'develop'"}
    text = bgd.ctl("routine", "deliveries").stdout
    assert "d-closed  pull_request.closed  Codertocat/Hello-World" in text
    assert "✗ merged: merged is false, not true" in text and f"✓ opened: run {runs['opened']}" in text

    # The routine.delivery event carries the matched routines' results and how many routines looked;
    # every routine's reason is in routine.deliveries.
    seen = {}
    with bgd.client() as c:
        c.sock.settimeout(20)
        c.call("events.subscribe", {"since": 0, "types": ["routine.delivery"]})
        notes = c.notifications_iter()
        while "d-closed" not in seen:
            note = next(notes)
            if note.method == "event":
                seen[note.params["delivery"]["id"]] = note.params["delivery"]
    assert seen["d-opened"]["results"] == [r for r in records["d-opened"]["results"] if r["matched"]]
    assert [r["routine"] for r in seen["d-opened"]["results"]] == ["opened"]
    assert seen["d-closed"]["results"] == [] and seen["d-closed"]["routines"] == 7


def test_signatures_ping_and_bad_deliveries(github, bgd):
    _, url, client, events = github
    payload = example(events, "pull_request", "opened")
    forged = deliver(client, url, "pull_request", payload, signature="sha256=" + "0" * 64)
    assert forged.status_code == 401 and forged.json()["error"]["type"] == "unauthorized"
    assert deliver(client, url, "pull_request", payload, signature="").status_code == 401
    # The secret was rotated: a delivery signed with the old one is refused.
    (bgd.config_dir / "github.secret").write_text("a new secret\n")
    stale = deliver(client, url, "pull_request", payload)
    assert stale.status_code == 401 and "X-Hub-Signature-256" in stale.json()["error"]["message"]
    assert deliver(client, url, "pull_request", payload, secret=b"a new secret").status_code == 200
    ping = deliver(client, url, "ping", example(events, "ping"), secret=b"a new secret")
    assert ping.status_code == 200 and ping.json()["type"] == "ping" and ping.json()["zen"]
    bad = deliver(client, url, "pull_request", b"{not json", secret=b"a new secret")
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "bad_request"
    other = deliver(client, url, "issues", example(events, "issues", "opened"), secret=b"a new secret")
    assert other.status_code == 200 and other.json()["matched"] == []
    assert bgd.rpc("daemon.status")["http"]["listening"]


def test_the_same_delivery_fifty_times_starts_one_run(github):
    bgd, url, client, events = github
    payload = example(events, "pull_request", "labeled")
    answers = [deliver(client, url, "pull_request", payload, delivery="same-id").json() for _ in range(50)]
    assert answers[0]["duplicate"] is False and all(a["duplicate"] for a in answers[1:])
    labeled = [r for r in bgd.rpc("routine.runs", {"name": "labeled"})]
    assert len(labeled) == 1
    record = next(d for d in bgd.rpc("routine.deliveries") if d["id"] == "same-id")
    assert record["duplicates"] == 49
    assert "(+49 redeliveries, ignored)" in bgd.ctl("routine", "deliveries").stdout


def test_the_hourly_cap_and_a_paused_routine(bgd, tmp_path):
    events = examples()
    remote = make_remote(tmp_path)
    toml = (github_routine("capped", remote, ["pull_request"], "hourly_cap = 1")
            + github_routine("resting", remote, ["pull_request"], "", extra="enabled = false"))
    url = start_routine_daemon(bgd, toml)
    payload = example(events, "pull_request", "opened")
    with httpx.Client(timeout=30) as client:
        first = deliver(client, url, "pull_request", payload, delivery="one").json()
        second = deliver(client, url, "pull_request", payload, delivery="two").json()
    assert first["matched"] == ["capped"] and second["matched"] == ["capped"]
    runs = bgd.rpc("routine.runs", {"name": "capped"})
    assert [(r["delivery"], r["reason"]) for r in runs if r["status"] == "skipped"] == [("two", "rate_limited")]
    assert [r["delivery"] for r in runs if r["status"] != "skipped"] == ["one"]
    record = next(d for d in bgd.rpc("routine.deliveries") if d["id"] == "two")
    results = {r["routine"]: r for r in record["results"]}
    assert results["capped"]["reason"] == "rate_limited" and results["capped"]["status"] == "skipped"
    assert results["resting"] == {"routine": "resting", "matched": False, "reason": "the routine is paused"}


def test_the_payload_read_for_routines_says_what_the_whole_payload_says():
    # fires.read_payload decodes only the fields routines use: every filter's value and the prompt's
    # context must be what they are from the whole payload, for each of GitHub's own examples.
    from bgcore.github import FIELDS, event_context, field_value
    from bgd.routines.fires import Refusal, read_payload
    events = examples()
    checked = 0
    for event in ("pull_request", "release", "issues", "ping"):
        for payload in events[event]:
            body = json.dumps(payload).encode()
            small = read_payload(body)
            assert small.get("action") == payload.get("action")
            assert (small.get("repository") or {}).get("full_name") == (payload.get("repository") or {}).get("full_name")
            for name in FIELDS:
                assert field_value(name, event, small) == field_value(name, event, payload), (event, name)
            assert event_context(event, small, "d") == event_context(event, payload, "d")
            checked += 1
    assert checked > 20
    assert read_payload(b'{"pull_request": {"user": "not an object"}}') == {"pull_request": {"user": "not an object"}}
    for bad in (b"{not json", b"[1, 2]", b'"text"'):
        with pytest.raises(Refusal) as refused:
            read_payload(bad)
        assert refused.value.status == 400
