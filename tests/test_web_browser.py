"""The web page in a real browser (SPEC §13): headless Chromium against a real bgd and the fake agent.

Each step waits for what a person would see (Playwright's expect polls the
DOM), and the page is never reloaded unless the step says so: a marker set on
`window` at the start must still be there at the end.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from web_helpers import Browser, chromium_or_skip, free_port, login_url, start_web_daemon

pytestmark = pytest.mark.slow
XSS_LINE = "<script>alert(1)</script>"
XSS_NAME = "<img src=x onerror=alert(2)>"
SHOTS = os.environ.get("BGAGENTS_WEB_SCREENSHOTS")  # a directory: save the README's screenshots there


@pytest.fixture
def browser():
    executable = chromium_or_skip()
    b = Browser(executable)
    yield b
    b.close()


def _no_reload_marker(page) -> None:
    page.evaluate("window.__still_here = true")


def _not_reloaded(page) -> bool:
    return page.evaluate("window.__still_here === true")


def test_login_dispatch_approve_reply_live(bgd, browser):
    from playwright.sync_api import expect

    base = start_web_daemon(bgd)
    url = login_url(bgd)
    assert re.fullmatch(re.escape(base) + r"/login\?code=[A-Za-z0-9_-]{20,}", url)
    page = browser.page
    page.goto(url)
    assert page.url == base + "/"
    cookie = next(c for c in browser.context.cookies() if c["name"] == f"bgagents_web_{base.rsplit(':', 1)[1]}")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    # The code worked once: a second visit is refused.
    assert browser.context.request.get(url, max_redirects=0).status == 401

    _no_reload_marker(page)
    page.fill("form.dispatch textarea[name=prompt]", 'sleep 1.5; tool Bash {"command": "make test"}; say all green')
    page.fill("form.dispatch input[name=cwd]", str(bgd.work))
    page.click("form.dispatch button[type=submit]")
    link = page.locator("#flash a")
    expect(link).to_have_attribute("href", re.compile(r"^/s/[a-z0-9]{8}$"))
    session_id = link.get_attribute("href").rsplit("/", 1)[1]
    row = f"#row-{session_id}"
    expect(page.locator(f"#group-working {row}")).to_be_visible()
    expect(page.locator(f"#group-needs_input {row}")).to_be_visible(timeout=15_000)
    expect(page.locator(f"{row} .ask")).to_contain_text("Bash")
    page.click(f"{row} button[value=allow]")
    expect(page.locator(f"#group-completed {row}")).to_be_visible(timeout=15_000)
    expect(page.locator(f"{row} .last")).to_have_text("all green")
    assert page.locator(f"#group-working {row}, #group-needs_input {row}").count() == 0
    assert _not_reloaded(page)

    # The session page: the whole transcript, then a reply whose lines stream in.
    page.click(f"{row} a.title")
    expect(page.locator("#session-head .badge")).to_have_text("completed")
    expect(page.locator("#transcript details.tool summary")).to_contain_text("make test")
    page.click("#transcript details.tool summary")
    expect(page.locator("#transcript details.tool .tool-result")).to_contain_text("ran Bash")
    _no_reload_marker(page)
    page.fill("form.reply textarea[name=text]", "say **bold** words; stream 3 300")
    page.click("form.reply button[type=submit]")
    expect(page.locator("#transcript .msg.user").last).to_contain_text("stream 3 300")
    expect(page.locator("#transcript .md strong").last).to_have_text("bold")
    for i in (1, 2, 3):
        expect(page.locator("#transcript .md", has_text=f"line {i}")).to_have_count(1, timeout=15_000)
    expect(page.locator("#session-head .badge")).to_have_text("completed", timeout=15_000)
    assert page.locator("form.reply textarea").input_value() == ""
    assert _not_reloaded(page)
    assert not browser.errors and not browser.dialogs


def test_question_and_deny_with_message(bgd, browser):
    from playwright.sync_api import expect

    start_web_daemon(bgd)
    browser.page.goto(login_url(bgd))
    asking = bgd.dispatch("ask deploy now?")
    denied = bgd.dispatch('tool Bash {"command": "rm -rf build"}')
    page = browser.page
    page.goto(page.url + f"s/{asking['id']}")
    expect(page.locator("#pending legend")).to_contain_text("deploy now?", timeout=15_000)
    page.click("#pending button[name=answer][value=yes]")
    expect(page.locator("#transcript .note.ok", has_text="answered AskUserQuestion: yes")).to_be_visible(timeout=15_000)
    expect(page.locator("#pending")).to_be_hidden()

    page.goto(page.url.rsplit("/s/", 1)[0] + f"/s/{denied['id']}")
    expect(page.locator("#pending h2")).to_contain_text("Bash", timeout=15_000)
    page.fill("#pending input[name=message]", "not on a Friday")
    page.click("#pending button[value=deny]")
    expect(page.locator("#transcript .note.error", has_text="not on a Friday")).to_be_visible(timeout=15_000)
    assert not browser.errors


def test_agent_output_and_names_are_text(bgd, browser):
    from playwright.sync_api import expect

    start_web_daemon(bgd)
    session = bgd.dispatch(f"say {XSS_LINE}; say [x](javascript:alert(3)) and <b>bold?</b>")
    bgd.wait_state(session["id"], "completed")
    bgd.rpc("session.rename", {"id": session["id"], "name": XSS_NAME})
    page = browser.page
    page.goto(login_url(bgd))
    expect(page.locator(f"#row-{session['id']} .title")).to_have_text(XSS_NAME)
    page.goto(page.url + f"s/{session['id']}")
    expect(page.locator("#session-head .title")).to_have_text(XSS_NAME)
    expect(page.locator("#transcript .md").first).to_have_text(XSS_LINE)
    assert page.locator("#transcript script, #transcript img, main img").count() == 0
    assert page.locator("#transcript a[href^='javascript']").count() == 0
    assert page.locator("#transcript b").count() == 0
    # A live line is escaped too.
    bgd.rpc("session.reply", {"id": session["id"], "text": f"say {XSS_LINE} live"})
    expect(page.locator("#transcript .md", has_text="live")).to_have_text(f"{XSS_LINE} live", timeout=15_000)
    page.wait_for_timeout(300)
    assert browser.dialogs == [] and not browser.errors


def test_tab_survives_a_daemon_restart(bgd, browser):
    from playwright.sync_api import expect

    port = free_port()
    start_web_daemon(bgd, port)
    session = bgd.dispatch("say before")
    bgd.wait_state(session["id"], "completed")
    page = browser.page
    page.goto(login_url(bgd))
    page.goto(page.url + f"s/{session['id']}")
    expect(page.locator("#transcript .md", has_text="before")).to_be_visible()
    _no_reload_marker(page)
    bgd.stop(signal.SIGTERM)
    expect(page.locator("#conn")).to_be_visible(timeout=15_000)
    bgd.start()
    expect(page.locator("#conn")).to_be_hidden(timeout=30_000)
    bgd.rpc("session.reply", {"id": session["id"], "text": "say after the restart"})
    expect(page.locator("#transcript .md", has_text="after the restart")).to_have_count(1, timeout=15_000)
    expect(page.locator("#session-head .badge")).to_have_text("completed", timeout=15_000)
    # Nothing twice: every entry of the transcript is on the page once.
    entries = bgd.rpc("session.transcript", {"id": session["id"]})["entries"]
    ids = page.eval_on_selector_all("#transcript .entry", "els => els.map(e => e.id)")
    assert len(ids) == len(set(ids))
    assert max(int(i.split("-")[1]) for i in ids) <= entries[-1]["n"]
    assert page.locator("#transcript .md", has_text="before").count() == 1
    assert _not_reloaded(page)


def test_a_background_tab_lets_its_stream_go_and_catches_up(bgd, browser):
    from playwright.sync_api import expect

    start_web_daemon(bgd)
    session = bgd.dispatch("say first")
    bgd.wait_state(session["id"], "completed")
    page = browser.page
    page.goto(login_url(bgd))
    page.goto(page.url + f"s/{session['id']}")
    _no_reload_marker(page)
    page.evaluate("""document.getElementById('live').setAttribute('data-pause-after', '50');
        Object.defineProperty(document, 'hidden', {value: true, configurable: true});
        document.dispatchEvent(new Event('visibilitychange'));""")
    page.wait_for_timeout(300)
    bgd.rpc("session.reply", {"id": session["id"], "text": "say while hidden"})
    bgd.wait_state(session["id"], "completed")
    page.wait_for_timeout(500)
    assert page.locator("#transcript .md", has_text="while hidden").count() == 0   # the stream was let go
    page.evaluate("""Object.defineProperty(document, 'hidden', {value: false, configurable: true});
        document.dispatchEvent(new Event('visibilitychange'));""")
    expect(page.locator("#transcript .md", has_text="while hidden")).to_have_count(1, timeout=15_000)
    assert page.locator("#transcript .md", has_text="first").count() == 1
    assert _not_reloaded(page) and not browser.errors


def test_index_follows_rows_from_other_clients(bgd, browser):
    """Created, renamed, pinned, removed elsewhere: the open index shows each, in its group."""
    from playwright.sync_api import expect

    start_web_daemon(bgd)
    page = browser.page
    page.goto(login_url(bgd))
    _no_reload_marker(page)
    session = bgd.dispatch("say hi")
    row = f"#row-{session['id']}"
    expect(page.locator(f"#group-completed {row}")).to_be_visible(timeout=15_000)
    bgd.rpc("session.rename", {"id": session["id"], "name": "renamed elsewhere"})
    expect(page.locator(f"{row} .title")).to_have_text("renamed elsewhere")
    bgd.rpc("session.pin", {"id": session["id"]})
    expect(page.locator(f"#group-pinned {row}")).to_be_visible()
    expect(page.locator(f"#group-completed {row}")).to_have_count(0)
    bgd.rpc("session.remove", {"id": session["id"]})
    expect(page.locator(row)).to_have_count(0)
    # A streaming session's row: its last message changes in place while it is working.
    streaming = bgd.dispatch("say one; sleep 1.5; say <i>two</i>; sleep 3; say three")
    row = f"#row-{streaming['id']}"
    expect(page.locator(f"#group-working {row} .last")).to_have_text("one", timeout=15_000)
    expect(page.locator(f"#group-working {row} .last")).to_have_text("<i>two</i>", timeout=15_000)
    expect(page.locator(f"#group-working {row} .badge")).to_have_text("working")
    expect(page.locator(f"#group-completed {row} .last")).to_have_text("three", timeout=15_000)
    assert _not_reloaded(page) and not browser.errors


def test_narrow_and_wide_screens_without_horizontal_scroll(bgd, browser):
    start_web_daemon(bgd)
    session = bgd.dispatch("say " + "a-very-long-unbroken-word" * 20 + '; tool Bash {"command": "' + "x" * 300 + '"}')
    bgd.wait_state(session["id"], "needs_input")
    page = browser.page
    page.goto(login_url(bgd))
    base = "/".join(page.url.split("/")[:3])
    for width in (360, 1920):
        page.set_viewport_size({"width": width, "height": 800})
        for path in ("/", f"/s/{session['id']}", "/tasks", "/routines"):
            page.goto(base + path)
            overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert overflow <= 0, f"{path} scrolls sideways by {overflow}px at {width}px"


def test_pages_read_without_javascript(bgd, browser):
    """Reading needs no script; a plain form post (no htmx) acts and comes back with the outcome."""
    from playwright.sync_api import expect

    start_web_daemon(bgd)
    session = bgd.dispatch('tool Bash {"command": "ls"}')
    bgd.wait_state(session["id"], "needs_input")
    url = login_url(bgd)
    context = browser.browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto(url)
        expect(page.locator(f"#group-needs_input #row-{session['id']}")).to_be_visible()
        page.goto(page.url + f"s/{session['id']}")
        expect(page.locator("#pending pre")).to_contain_text('"command": "ls"')
        page.click("#pending button[value=always]")
        expect(page.locator("#flash")).to_have_text("approved (always)")
        bgd.wait_state(session["id"], "completed")
        page.reload()
        expect(page.locator("#session-head .badge")).to_have_text("completed")
        expect(page.locator("#transcript")).to_contain_text("allowed Bash (always)")
    finally:
        context.close()


def test_tasks_page_shows_next_fires_and_skips(bgd, browser):
    from playwright.sync_api import expect

    start_web_daemon(bgd)
    task = bgd.rpc("task.add", {"name": "nightly", "schedule": "daily at 02:30", "cwd": str(bgd.work),
                                "prompt": "say nightly run"})
    assert task["next_at"]
    page = browser.page
    page.goto(login_url(bgd))
    page.goto(page.url + "tasks")
    expect(page.locator("#task-nightly h2")).to_have_text("nightly")
    expect(page.locator("#task-nightly")).to_contain_text("next fire")
    expect(page.locator("#task-nightly")).to_contain_text(task["next_at"][:10])
    _no_reload_marker(page)
    page.click("#task-nightly button[type=submit]")
    expect(page.locator("#task-nightly table.runs")).to_contain_text("ran", timeout=15_000)
    assert _not_reloaded(page)


@pytest.mark.skipif(not SHOTS, reason="set BGAGENTS_WEB_SCREENSHOTS=docs to remake the README's screenshots")
def test_screenshots_for_the_readme(bgd, browser):
    """docs/web-index.png and docs/web-session.png, from sessions like a person's."""
    from playwright.sync_api import expect

    start_web_daemon(bgd, env={"HOME": str(bgd.base)})   # directories show as ~/work
    api = bgd.work / "api"
    api.mkdir()
    named = [
        ("fix the flaky login test", "say The login test waits on a real clock; I will fake it.; "
                                     'tool Bash {"command": "npm test -- login.spec.ts"}'),
        ("bump the lockfile", "say Updated **14** packages; the tests pass."),
        ("release notes for 2.4", "say Drafted `RELEASE.md` from the merged PRs; fail the changelog is missing 2.3"),
        ("which database for the cache?", "ask Redis or SQLite for the cache?"),
    ]
    ids = []
    for name, prompt in named:
        session = bgd.dispatch(prompt, name=name, cwd=str(api if "lockfile" in name else bgd.work))
        ids.append(session["id"])
    bgd.wait_state(ids[0], "needs_input")
    bgd.wait_state(ids[3], "needs_input")
    bgd.rpc("session.pin", {"id": ids[1]})
    story = bgd.dispatch("say I read `src/auth/session.ts` first.; "
                         'tool Read {"file_path": "src/auth/session.ts"}; '
                         "say The token refresh races the logout:\n\n1. `refresh()` starts\n2. `logout()` clears"
                         " the store\n3. `refresh()` writes the old token back\n\nI will guard it with the store's"
                         " generation.; "
                         'tool Edit {"file_path": "src/auth/session.ts", "old_string": "store.set(token)", '
                         '"new_string": "if (store.generation === gen) store.set(token)"}; say Done: the race is closed.',
                         name="fix the logout race")
    bgd.wait_state(story["id"], "needs_input")
    bgd.rpc("session.respond", {"id": story["id"], "decision": "allow"})
    bgd.wait_session(story["id"], lambda s: s["state"] == "needs_input" and s["pending"]["tool_name"] == "Edit")
    bgd.rpc("session.respond", {"id": story["id"], "decision": "allow"})
    bgd.wait_state(story["id"], "completed")
    bgd.rpc("session.reply", {"id": story["id"], "text": "say Added a test for it too.; "
                              'tool Bash {"command": "npm test -- session.spec.ts"}'})
    bgd.wait_state(story["id"], "needs_input")
    page = browser.page
    page.set_viewport_size({"width": 1100, "height": 900})
    page.goto(login_url(bgd))
    expect(page.locator(f"#group-needs_input #row-{ids[0]}")).to_be_visible()
    page.screenshot(path=str(Path(SHOTS) / "web-index.png"), full_page=True)
    page.goto(page.url + f"s/{story['id']}")
    page.click("#transcript details.tool >> nth=1")
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(Path(SHOTS) / "web-session.png"), full_page=True)


