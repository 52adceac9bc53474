"""The pure ACP part: requests checked against the official SDK's schema, updates, permissions, stop reasons."""

from __future__ import annotations

import json

import pytest
from acp import helpers, schema

from bgcore.jsonrpc import RpcError
from bgd.agents import acp_lines as acp
from bgd.agents.acp_lines import CostReport, Entry, Said


def dump(model) -> dict:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def notification(update) -> dict:
    return dump(schema.SessionNotification(session_id="s1", update=update))


# -- requests are what the schema says ------------------------------------------------------

def test_initialize_declares_no_file_system_and_no_terminal():
    params = acp.initialize_params("0.1.0")
    request = schema.InitializeRequest.model_validate(params)
    assert request.protocol_version == 1
    assert request.client_capabilities.fs.read_text_file is False
    assert request.client_capabilities.fs.write_text_file is False
    assert request.client_capabilities.terminal is False
    assert request.client_info.name == "bgagents"


def test_session_new_carries_the_cwd_and_the_daemons_mcp_server():
    config = json.dumps({"mcpServers": {"bgagents": {
        "command": "/usr/bin/python3", "args": ["-m", "bgd.agents.mcp_server", "--session", "abc"],
        "env": {"BGD_SOCKET": "/run/bgd.sock"}}}})
    servers = acp.mcp_servers(config)
    request = schema.NewSessionRequest.model_validate(acp.new_session_params("/src/app", servers))
    assert request.cwd == "/src/app"
    (server,) = request.mcp_servers
    assert isinstance(server, schema.McpServerStdio)
    assert server.name == "bgagents" and server.command == "/usr/bin/python3"
    assert server.args[-1] == "abc" and [(e.name, e.value) for e in server.env] == [("BGD_SOCKET", "/run/bgd.sock")]
    assert acp.mcp_servers(None) == []


def test_prompt_cancel_load_resume_authenticate_validate():
    assert schema.PromptRequest.model_validate(acp.prompt_params("s1", "fix it")).prompt[0].text == "fix it"
    assert schema.CancelNotification.model_validate(acp.cancel_params("s1")).session_id == "s1"
    load = schema.LoadSessionRequest.model_validate(acp.load_session_params("s1", "/src", []))
    assert (load.session_id, load.cwd) == ("s1", "/src")
    assert schema.ResumeSessionRequest.model_validate(acp.resume_session_params("s1", "/src", [])).session_id == "s1"
    assert schema.AuthenticateRequest.model_validate(acp.authenticate_params("api-key")).method_id == "api-key"


@pytest.mark.parametrize("mode, modes, want", [
    ("default", None, (None, None)),
    ("plan", {"currentModeId": "default", "availableModes": [{"id": "default"}, {"id": "plan"}]}, ("plan", None)),
    ("plan", {"currentModeId": "plan", "availableModes": [{"id": "plan"}]}, (None, None)),
])
def test_the_permission_mode_becomes_the_agents_mode_of_that_name(mode, modes, want):
    assert acp.mode_to_set({"sessionId": "s", "modes": modes} if modes else {"sessionId": "s"}, mode) == want
    schema.SetSessionModeRequest.model_validate(acp.set_mode_params("s", "plan"))


def test_a_permission_mode_the_agent_lacks_is_said():
    _, note = acp.mode_to_set({"modes": {"currentModeId": "default", "availableModes": [{"id": "default"}]}},
                              "bypassPermissions")
    assert note == "the agent has no mode 'bypassPermissions' (it offers default); its mode 'default' applies"
    assert "offers no session modes" in acp.mode_to_set({"sessionId": "s"}, "plan")[1]


# -- initialize answers ----------------------------------------------------------------------

def test_initialize_answer_read_from_what_the_sdk_builds():
    answer = dump(schema.InitializeResponse(
        protocol_version=1,
        agent_capabilities=schema.AgentCapabilities(
            load_session=True, session_capabilities=schema.SessionCapabilities(resume=schema.SessionResumeCapabilities())),
        auth_methods=[schema.AuthMethodAgent(id="oauth", name="Log in with Google")],
        agent_info=schema.Implementation(name="gemini-cli", title="Gemini CLI", version="0.61.0")))
    info = acp.read_initialize(answer)
    assert (info.name, info.version, info.load_session, info.resume_session) == ("Gemini CLI", "0.61.0", True, True)
    assert info.continues == "session/resume"
    assert [m["id"] for m in info.auth_methods] == ["oauth"]
    assert acp.read_initialize({"protocolVersion": 1}).continues is None


