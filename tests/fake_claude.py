#!/usr/bin/env python3
"""A stand-in for the real ``claude`` CLI, for tests.

It speaks the stream-json protocol the daemon uses (SPEC §5.1) with the same
line shapes as Claude Code 2.1.197 (see docs/claude-cli-notes.md), but its
behaviour is scripted by the prompt text: the prompt is a sequence of
directives separated by ";" (a ";" inside a JSON object or a quoted string
does not split). Unknown text is echoed back as assistant text.

Directives:
  say TEXT                 assistant text TEXT
  tool NAME JSON           ask permission (control_request can_use_tool), then
                           run the fake tool on allow, report on deny
  sh COMMAND               the Bash tool for real: ask permission for
                           {"command": COMMAND}, then run it with /bin/sh in the
                           session's directory and environment; prints
                           "sh exit N: OUTPUT" (stdout and stderr, one line)
  ask QUESTION             AskUserQuestion through can_use_tool; prints "answer: X"
  fetch URL                the WebFetch tool for real: ask permission for {"url": URL},
                           then GET it with urllib (which takes HTTP_PROXY, HTTPS_PROXY
                           and NO_PROXY from the environment, as the real CLI does);
                           prints "fetch URL: STATUS" or "fetch URL: error: REASON"
  cancel-after SECONDS     (right after tool/ask/mcp) withdraw the pending request
                           with a control_cancel_request after SECONDS, then say
                           "withdrawn"
  sleep SECONDS            work that long; an interrupt ends the turn
  ignore-stop              ignore interrupts, stdin EOF, SIGTERM/SIGINT/SIGHUP;
                           sleep forever (only SIGKILL ends it)
  crash CODE               "fake crash" on stderr, exit CODE at once (no result)
  garbage                  print the non-JSON line "this is not json"
  bigline MB               one assistant line whose text is MB megabytes
  stream N INTERVAL_MS     N assistant messages "line i", INTERVAL_MS apart, each
                           with an extra top-level "ts" (time.time())
  fail TEXT                end the turn with subtype success, is_error true
  unknown                  print {"type":"weird_future_type","x":1}
  mcp TOOL JSON            call TOOL on the stdio MCP server from --mcp-config
                           (TOOL may be "mcp__SERVER__TOOL" to pick a server);
                           asks permission first as the real CLI does unless the
                           permission mode is bypassPermissions or --allowedTools
                           allows it; prints "mcp: TEXT" or "mcp error: MESSAGE"

Environment:
  FAKE_CLAUDE_ARGV_LOG     append {"argv","cwd","env_disable_cron"} per start
  FAKE_CLAUDE_STATE_DIR    remember sessions like the real CLI does under
                           ~/.claude/projects/<cwd>/: --session-id of a known
                           session fails ("already in use"), --resume of an
                           unknown one fails ("No conversation found ...")

Exit codes follow the real CLI: 0 at stdin EOF when the last turn succeeded, 1
when it ended in error (is_error), 1 for the usage errors the real CLI also
rejects (same messages), 143 on SIGTERM. Flags the real CLI would not reject
but the daemon must pass (-p, --input-format stream-json, --permission-prompt-tool
stdio, --session-id/--resume) are checked too: exit 2 with "fake_claude: ...".
"""

import json
import os
import signal
import sys
import threading
import time
import uuid

VERSION = "2.1.197"
PERMISSION_MODES = ("acceptEdits", "auto", "bypassPermissions", "default", "dontAsk", "plan")
MODEL_ALIASES = {
    "default": "claude-opus-4-8[1m]",
    "opus": "claude-opus-4-8[1m]",
    "sonnet": "claude-sonnet-5",
    "haiku": "claude-haiku-4-5-20251001",
}
TOOLS = [
    "Task", "AskUserQuestion", "Bash", "CronCreate", "CronDelete", "CronList", "Edit",
    "EnterPlanMode", "EnterWorktree", "ExitPlanMode", "ExitWorktree", "NotebookEdit", "Read",
    "ScheduleWakeup", "Skill", "TaskCreate", "TaskGet", "TaskList", "TaskOutput", "TaskStop",
    "TaskUpdate", "WebFetch", "WebSearch", "Write",
]
SLASH_COMMANDS = ["loop", "clear", "compact", "config", "context", "cost", "init", "review"]
AGENTS = ["claude", "Explore", "general-purpose", "Plan", "statusline-setup"]