def test_an_acp_agents_transcript(bgd, browser):
    """Agents on the ACP backend: coalesced messages, thoughts, plans, tool calls with their permission."""
    import json
    import sys

    from playwright.sync_api import expect

    fake_acp = Path(__file__).parent / "fake_acp.py"
    start_web_daemon(bgd, extra=f'[agents.acp]\nbackend = "acp"\n'
                                f'command = [{json.dumps(sys.executable)}, {json.dumps(str(fake_acp))}]\n')
    session = bgd.dispatch('think the cache is stale; plan clear it | test it; say Clearing **now**; '
                           'tool Clear {"command": "rm -rf .cache"}', agent="acp")
    page = browser.page
    page.goto(login_url(bgd))
    page.goto(page.url + f"s/{session['id']}")
    expect(page.locator("#pending")).to_contain_text("Clear", timeout=15_000)
    page.click("#pending button[value=allow]")
    expect(page.locator("#session-head .badge")).to_have_text("completed", timeout=15_000)
    expect(page.locator("#transcript .md strong")).to_have_text("now")
    expect(page.locator("#transcript details.thought")).to_contain_text("the cache is stale")
    expect(page.locator("#transcript .plan li").first).to_contain_text("clear it")
    expect(page.locator("#transcript details.tool summary").first).to_contain_text("Clear")
    expect(page.locator("#transcript")).to_contain_text("allowed Clear")
    assert not browser.errors