def test_an_incompatible_protocol_version_is_refused_clearly():
    with pytest.raises(acp.AcpError, match="speaks ACP version 2, bgd speaks version 1"):
        acp.read_initialize({"protocolVersion": 2, "agentInfo": {"name": "future"}})
    with pytest.raises(acp.AcpError, match="no protocolVersion"):
        acp.read_initialize({"hello": "world"})


def test_refusals_carry_the_agents_own_message_and_what_to_do():
    info = acp.AgentInfo(1, auth_methods=[{"id": "chatgpt", "name": "Login with ChatGPT"},
                                          {"id": "codex-api-key", "name": "Use CODEX_API_KEY"}])
    text = acp.refusal("session/new", RpcError(-32000, "Authentication required"), info, "codex")
    assert text.startswith("Authentication required (session/new)")
    assert "auth_method under [agents.codex]" in text and "codex-api-key (Use CODEX_API_KEY)" in text
    text = acp.refusal("session/new", RpcError(-32000, "Authentication required"), info, "codex", "chatgpt")
    assert "after authenticate with 'chatgpt'" in text
    text = acp.refusal("session/prompt", RpcError(-32603, "Internal error", {"details": "quota exceeded"}), info, "x")
    assert text == "Internal error: quota exceeded (session/prompt)"


# -- session/update ---------------------------------------------------------------------------

def chunks(text: str, message_id: str | None = "m1", thought: bool = False):
    for word in text.split(" "):
        update = (helpers.update_agent_thought_text if thought else helpers.update_agent_message_text)(word + " ")
        update.message_id = message_id
        yield notification(update)


def test_chunks_of_one_message_become_one_assistant_entry_when_the_message_ends():
    updates = acp.Updates()
    out = [o for n in chunks("hello there world") for o in updates.feed(n)]
    # still streaming: no entry yet, but the beginning of the message as it grows
    assert out == [Said("hello "), Said("hello there "), Said("hello there world ")]
    call = notification(helpers.start_tool_call("t1", "Run ls", kind="execute", status="pending",
                                                raw_input={"command": "ls"}))
    out = updates.feed(call)
    assert out[0] == Entry("assistant", {"text": "hello there world ", "message_id": "m1"})
    assert out[1] == Said("hello there world ")
    assert out[2] == Entry("tool", {"id": "t1", "title": "Run ls", "status": "pending", "tool_kind": "execute",
                                    "input": {"command": "ls"}})


def test_a_new_message_id_or_kind_ends_the_message_and_flush_ends_the_last():
    updates = acp.Updates()
    out = [o for n in [*chunks("one", "a"), *chunks("two", "b"), *chunks("hmm", "b", thought=True)]
           for o in updates.feed(n)]
    assert [o.text for o in out if isinstance(o, Said)] == ["one ", "one ", "two ", "two "]
    assert [o for o in out if isinstance(o, Entry)] == [
        Entry("assistant", {"text": "one ", "message_id": "a"}), Entry("assistant", {"text": "two ", "message_id": "b"})]
    assert updates.flush() == [Entry("thought", {"text": "hmm ", "message_id": "b"})]
    assert updates.flush() == []


def test_chunks_without_message_ids_coalesce_until_something_else_arrives():
    updates = acp.Updates()
    for n in chunks("a b c", None):
        assert not [o for o in updates.feed(n) if isinstance(o, Entry)]
    assert updates.flush()[0] == Entry("assistant", {"text": "a b c "})


def test_only_the_head_of_a_long_message_is_reported_while_it_streams():
    updates = acp.Updates()
    said = [o for n in chunks("word " * 1000, "m") for o in updates.feed(n) if isinstance(o, Said)]
    assert said and all(len(o.text) <= acp.Updates.HEAD_CHARS + 10 for o in said) and len(said) < 100
    assert len(updates.flush()[1].text) > 5000


def test_tool_updates_carry_the_title_and_status_they_omit():
    updates = acp.Updates()
    updates.feed(notification(helpers.start_tool_call("t1", "Edit a.py", kind="edit", status="pending")))
    (progress,) = updates.feed(notification(helpers.update_tool_call("t1", status="in_progress")))
    assert progress.data == {"id": "t1", "title": "Edit a.py", "status": "in_progress", "tool_kind": "edit"}
    (done,) = updates.feed(notification(helpers.update_tool_call(
        "t1", status="completed", content=[helpers.tool_content(helpers.text_block("edited")),
                                           helpers.tool_diff_content("a.py", "new")])))
    assert done.data["status"] == "completed" and done.data["text"] == "edited\n[diff a.py]"