# options of the real CLI that take one value / several values; anything else
# starting with "-" is a boolean flag (unknown flags are ignored)
VALUE_OPTS = {
    "--output-format", "--input-format", "--permission-prompt-tool", "--session-id",
    "--resume", "-r", "--permission-mode", "--model", "--append-system-prompt",
    "--system-prompt", "--settings", "--max-turns", "--fallback-model", "--setting-sources",
    "--agent", "--agents", "--effort", "--max-budget-usd", "--name", "-n",
}
MULTI_OPTS = {
    "--mcp-config", "--allowedTools", "--allowed-tools", "--disallowedTools",
    "--disallowed-tools", "--add-dir", "--tools", "--betas",
}


# ---------------------------------------------------------------- output

_out_lock = threading.Lock()


def _die(code):
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        pass
    os._exit(code)


def emit_raw(data):
    with _out_lock:
        try:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        except (BrokenPipeError, OSError, ValueError):
            _die(1)


def emit(obj):
    emit_raw(json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n")


def err(text):
    try:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except Exception:
        pass


def new_uuid():
    return str(uuid.uuid4())


def toolu_id():
    return "toolu_" + os.urandom(12).hex()


def now_iso():
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % int((t % 1) * 1000)


# ---------------------------------------------------------------- argv

def parse_argv(argv):
    opts = {}
    multi = {}
    flags = set()
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        if not a.startswith("-") or a == "-":
            continue  # positional prompt: ignored (stdin carries the messages)
        name, eq, val = a.partition("=")
        if name in VALUE_OPTS:
            if not eq:
                if i >= len(argv):
                    err("error: option '%s <value>' argument missing" % name)
                    _die(1)
                val = argv[i]
                i += 1
            opts[name] = val
        elif name in MULTI_OPTS:
            vals = [val] if eq else []
            while i < len(argv) and not argv[i].startswith("-"):
                vals.append(argv[i])
                i += 1
            multi.setdefault(name, []).extend(vals)
        else:
            flags.add(name)
    if "-r" in opts:
        opts.setdefault("--resume", opts["-r"])
    if "--print" in flags:
        flags.add("-p")
    return opts, multi, flags


def valid_uuid(s):
    try:
        uuid.UUID(s)
        return len(s) == 36
    except (ValueError, TypeError, AttributeError):
        return False


def load_mcp_servers(configs):
    """--mcp-config values: inline JSON strings or paths to JSON files (like the real CLI)."""
    servers = {}
    for c in configs:
        try:
            data = json.loads(c)
        except ValueError:
            path = os.path.abspath(c)
            try:
                with open(path, encoding="utf-8") as f:
                    data = json.loads(f.read())
            except OSError:
                err("Error: Invalid MCP configuration:\nMCP config file not found: %s" % path)
                _die(1)
            except ValueError as e:
                err("Error: Invalid MCP configuration:\n%s: %s" % (path, e))
                _die(1)
        if not isinstance(data, dict) or not isinstance(data.get("mcpServers", {}), dict):
            err("Error: Invalid MCP configuration:\nmcpServers: Expected object")
            _die(1)
        servers.update(data.get("mcpServers", {}))
    return servers


# ---------------------------------------------------------------- directives

def split_directives(text):
    """Split on ';' outside JSON brackets and quoted strings."""
    parts, cur, depth, quote, esc = [], [], 0, None, False
    for ch in text:
        if quote:
            cur.append(ch)
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == quote:
                quote = None
            continue
        if ch == '"':
            quote = ch
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth = max(0, depth - 1)
        elif ch == ";" and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur).strip())
    return [p for p in parts if p]


def user_text(msg):
    content = (msg.get("message") or {}).get("content", "")
    if isinstance(content, str):
        return content
    texts = []
    if isinstance(content, list):
        for block in content:
            if isinstance(block, dict) and block.get("type") == "text":
                texts.append(str(block.get("text", "")))
    return "\n".join(texts)


class Interrupted(Exception):
    def __init__(self, during_tool=False):
        super().__init__()
        self.during_tool = during_tool


# ---------------------------------------------------------------- the agent

