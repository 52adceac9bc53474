"""The ACP driver against a stand-in RunControl, on trio's virtual clock: the handshake, its timeout,
continuing a conversation, permissions queued and cancelled, follow-ups. No processes."""

from __future__ import annotations

import json

import pytest
import trio

from bgcore.config import AgentConfig
from bgcore.jsonrpc import encode_error, encode_notification, encode_request, encode_result, RpcError
from bgd.agents.acp import Driver
from bgd.sessions.model import Session

AGENT = AgentConfig("fake", "acp", ("fake-acp",), start_timeout_s=5.0)
INIT = {"protocolVersion": 1, "agentCapabilities": {"loadSession": True}, "agentInfo": {"name": "fake"}}


class Ctl:
    """Records what the driver tells the runner; `written` is everything sent to the agent's stdin."""

    def __init__(self, nursery, session):
        self.nursery = nursery
        self.session = session
        self.stopping = False
        self.written: list[dict] = []
        self.entries: list[tuple[str, dict]] = []
        self.asked: list[dict] = []
        self.done: list[dict] = []
        self.failed: list[str] = []
        self.said: list[str] = []
        self.usage: list = []
        self.wrote = trio.Event()

    def record(self, kind, data): self.entries.append((kind, data))
    def assistant(self, text): self.said.append(text)
    def ask(self, pending): self.asked.append(pending)
    def withdraw(self, request_id): pass
    def turn_done(self, **kw): self.done.append(kw)
    def fail(self, error, *, stop=True): self.failed.append(error)
    def died(self, code): self.failed.append(f"died {code}")
    def stderr_tail(self): return ""
    def send(self, obj): self.written.append(obj)
    def start_soon(self, fn, *args): self.nursery.start_soon(fn, *args)
    def add_usage(self, tokens): self.usage.append(tokens)

    def set_agent_session(self, agent_session_id):
        self.session.agent_session_id = agent_session_id
        self.session.has_history = True

    async def write(self, obj):
        self.written.append(obj)
        self.wrote.set()
        self.wrote = trio.Event()
        return True

    async def next_request(self, method: str) -> dict:
        while True:
            for obj in self.written:
                if obj.get("method") == method and not obj.get("_seen"):
                    obj["_seen"] = True
                    return obj
            await self.wrote.wait()


def line(data: bytes) -> bytes:
    return data.rstrip(b"\n")


async def opened(nursery, session=None, agent=AGENT, init=INIT):
    """A driver whose handshake has gone through, waiting in its first session/prompt."""
    session = session or Session(id="s1", cwd="/src", agent="fake", backend="acp", prompt="hi")
    ctl = Ctl(nursery, session)
    driver = Driver(agent, session, ctl)
    driver.launch("hi", json.dumps({"mcpServers": {"bgagents": {"command": "/bin/mcp", "args": [], "env": {}}}}))
    await driver.started("hi")
    request = await ctl.next_request("initialize")
    driver.line(line(encode_result(request["id"], init)))
    return driver, ctl


async def test_the_handshake_opens_a_session_with_the_mcp_server_and_sends_the_prompt(nursery):
    driver, ctl = await opened(nursery)
    new = await ctl.next_request("session/new")
    assert new["params"] == {"cwd": "/src", "mcpServers": [{"name": "bgagents", "command": "/bin/mcp",
                                                            "args": [], "env": []}]}
    driver.line(line(encode_result(new["id"], {"sessionId": "a1"})))
    prompt = await ctl.next_request("session/prompt")
    assert prompt["params"] == {"sessionId": "a1", "prompt": [{"type": "text", "text": "hi"}]}
    assert ctl.session.agent_session_id == "a1" and ctl.session.has_history
    driver.line(line(encode_notification("session/update", {"sessionId": "a1", "update": {
        "sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": "done"}}})))
    driver.line(line(encode_result(prompt["id"], {"stopReason": "end_turn"})))
    assert ctl.entries == [("assistant", {"text": "done"})]
    assert ctl.done == [{"error": None, "cost_usd": None, "turns": 1}]


async def test_initialize_unanswered_fails_after_the_start_timeout(nursery, autojump_clock):
    session = Session(id="s1", cwd="/src", agent="fake", backend="acp", prompt="hi")
    ctl = Ctl(nursery, session)
    driver = Driver(AGENT, session, ctl)
    driver.launch("hi", None)
    start = trio.current_time()
    await driver.started("hi")
    await ctl.next_request("initialize")
    while not ctl.failed:
        await trio.sleep(0.5)
    assert trio.current_time() - start == pytest.approx(5.0, abs=0.6)
    assert ctl.failed[0].startswith("the agent did not answer initialize within 5 s; check that [agents.fake]")


async def test_the_process_ending_during_the_handshake_is_reported_once(nursery):
    session = Session(id="s1", cwd="/src", agent="fake", backend="acp", prompt="hi")
    ctl = Ctl(nursery, session)
    driver = Driver(AGENT, session, ctl)
    driver.launch("hi", None)
    await driver.started("hi")
    await ctl.next_request("initialize")
    driver.exited(1)
    await trio.testing.wait_all_tasks_blocked()
    assert ctl.failed == ["died 1"]