def test_routine_runs_show_status_and_outcome(bgd, browser, tmp_path):
    from playwright.sync_api import expect

    from routine_helpers import make_remote, wait_run

    remote = make_remote(tmp_path)
    report = ('mcp mcp__bgagents__report_outcome {"status": "needs_attention", "summary": "tests fail on main"}; '
              "say reported")
    (bgd.config_dir / "routines.toml").write_text(
        f'[routines.reporter]\nprompt = "{report.replace(chr(34), chr(92) + chr(34))}"\nrepos = ["{remote}"]\n'
        '[[routines.reporter.triggers]]\nschedule = "daily at 03:00"\n'
        f'[routines.quiet]\nprompt = "say nothing to report"\nrepos = ["{remote}"]\n'
        '[[routines.quiet.triggers]]\napi = true\n')
    start_web_daemon(bgd, extra="[routines]\nstagger = false\n")
    runs = {name: bgd.rpc("routine.run", {"name": name}) for name in ("reporter", "quiet")}
    reported = wait_run(bgd, runs["reporter"]["id"], lambda r: r["outcome"] != "unreported" and r["status"] == "finished")
    quiet = wait_run(bgd, runs["quiet"]["id"])
    page = browser.page
    page.goto(login_url(bgd))
    row = page.locator(f"#row-{reported['session_id']}")
    expect(row.locator(".runline")).to_contain_text("finished")
    expect(row.locator(".runline .oc")).to_have_text("needs_attention")
    expect(row.locator(".runline")).to_contain_text("tests fail on main")
    expect(page.locator(f"#row-{quiet['session_id']} .runline .oc")).to_have_text("unreported")
    page.goto(reported["session_url"])                     # what a routine's fire answers with
    expect(page.locator("#session-head .runline")).to_contain_text("needs_attention")
    page.goto(page.url.split("/s/")[0] + "/routines")
    expect(page.locator("#routine-reporter")).to_contain_text("schedule at 03:00 every day")
    expect(page.locator("#routine-reporter")).to_contain_text("next fire")
    expect(page.locator("#routine-quiet")).to_contain_text("API")
    expect(page.locator("table.runs").first).to_contain_text("needs_attention")
    expect(page.locator("table.runs").first).to_contain_text("tests fail on main")
    assert not browser.errors