class Agent:
    def __init__(self, argv):
        self.opts, self.multi, self.flags = parse_argv(argv)
        self.check_args()
        self.session_id = self.opts.get("--resume") or self.opts.get("--session-id")
        self.resumed = "--resume" in self.opts
        mode = self.opts.get("--permission-mode", "default")
        if "--dangerously-skip-permissions" in self.flags:
            mode = "bypassPermissions"
        self.permission_mode = mode
        model = self.opts.get("--model", "default")
        self.model = MODEL_ALIASES.get(model, model)
        self.mcp_servers = load_mcp_servers(self.multi.get("--mcp-config", []))
        self.allowed = self._rules(self.multi.get("--allowedTools", []) + self.multi.get("--allowed-tools", []))
        self.disallowed = self._rules(self.multi.get("--disallowedTools", []) + self.multi.get("--disallowed-tools", []))
        self.remembered = set()  # tool names allowed through updatedPermissions
        self.cwd = os.getcwd()
        self.cost = 0.0
        self.last_error = False

        self.cv = threading.Condition()
        self.queue = []          # user messages waiting for a turn
        self.eof = False
        self.in_turn = False
        self.interrupt = False
        self.ignore_stop = False
        self.pending = None      # request_id of the can_use_tool we wait on
        self.responses = {}      # request_id -> response envelope
        self.session_file = None
        self.check_state()

    # -------- startup checks

    def check_args(self):
        o, f = self.opts, self.flags
        out_fmt = o.get("--output-format", "text")
        in_fmt = o.get("--input-format", "text")
        if in_fmt == "stream-json" and out_fmt != "stream-json":
            err("Error: --input-format=stream-json requires output-format=stream-json.")
            _die(1)
        if "-p" in f and out_fmt == "stream-json" and "--verbose" not in f:
            err("Error: When using --print, --output-format=stream-json requires --verbose")
            _die(1)
        mode = o.get("--permission-mode")
        if mode is not None and mode not in PERMISSION_MODES:
            err("error: option '--permission-mode <mode>' argument '%s' is invalid. "
                "Allowed choices are %s." % (mode, ", ".join(PERMISSION_MODES)))
            _die(1)
        sid = o.get("--session-id")
        if sid is not None and not valid_uuid(sid):
            err("Error: Invalid session ID. Must be a valid UUID.")
            _die(1)
        # the fake's own strictness: what the daemon must always pass
        missing = []
        if "-p" not in f:
            missing.append("-p")
        if out_fmt != "stream-json":
            missing.append("--output-format stream-json")
        if in_fmt != "stream-json":
            missing.append("--input-format stream-json")
        if "--verbose" not in f:
            missing.append("--verbose")
        if o.get("--permission-prompt-tool") != "stdio":
            missing.append("--permission-prompt-tool stdio")
        if "--session-id" not in o and "--resume" not in o:
            missing.append("--session-id UUID or --resume UUID")
        if missing:
            err("fake_claude: missing required arguments: %s" % ", ".join(missing))
            _die(2)
        if "--session-id" in o and "--resume" in o and "--fork-session" not in f:
            err("Error: --session-id can only be used with --continue or --resume if --fork-session is also specified.")
            _die(1)

    def check_state(self):
        base = os.environ.get("FAKE_CLAUDE_STATE_DIR")
        if not base:
            return
        slug = "".join(c if c.isalnum() else "-" for c in self.cwd)
        d = os.path.join(base, "projects", slug)
        os.makedirs(d, exist_ok=True)
        self.session_file = os.path.join(d, self.session_id + ".jsonl")
        exists = os.path.exists(self.session_file)
        if not self.resumed and exists:
            err("Error: Session ID %s is already in use." % self.session_id)
            _die(1)
        if self.resumed and not exists:
            msg = "No conversation found with session ID: %s" % self.session_id
            err(msg)
            emit({"type": "result", "subtype": "error_during_execution", "duration_ms": 0,
                  "duration_api_ms": 0, "is_error": True, "num_turns": 0, "stop_reason": None,
                  "session_id": self.session_id, "total_cost_usd": 0, "usage": self.usage(0, 0),
                  "modelUsage": {}, "permission_denials": [], "uuid": new_uuid(), "errors": [msg]})
            _die(1)

    @staticmethod
    def _rules(values):
        rules = set()
        for v in values:
            for r in v.replace(",", " ").split():
                rules.add(r.split("(", 1)[0])
        return rules

    def rule_match(self, rules, name):
        if name in rules:
            return True
        if name.startswith("mcp__"):
            server = name.split("__")[1] if name.count("__") >= 2 else ""
            return ("mcp__" + server) in rules or ("mcp__%s__*" % server) in rules
        return False

    # -------- message builders

    @staticmethod
    def usage(inp, out):
        return {"input_tokens": inp, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                "output_tokens": out, "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 0},
                "service_tier": "standard",
                "cache_creation": {"ephemeral_1h_input_tokens": 0, "ephemeral_5m_input_tokens": 0},
                "inference_geo": "", "iterations": [], "speed": "standard"}

    def init_line(self):
        tools = list(TOOLS)
        if os.environ.get("CLAUDE_CODE_DISABLE_CRON") in ("1", "true"):
            tools = [t for t in tools if not t.startswith("Cron")]
        return {"type": "system", "subtype": "init", "cwd": self.cwd, "session_id": self.session_id,
                "tools": tools,
                "mcp_servers": [{"name": n, "status": "connected"} for n in self.mcp_servers],
                "model": self.model, "permissionMode": self.permission_mode,
                "slash_commands": SLASH_COMMANDS, "apiKeySource": "none",
                "claude_code_version": VERSION, "output_style": "default", "agents": AGENTS,
                "skills": [], "plugins": [], "analytics_disabled": True,
                "product_feedback_disabled": True, "uuid": new_uuid(),
                "memory_paths": {"auto": os.path.join(self.cwd, ".claude-fake-memory/")},
                "fast_mode_state": "off"}

    def assistant(self, content, extra=None, model=None):
        msg = {"type": "assistant",
               "message": {"id": "msg_" + os.urandom(12).hex(), "type": "message", "role": "assistant",
                           "model": model or self.model.replace("[1m]", ""), "content": content,
                           "stop_reason": None, "stop_sequence": None,
                           "usage": {"input_tokens": 10, "output_tokens": 5}, "context_management": None},
               "parent_tool_use_id": None, "session_id": self.session_id, "uuid": new_uuid()}
        if extra:
            msg.update(extra)
        emit(msg)

    def say(self, text, extra=None):
        self.turn["last_text"] = text
        self.assistant([{"type": "text", "text": text}], extra)

    def user_line(self, content, tool_use_result=None):
        msg = {"type": "user", "message": {"role": "user", "content": content},
               "parent_tool_use_id": None, "session_id": self.session_id, "uuid": new_uuid(),
               "timestamp": now_iso()}
        if tool_use_result is not None:
            msg["tool_use_result"] = tool_use_result
        emit(msg)

    def tool_result(self, tool_use_id, content, is_error, tool_use_result):
        self.user_line([{"tool_use_id": tool_use_id, "type": "tool_result", "content": content,
                         "is_error": is_error}], tool_use_result)

    def result(self, subtype="success", is_error=False, text=None, terminal_reason="completed",
               errors=None, stop_reason="end_turn"):
        self.cost = round(self.cost + 0.01, 6)
        t = self.turn
        r = {"type": "result", "subtype": subtype, "is_error": is_error}
        if subtype == "success":
            r["api_error_status"] = None
        r.update({"duration_ms": int((time.time() - t["start"]) * 1000), "duration_api_ms": 1,
                  "num_turns": t["num_turns"]})
        if subtype == "success":  # error results of the real CLI carry no "result" text
            r["result"] = t["last_text"] if text is None else text
        r.update({"stop_reason": stop_reason, "session_id": self.session_id,
                  "total_cost_usd": self.cost, "usage": self.usage(10, 5),
                  "modelUsage": {self.model: {"inputTokens": 10, "outputTokens": 5,
                                              "cacheReadInputTokens": 0, "cacheCreationInputTokens": 0,
                                              "webSearchRequests": 0, "costUSD": 0.01,
                                              "contextWindow": 200000, "maxOutputTokens": 64000}},
                  "permission_denials": t["denials"], "terminal_reason": terminal_reason,
                  "fast_mode_state": "off", "uuid": new_uuid()})
        if errors:
            r["errors"] = errors
        self.last_error = is_error
        emit(r)

    # -------- stdin

    def reader(self):
        stdin = sys.stdin.buffer
        while True:
            try:
                raw = stdin.readline()
            except (OSError, ValueError):
                raw = b""
            if not raw:
                with self.cv:
                    self.eof = True
                    self.cv.notify_all()
                return
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            try:
                msg = json.loads(line)
                if not isinstance(msg, dict):
                    raise ValueError("not an object")
            except ValueError as e:
                err("Error parsing streaming input line: %s: SyntaxError: JSON Parse error: %s" % (line[:200], e))
                _die(1)
            self.dispatch(msg)

    def dispatch(self, msg):
        typ = msg.get("type")
        with self.cv:
            if typ == "user":
                self.queue.append(msg)
            elif typ == "control_response":
                resp = msg.get("response") or {}
                rid = resp.get("request_id")
                if rid is not None and rid == self.pending:
                    self.responses[rid] = resp
            elif typ == "control_request":
                self.control_request(msg)
            # control_cancel_request, keep_alive, unknown types: ignored
            self.cv.notify_all()

    def control_request(self, msg):
        rid = msg.get("request_id")
        req = msg.get("request") or {}
        sub = req.get("subtype")
        ok = {"type": "control_response", "response": {"subtype": "success", "request_id": rid}}
        if sub == "interrupt":
            if self.ignore_stop:
                return
            if self.in_turn:
                self.interrupt = True
                if self.pending is not None:
                    emit({"type": "control_cancel_request", "request_id": self.pending})
            emit(ok)
        elif sub == "initialize":
            ok["response"]["response"] = {
                "commands": [], "agents": [], "output_style": "default",
                "available_output_styles": ["default"], "models": [],
                "account": {"tokenSource": "none", "apiKeySource": "none", "apiProvider": "firstParty"},
                "pid": os.getpid()}
            emit(ok)
        elif sub == "set_permission_mode":
            self.permission_mode = req.get("mode", self.permission_mode)
            emit(ok)
        elif sub == "set_model":
            m = req.get("model") or "default"
            self.model = MODEL_ALIASES.get(m, m)
            emit(ok)
        else:
            emit({"type": "control_response", "response": {
                "subtype": "error", "request_id": rid,
                "error": "Unsupported control request subtype: %s" % sub}})

    # -------- waiting helpers (hold no lock when called)

    def wait(self, seconds):
        """Sleep, but raise Interrupted as soon as an interrupt arrives."""
        deadline = time.monotonic() + seconds
        with self.cv:
            while True:
                if self.interrupt:
                    raise Interrupted()
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self.cv.wait(left)

    def ask_permission(self, name, inp, tool_use_id, cancel_after=None):
        """Returns ("allow", updatedInput, updatedPermissions) / ("deny", message) /
        ("error", message) / ("withdrawn",). Raises Interrupted."""
        rid = new_uuid()
        request = {"subtype": "can_use_tool", "tool_name": name, "display_name": name, "input": inp}
        if name != "AskUserQuestion":
            request["permission_suggestions"] = [{"type": "addRules", "rules": [{"toolName": name}],
                                                  "behavior": "allow", "destination": "localSettings"}]
        request["tool_use_id"] = tool_use_id
        deadline = None if cancel_after is None else time.monotonic() + cancel_after
        with self.cv:
            self.pending = rid
            emit({"type": "control_request", "request_id": rid, "request": request})
            try:
                while True:
                    if self.interrupt:
                        raise Interrupted()
                    if rid in self.responses:
                        resp = self.responses.pop(rid)
                        break
                    if self.eof:
                        return ("error", "Tool permission request failed: Error: Tool permission stream "
                                         "closed before response received")
                    if deadline is not None:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            emit({"type": "control_cancel_request", "request_id": rid})
                            return ("withdrawn",)
                        self.cv.wait(left)
                    else:
                        self.cv.wait()
            finally:
                self.pending = None
        if resp.get("subtype") == "error":
            return ("error", "Tool permission request failed: Error: %s" % resp.get("error", "Unknown error"))
        body = resp.get("response")
        if not isinstance(body, dict):
            body = {}
        behavior = body.get("behavior")
        if behavior == "allow" and isinstance(body.get("updatedInput"), dict):
            return ("allow", body["updatedInput"], body.get("updatedPermissions"))
        if behavior == "deny" and isinstance(body.get("message"), str):
            return ("deny", body["message"])
        # the real CLI validates with zod: allow needs a record updatedInput,
        # deny needs a string message
        return ("error", "Tool permission request failed: ZodError: invalid permission response "
                         "(allow needs updatedInput: object; deny needs message: string): %s"
                         % json.dumps(body)[:200])

    def remember(self, updated_permissions):
        for p in updated_permissions or []:
            if isinstance(p, dict) and p.get("type") == "addRules" and p.get("behavior", "allow") == "allow":
                for r in p.get("rules") or []:
                    if isinstance(r, dict) and r.get("toolName"):
                        self.remembered.add(r["toolName"])
            elif isinstance(p, dict) and p.get("type") == "setMode" and p.get("mode") in PERMISSION_MODES:
                self.permission_mode = p["mode"]

    def permission(self, name, inp, tool_use_id, cancel_after):
        """Decide on a tool use; asks the daemon when needed."""
        if name != "AskUserQuestion":
            if self.rule_match(self.disallowed, name):
                return ("deny", "Permission to use %s has been denied." % name)
            if (self.permission_mode == "bypassPermissions" or name in self.remembered
                    or self.rule_match(self.allowed, name)):
                return ("allow", inp, None)
        return self.ask_permission(name, inp, tool_use_id, cancel_after)

    # -------- directives

    def run_tool(self, name, inp, cancel_after, runner):
        tid = toolu_id()
        self.assistant([{"type": "tool_use", "id": tid, "name": name, "input": inp}])
        self.turn["num_turns"] += 1
        try:
            decision = self.permission(name, inp, tid, cancel_after)
        except Interrupted:
            # what the real CLI prints when an interrupt withdraws a pending permission request
            self.turn["denials"].append({"tool_name": name, "tool_use_id": tid, "tool_input": inp})
            self.tool_result(tid, "The user doesn't want to proceed with this tool use. The tool use was "
                                  "rejected (eg. if it was a file edit, the new_string was NOT written to the "
                                  "file). STOP what you are doing and wait for the user to tell you how to "
                                  "proceed.", True, "User rejected tool use")
            raise Interrupted(during_tool=True)
        kind = decision[0]
        if kind == "allow":
            self.remember(decision[2])
            text, is_error, detail = runner(decision[1])
            self.tool_result(tid, text, is_error, detail)
            return decision[1], text, is_error
        if kind == "withdrawn":
            self.say("withdrawn")
            return None
        msg = decision[1]
        self.turn["denials"].append({"tool_name": name, "tool_use_id": tid, "tool_input": inp})
        self.tool_result(tid, msg, True, "Error: " + msg)
        self.say(("denied %s: %s" if kind == "deny" else "failed %s: %s") % (name, msg))
        return None

    def d_tool(self, arg, cancel_after):
        name, _, js = arg.partition(" ")
        try:
            inp = json.loads(js) if js.strip() else {}
        except ValueError as e:
            self.say("bad tool input: %s" % e)
            return
        if not isinstance(inp, dict):
            inp = {"value": inp}

        def runner(updated):
            text = "ran %s with %s" % (name, json.dumps(updated, ensure_ascii=False))
            return text, False, {"stdout": text, "stderr": "", "interrupted": False}

        r = self.run_tool(name, inp, cancel_after, runner)
        if r is not None:
            self.say("allowed %s" % name)

    def d_sh(self, command, cancel_after):
        import subprocess

        def runner(updated):
            try:
                done = subprocess.run(["/bin/sh", "-c", updated.get("command", "")], capture_output=True,
                                      text=True, timeout=120, stdin=subprocess.DEVNULL)
                out, code = (done.stdout + done.stderr).strip(), done.returncode
            except (OSError, subprocess.TimeoutExpired) as e:
                out, code = str(e), 127
            self.turn["sh"] = (code, out)
            return out, code != 0, {"stdout": out, "stderr": "", "interrupted": False}

        r = self.run_tool("Bash", {"command": command, "description": "run a command"}, cancel_after, runner)
        if r is not None:
            code, out = self.turn.pop("sh")
            self.say("sh exit %d: %s" % (code, " | ".join(out.splitlines())))

    def d_fetch(self, url, cancel_after):
        import urllib.error
        import urllib.request

        def runner(updated):
            target = updated.get("url", url)
            try:
                with urllib.request.urlopen(target, timeout=30) as response:
                    out = "%d" % response.status
            except urllib.error.HTTPError as e:
                out = "%d" % e.code
            except (urllib.error.URLError, OSError) as e:
                out = "error: %s" % getattr(e, "reason", e)
            self.turn["fetch"] = out
            return out, False, {"result": out, "url": target}

        r = self.run_tool("WebFetch", {"url": url, "prompt": "fetch it"}, cancel_after, runner)
        if r is not None:
            self.say("fetch %s: %s" % (url, self.turn.pop("fetch")))

    def d_ask(self, question, cancel_after):
        inp = {"questions": [{"question": question, "header": "Q",
                              "options": [{"label": "yes", "description": ""},
                                          {"label": "no", "description": ""}],
                              "multiSelect": False}]}

        def runner(updated):
            answers = updated.get("answers") if isinstance(updated.get("answers"), dict) else {}
            pairs = ", ".join('"%s"="%s"' % (q, a) for q, a in answers.items())
            text = ("Your questions have been answered: %s. You can now continue with these answers in mind."
                    % pairs)
            return text, False, updated

        r = self.run_tool("AskUserQuestion", inp, cancel_after, runner)
        if r is not None:
            updated = r[0]
            answers = updated.get("answers") if isinstance(updated.get("answers"), dict) else {}
            answer = answers.get(question)
            if answer is None and answers:
                answer = next(iter(answers.values()))
            self.say("answer: %s" % ("" if answer is None else answer))

    def d_mcp(self, arg, cancel_after):
        tool, _, js = arg.partition(" ")
        try:
            args = json.loads(js) if js.strip() else {}
        except ValueError as e:
            self.say("mcp error: bad arguments: %s" % e)
            return
        if not self.mcp_servers:
            self.say("mcp error: no MCP server configured (--mcp-config)")
            return
        if tool.startswith("mcp__") and tool.count("__") >= 2:
            _, server, tname = tool.split("__", 2)
        else:
            server, tname = next(iter(self.mcp_servers)), tool
        conf = self.mcp_servers.get(server)
        if not isinstance(conf, dict):
            self.say("mcp error: no MCP server named %s" % server)
            return
        holder = {}

        def runner(updated):
            ok, text = mcp_call(conf, tname, updated)
            holder["res"] = (ok, text)
            if ok:
                return [{"type": "text", "text": text}], False, [{"type": "text", "text": text}]
            return text, True, "Error: " + text

        r = self.run_tool("mcp__%s__%s" % (server, tname), args, cancel_after, runner)
        if r is not None:
            ok, text = holder["res"]
            self.say(("mcp: %s" if ok else "mcp error: %s") % text)

    def d_ignore_stop(self):
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        with self.cv:
            self.ignore_stop = True
        self.say("ignoring stop")  # tells a test the signal handlers are in place
        while True:
            time.sleep(3600)

    def run_turn(self, msg):
        self.turn = {"start": time.time(), "last_text": "", "num_turns": 1, "denials": []}
        emit(self.init_line())
        if self.session_file:
            with open(self.session_file, "a", encoding="utf-8") as f:
                f.write(json.dumps(msg) + "\n")
        directives = split_directives(user_text(msg))
        i = 0
        try:
            while i < len(directives):
                d = directives[i]
                i += 1
                cmd, _, arg = d.partition(" ")
                arg = arg.strip()
                cancel_after = None
                if cmd in ("tool", "ask", "mcp", "sh", "fetch") and i < len(directives):
                    nxt, _, narg = directives[i].partition(" ")
                    if nxt == "cancel-after":
                        try:
                            cancel_after = float(narg)
                        except ValueError:
                            cancel_after = 0.0
                        i += 1
                with self.cv:
                    if self.interrupt:
                        raise Interrupted()
                if cmd == "say":
                    self.say(arg)
                elif cmd == "tool":
                    self.d_tool(arg, cancel_after)
                elif cmd == "ask":
                    self.d_ask(arg, cancel_after)
                elif cmd == "sh":
                    self.d_sh(arg, cancel_after)
                elif cmd == "fetch":
                    self.d_fetch(arg, cancel_after)
                elif cmd == "mcp":
                    self.d_mcp(arg, cancel_after)
                elif cmd == "cancel-after":
                    pass  # only meaningful right after tool/ask/mcp
                elif cmd == "sleep":
                    self.wait(float(arg or 0))
                elif cmd == "ignore-stop":
                    self.d_ignore_stop()
                elif cmd == "crash":
                    err("fake crash")
                    _die(int(arg or 1))
                elif cmd == "garbage":
                    emit_raw(b"this is not json\n")
                elif cmd == "bigline":
                    size = int(float(arg or 10) * 1024 * 1024)
                    self.say("x" * size)
                elif cmd == "stream":
                    parts = arg.split()
                    n = int(parts[0]) if parts else 10
                    interval = float(parts[1]) / 1000.0 if len(parts) > 1 else 0.0
                    for k in range(1, n + 1):
                        if k > 1 and interval:
                            self.wait(interval)
                        self.say("line %d" % k, {"ts": time.time()})
                elif cmd == "fail":
                    self.assistant([{"type": "text", "text": arg}],
                                   {"error": "authentication_failed"} if "logged in" in arg.lower() else None,
                                   model="<synthetic>")
                    self.result(is_error=True, text=arg, stop_reason="stop_sequence")
                    return
                elif cmd == "unknown":
                    emit({"type": "weird_future_type", "x": 1})
                else:
                    self.say(d)
        except Interrupted as e:
            if e.during_tool:
                text, reason, stop = "[Request interrupted by user for tool use]", "aborted_tools", "tool_use"
            else:
                text, reason, stop = "[Request interrupted by user]", "aborted_streaming", None
            self.user_line([{"type": "text", "text": text}])
            self.result(subtype="error_during_execution", is_error=True, terminal_reason=reason,
                        stop_reason=stop,
                        errors=["[ede_diagnostic] result_type=user last_content_type=n/a stop_reason=%s"
                                % (stop or "null")])
            return
        self.result()

    def main(self):
        threading.Thread(target=self.reader, name="stdin", daemon=True).start()
        while True:
            with self.cv:
                while not self.queue and not self.eof:
                    self.cv.wait()
                if not self.queue:
                    break  # EOF and nothing left to do
                msg = self.queue.pop(0)
                self.in_turn = True
                self.interrupt = False
            self.run_turn(msg)
            with self.cv:
                self.in_turn = False
                self.interrupt = False
        _die(1 if self.last_error else 0)