async def test_a_known_conversation_is_loaded_and_its_replay_not_recorded(nursery):
    session = Session(id="s1", cwd="/src", agent="fake", backend="acp", prompt="hi", agent_session_id="a1",
                      has_history=True)
    driver, ctl = await opened(nursery, session)
    load = await ctl.next_request("session/load")
    assert load["params"]["sessionId"] == "a1"
    for text in ("old question", "old answer"):
        driver.line(line(encode_notification("session/update", {"sessionId": "a1", "update": {
            "sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": text}}})))
    driver.line(line(encode_result(load["id"], None)))
    await ctl.next_request("session/prompt")
    assert ctl.entries == [("daemon", {"event": "continued",
                                       "detail": "session/load a1 (2 updates of its history replayed, not recorded again)"})]


async def test_a_refused_load_falls_back_to_a_fresh_session_and_says_why(nursery):
    session = Session(id="s1", cwd="/src", agent="fake", backend="acp", prompt="hi", agent_session_id="a1",
                      has_history=True)
    driver, ctl = await opened(nursery, session)
    load = await ctl.next_request("session/load")
    driver.line(line(encode_error(load["id"], RpcError(-32002, "Resource not found"))))
    new = await ctl.next_request("session/new")
    driver.line(line(encode_result(new["id"], {"sessionId": "a2"})))
    await ctl.next_request("session/prompt")
    assert ctl.entries == [("daemon", {"event": "fresh ACP session",
                                       "detail": "session/load of the earlier conversation failed: "
                                                 "Resource not found (session/load)"})]
    assert session.agent_session_id == "a2"


async def prompting(nursery):
    driver, ctl = await opened(nursery)
    new = await ctl.next_request("session/new")
    driver.line(line(encode_result(new["id"], {"sessionId": "a1"})))
    prompt = await ctl.next_request("session/prompt")
    return driver, ctl, prompt


def permission(request_id: int, title: str) -> bytes:
    return line(encode_request("session/request_permission", {
        "sessionId": "a1", "toolCall": {"toolCallId": f"t{request_id}", "title": title},
        "options": [{"optionId": "y", "name": "Yes", "kind": "allow_once"},
                    {"optionId": "n", "name": "No", "kind": "reject_once"}]}, request_id))


async def test_permissions_asked_together_are_asked_one_at_a_time_and_stop_cancels_them(nursery):
    driver, ctl, _ = await prompting(nursery)
    driver.line(permission(0, "Lint"))
    driver.line(permission(1, "Test"))
    driver.line(permission(2, "Deploy"))
    assert [p["tool_name"] for p in ctl.asked] == ["Lint"]
    await driver.answer(ctl.asked[0], "allow", always=False, message=None, answer=None)
    assert ctl.written[-1] == {"jsonrpc": "2.0", "id": 0, "result": {"outcome": {"outcome": "selected", "optionId": "y"}}}
    assert [p["tool_name"] for p in ctl.asked] == ["Lint", "Test"]
    await driver.interrupt()
    cancelled = [o for o in ctl.written if o.get("result") == {"outcome": {"outcome": "cancelled"}}]
    assert sorted(o["id"] for o in cancelled) == [1, 2]
    assert ctl.written[-1] == {"jsonrpc": "2.0", "method": "session/cancel", "params": {"sessionId": "a1"}}


async def test_a_deny_message_is_the_next_prompt_and_the_turn_ends_after_it(nursery):
    driver, ctl, prompt = await prompting(nursery)
    driver.line(permission(0, "Write"))
    await driver.answer(ctl.asked[0], "deny", always=False, message="not that file", answer=None)
    assert ctl.written[-1]["result"] == {"outcome": {"outcome": "selected", "optionId": "n"}}
    driver.line(line(encode_result(prompt["id"], {"stopReason": "end_turn"})))
    follow_up = await ctl.next_request("session/prompt")
    assert follow_up["params"]["prompt"][0]["text"] == "not that file" and ctl.done == []
    assert ctl.entries[-1] == ("user", {"text": "not that file", "after": "denied"})
    driver.line(line(encode_result(follow_up["id"], {"stopReason": "end_turn", "usage": {"totalTokens": 9}})))
    assert ctl.done == [{"error": None, "cost_usd": None, "turns": 2}] and ctl.usage[-1] == {"totalTokens": 9}


async def test_a_cancelled_turn_the_daemon_did_not_ask_for_fails_and_one_it_did_is_quiet(nursery):
    driver, ctl, prompt = await prompting(nursery)
    driver.line(line(encode_result(prompt["id"], {"stopReason": "cancelled"})))
    assert "cancelled the turn on its own" in ctl.done[-1]["error"]
    assert await driver.turn("again")
    again = await ctl.next_request("session/prompt")
    ctl.stopping = True
    driver.line(line(encode_result(again["id"], {"stopReason": "cancelled"})))
    assert ctl.done[-1]["error"] is None


async def test_requests_the_client_does_not_offer_get_method_not_found(nursery):
    driver, ctl, _ = await prompting(nursery)
    driver.line(line(encode_request("terminal/create", {"command": "ls"}, 7)))
    assert ctl.written[-1]["id"] == 7 and ctl.written[-1]["error"]["code"] == -32601
    assert ctl.entries[-1] == ("acp", {"request": "terminal/create", "params": {"command": "ls"}})
    assert not ctl.failed


async def test_garbage_fails_and_a_stray_response_is_only_kept(nursery):
    driver, ctl, _ = await prompting(nursery)
    driver.line(b'{"jsonrpc":"2.0","id":99,"result":{}}')
    assert ctl.entries[-1][0] == "raw" and not ctl.failed
    driver.line(b"Loaded cached credentials.")
    assert ctl.failed and "non-JSON line" in ctl.failed[0] and "Loaded cached credentials." in ctl.failed[0]