def test_plans_costs_and_other_updates():
    updates = acp.Updates()
    (plan,) = updates.feed(notification(helpers.update_plan([helpers.plan_entry("write tests", status="in_progress")])))
    assert plan == Entry("plan", {"entries": [{"content": "write tests", "priority": "medium", "status": "in_progress"}]})
    cost = schema.UsageUpdate(session_update="usage_update", used=10, size=100,
                              cost=schema.Cost(amount=0.42, currency="USD"))
    assert updates.feed(notification(cost)) == [CostReport(0.42, "USD")]
    assert updates.feed(notification(schema.UsageUpdate(session_update="usage_update", used=10, size=100))) == []
    (mode,) = updates.feed(notification(helpers.update_current_mode("plan")))
    assert mode.kind == "acp" and mode.data["update"]["currentModeId"] == "plan"
    assert updates.feed({"nonsense": True})[0].kind == "acp"


def test_non_text_content_is_a_placeholder():
    assert acp.content_text({"type": "image", "mimeType": "image/png", "data": ""}) == "[image/png]"
    assert acp.content_text({"type": "resource_link", "name": "a.py", "uri": "file:///a.py"}) == "[a.py]"


# -- permission requests ------------------------------------------------------------------------

OPTIONS = [schema.PermissionOption(option_id="yes", name="Allow", kind="allow_once"),
           schema.PermissionOption(option_id="always", name="Always", kind="allow_always"),
           schema.PermissionOption(option_id="no", name="Reject", kind="reject_once")]


def request_params(options=OPTIONS) -> dict:
    return dump(schema.RequestPermissionRequest(
        session_id="s1", options=options,
        tool_call=schema.ToolCallUpdate(tool_call_id="t1", title="Run rm -rf build", kind="execute",
                                        raw_input={"command": "rm -rf build"})))


def test_a_permission_request_becomes_pending_with_the_agents_own_options():
    pending = acp.permission_pending("7", request_params())
    assert pending == {"request_id": "7", "tool_name": "Run rm -rf build", "input": {"command": "rm -rf build"},
                       "kind": "permission", "tool_call_id": "t1", "tool_kind": "execute",
                       "options": [{"id": "yes", "name": "Allow", "kind": "allow_once"},
                                   {"id": "always", "name": "Always", "kind": "allow_always"},
                                   {"id": "no", "name": "Reject", "kind": "reject_once"}]}


@pytest.mark.parametrize("decision, always, kinds, chosen", [
    ("allow", False, ["allow_once", "allow_always", "reject_once"], "allow_once"),
    ("allow", True, ["allow_once", "allow_always", "reject_once"], "allow_always"),
    ("deny", False, ["allow_once", "allow_always", "reject_once"], "reject_once"),
    ("allow", True, ["allow_once", "reject_once"], "allow_once"),
    ("allow", False, ["allow_always", "reject_always"], "allow_always"),
    ("deny", False, ["allow_once", "reject_always"], "reject_always"),
    ("deny", False, ["allow_once"], None),
])
def test_decisions_pick_the_option_of_the_matching_kind(decision, always, kinds, chosen):
    options = [{"id": kind, "name": kind, "kind": kind} for kind in kinds]
    assert acp.choose_option(options, decision, always) == chosen


def test_permission_results_validate():
    selected = schema.RequestPermissionResponse.model_validate(acp.permission_result("yes"))
    assert selected.outcome.option_id == "yes"
    assert schema.RequestPermissionResponse.model_validate(acp.permission_result(None)).outcome.outcome == "cancelled"


# -- stop reasons --------------------------------------------------------------------------------

@pytest.mark.parametrize("reason, state, error", [
    ("end_turn", "completed", None),
    ("cancelled", "stopped", None),
    ("refusal", "failed", "refused"),
    ("max_tokens", "failed", "token limit"),
    ("max_turn_requests", "failed", "limit of model requests"),
])
def test_stop_reasons_become_states(reason, state, error):
    end = acp.turn_end(dump(schema.PromptResponse(stop_reason=reason)))
    assert end.state == state
    assert (end.error is None) if error is None else (error in end.error)


def test_an_unknown_stop_reason_fails_with_its_name_and_usage_is_read():
    assert acp.turn_end({"stopReason": "tea_break"}).error == "the turn ended with stopReason 'tea_break'"
    end = acp.turn_end(dump(schema.PromptResponse(stop_reason="end_turn", usage=schema.Usage(
        total_tokens=15, input_tokens=10, output_tokens=5))))
    assert end.usage == {"totalTokens": 15, "inputTokens": 10, "outputTokens": 5}
    assert acp.turn_end({"stopReason": "end_turn"}).usage is None