# ---------------------------------------------------------------- MCP client

def mcp_call(conf, tool, arguments, timeout=20.0):
    """Call one tool on a stdio MCP server. Returns (ok, text)."""
    import queue
    import subprocess

    cmd = [conf.get("command", "")] + [str(a) for a in conf.get("args", [])]
    env = dict(os.environ)
    env.update({k: str(v) for k, v in (conf.get("env") or {}).items()})
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=env, cwd=conf.get("cwd"))
    except OSError as e:
        return False, "cannot start MCP server %s: %s" % (cmd[0], e)
    lines = queue.Queue()

    def pump():
        for raw in proc.stdout:
            lines.put(raw)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout

    def send(obj):
        proc.stdin.write((json.dumps(obj) + "\n").encode("utf-8"))
        proc.stdin.flush()

    def response(rid):
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("MCP server did not answer in %.0fs" % timeout)
            try:
                raw = lines.get(timeout=left)
            except queue.Empty:
                continue
            if raw is None:
                raise EOFError("MCP server exited (code %s)" % proc.poll())
            try:
                m = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(m, dict):
                continue
            if m.get("id") == rid and ("result" in m or "error" in m):
                return m
            if "method" in m and "id" in m:  # a request from the server: we support none
                send({"jsonrpc": "2.0", "id": m["id"],
                      "error": {"code": -32601, "message": "Method not found"}})

    try:
        send({"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                         "clientInfo": {"name": "fake-claude", "version": VERSION}}})
        m = response(1)
        if "error" in m:
            return False, m["error"].get("message", "initialize failed")
        send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        send({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
              "params": {"name": tool, "arguments": arguments}})
        m = response(2)
        if "error" in m:
            return False, str(m["error"].get("message", m["error"]))
        res = m.get("result") or {}
        text = "\n".join(c.get("text", "") for c in res.get("content", [])
                         if isinstance(c, dict) and c.get("type") == "text")
        return (not res.get("isError", False)), text
    except (OSError, EOFError, TimeoutError) as e:
        return False, str(e)
    finally:
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=2)
        except Exception:
            proc.kill()
            proc.wait()


def main():
    # the real CLI exits with status 143 on SIGTERM (it is not killed by the signal)
    signal.signal(signal.SIGTERM, lambda *_: _die(143))
    signal.signal(signal.SIGINT, lambda *_: _die(130))
    log = os.environ.get("FAKE_CLAUDE_ARGV_LOG")
    if log:  # one line per process start, before any argument check
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(),
                                "env_disable_cron": os.environ.get("CLAUDE_CODE_DISABLE_CRON")}) + "\n")
    Agent(sys.argv[1:]).main()


if __name__ == "__main__":
    main()
