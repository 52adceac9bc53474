-- bgagents for Neovim (0.7 and later): a thin client of bgls, the bgagents language server.
--
-- It starts bgls with the built-in LSP client, keeps the last `bgagents/status` for a
-- statusline function, offers :Bg* commands that run bgls's `bgagents.*` commands, and
-- attaches tasks.toml and routines.toml buffers so bgls's diagnostics, hover and completion work there.
-- All logic stays in bgls; this file only translates.

local M = {}

M.config = {
  cmd = { "bgls" },        -- how to start the language server
  cmd_env = nil,           -- extra environment for it (e.g. { BGD_SOCKET = "/tmp/bgd.sock" })
  autostart = true,        -- start bgls from setup()
  prompt = true,           -- ask with vim.ui.select when a session needs input
  statusline_prefix = "bg: ",
  hide_idle = false,       -- statusline() returns "" when nothing runs
}

M.state = {
  client_id = nil,
  status = nil,            -- params of the last bgagents/status notification
  last_prompt = nil,       -- the last needs-input prompt (for tests and :BgApprove)
}

local function notify(msg, level)
  vim.schedule(function() vim.notify("bgagents: " .. msg, level or vim.log.levels.INFO) end)
end

local function client()
  local id = M.state.client_id
  local c = id and vim.lsp.get_client_by_id(id)
  if c and not c.is_stopped() then
    return c
  end
  return nil
end

-- Run one bgagents.* command; `on_result(result)` gets the answer, errors are shown.
function M.execute(command, arguments, on_result)
  local c = client()
  if not c then
    local id = M.start()
    c = id and vim.lsp.get_client_by_id(id)
  end
  if not c then
    notify("bgls is not running", vim.log.levels.ERROR)
    return
  end
  c.request("workspace/executeCommand", { command = command, arguments = arguments or {} },
    function(err, result)
      if err then
        notify(err.message or vim.inspect(err), vim.log.levels.ERROR)
        return
      end
      if on_result then
        on_result(result)
      end
    end, 0)
end

-- The sessions from the last status, optionally only those in `state`.
function M.sessions(state)
  local out = {}
  for _, s in ipairs((M.state.status or {}).sessions or {}) do
    if state == nil or s.state == state then
      table.insert(out, s)
    end
  end
  return out
end

local function find_session(id)
  for _, s in ipairs(M.sessions()) do
    if id and (s.id == id or s.id:sub(1, #id) == id or s.name == id) then
      return s
    end
  end
  return nil
end

-- The statusline segment: "bg: 2 need input · 3 working".
function M.statusline()
  local st = M.state.status
  if not st then
    return ""
  end
  if M.config.hide_idle and st.connected and st.text == "idle" then
    return ""
  end
  return M.config.statusline_prefix .. (st.text or "")
end

-- Pick the session a command is about: the given id, else the one needing input, else ask.
local function with_session(id, state, fn)
  if id and id ~= "" then
    local s = find_session(id)
    fn(s and s.id or id, s)
    return
  end
  local candidates = M.sessions(state)
  if #candidates == 1 then
    fn(candidates[1].id, candidates[1])
  elseif #candidates == 0 then
    notify("no session " .. (state and ("in " .. state) or "") .. "; give an id", vim.log.levels.WARN)
  else
    vim.ui.select(candidates, {
      prompt = "Session:",
      format_item = function(s) return s.id .. "  " .. s.state .. "  " .. (s.title or "") end,
    }, function(s) if s then fn(s.id, s) end end)
  end
end

local function request_id(session)
  local pending = session and session.pending
  return type(pending) == "table" and pending.request_id or nil
end

function M.approve(id)
  with_session(id, "needs_input", function(sid, s)
    M.execute("bgagents.approve", { { id = sid, request_id = request_id(s) } },
      function() notify("approved " .. sid) end)
  end)
end

function M.deny(id, message)
  with_session(id, "needs_input", function(sid, s)
    local args = { id = sid, request_id = request_id(s) }
    if message and message ~= "" then
      args.message = message
    end
    M.execute("bgagents.deny", { args }, function() notify("denied " .. sid) end)
  end)
end

function M.reply(id, text, rid)
  M.execute("bgagents.reply", { id, text, rid }, function() notify("replied to " .. id) end)
end

function M.open_transcript(id)
  with_session(id, nil, function(sid)
    M.execute("bgagents.openTranscript", { sid }, function(result)
      -- Neovim before 0.8 cannot show documents on the server's request: open the file here.
      if result and result.path and not result.shown then
        vim.schedule(function() vim.cmd("edit " .. vim.fn.fnameescape(result.path)) end)
      end
    end)
  end)
end

-- window/showMessageRequest: Neovim answers server requests synchronously, so the
-- prompt is answered "dismissed" at once and the choice, made in vim.ui.select, is
-- sent as a command naming the exact request (a stale one gets a clear message).
local function on_message_request(_, params)
  local id = params.message:match("^bgagents: session (%w+)")
  if not id then
    return vim.lsp.handlers["window/showMessageRequest"](_, params)
  end
  local session = find_session(id)
  local rid = request_id(session)
  M.state.last_prompt = { id = id, request_id = rid, message = params.message, actions = params.actions }
  notify(params.message, vim.log.levels.WARN)
  if not M.config.prompt then
    return vim.NIL
  end
  vim.schedule(function()
    vim.ui.select(params.actions, {
      prompt = params.message,
      format_item = function(a) return a.title end,
    }, function(action)
      if not action then
        return
      end
      local t = action.title
      if t == "Approve" then
        M.execute("bgagents.approve", { { id = id, request_id = rid } })
      elseif t == "Deny" then
        M.execute("bgagents.deny", { { id = id, request_id = rid } })
      elseif t == "Open" then
        M.open_transcript(id)
      elseif t == "Reply" then
        vim.ui.input({ prompt = "Reply to " .. id .. ": " }, function(text)
          if text and text ~= "" then M.reply(id, text, rid) end
        end)
      else -- one of a question's options
        M.execute("bgagents.approve", { { id = id, request_id = rid, answer = t } })
      end
    end)
  end)
  return vim.NIL
end

local function on_status(_, params)
  M.state.status = params
  vim.schedule(function()
    vim.cmd("redrawstatus!")
    if vim.fn.exists("#User#BgagentsStatus") == 1 then
      vim.cmd("doautocmd <nomodeline> User BgagentsStatus")
    end
  end)
end

local function on_reply_requested(_, params)
  vim.schedule(function()
    vim.ui.input({ prompt = (params.question or "Reply") .. " " }, function(text)
      if text and text ~= "" then M.reply(params.id, text, params.request_id) end
    end)
  end)
end

-- Start bgls (once); returns the LSP client id.
function M.start()
  if client() then
    return M.state.client_id
  end
  local cwd = vim.fn.getcwd()
  M.state.client_id = vim.lsp.start_client({
    name = "bgls",
    cmd = M.config.cmd,
    cmd_env = M.config.cmd_env,
    root_dir = cwd,
    workspace_folders = { { uri = vim.uri_from_fname(cwd), name = cwd } },
    handlers = {
      ["bgagents/status"] = on_status,
      ["bgagents/replyRequested"] = on_reply_requested,
      ["window/showMessageRequest"] = on_message_request,
    },
    on_exit = function() M.state.client_id = nil end,
  })
  return M.state.client_id
end

function M.stop()
  local c = client()
  if c then
    c.stop()
  end
  M.state.client_id = nil
end

function M.attach(bufnr)
  local id = M.state.client_id or M.start()
  if id then
    vim.lsp.buf_attach_client(bufnr or 0, id)
  end
end

local function complete_ids()
  local ids = {}
  for _, s in ipairs(M.sessions()) do
    table.insert(ids, s.id)
  end
  return ids
end

local function define_commands()
  local cmd = vim.api.nvim_create_user_command
  cmd("BgDispatch", function(o)
    M.execute("bgagents.dispatch", { { prompt = o.args, cwd = vim.fn.getcwd() } },
      function(s) notify("backgrounded · " .. s.id) end)
  end, { nargs = "+", desc = "bgagents: start a background session with a prompt" })
  cmd("BgList", function(o)
    M.execute("bgagents.list", { { all = o.bang } }, function(list)
      local lines = {}
      for _, s in ipairs(list) do
        local title = type(s.name) == "string" and s.name or (type(s.prompt) == "string" and s.prompt or "")
        table.insert(lines, string.format("%s  %-11s %s", s.id, s.state, title:sub(1, 60)))
      end
      notify(#lines > 0 and table.concat(lines, "\n") or "no sessions")
    end)
  end, { bang = true, desc = "bgagents: list sessions (! for all)" })
  cmd("BgApprove", function(o) M.approve(o.args) end,
    { nargs = "?", complete = complete_ids, desc = "bgagents: allow the pending request" })
  cmd("BgDeny", function(o) M.deny(o.fargs[1], table.concat(vim.list_slice(o.fargs, 2), " ")) end,
    { nargs = "*", complete = complete_ids, desc = "bgagents: deny the pending request [message]" })
  cmd("BgReply", function(o)
    local id = o.fargs[1]
    local s = find_session(id)
    M.reply(s and s.id or id, table.concat(vim.list_slice(o.fargs, 2), " "))
  end, { nargs = "+", complete = complete_ids, desc = "bgagents: reply to a session" })
  cmd("BgStop", function(o)
    with_session(o.args, "working", function(sid)
      M.execute("bgagents.stop", { sid }, function() notify("stopped " .. sid) end)
    end)
  end, { nargs = "?", complete = complete_ids, desc = "bgagents: stop a session" })
  cmd("BgLog", function(o) M.open_transcript(o.args) end,
    { nargs = "?", complete = complete_ids, desc = "bgagents: open a session's transcript" })
  cmd("BgLoop", function(o)
    M.execute("bgagents.loop", { o.args }, function(r) notify("loop " .. vim.inspect(r)) end)
  end, { nargs = "*", desc = "bgagents: [INTERVAL] [PROMPT] — a loop in this directory" })
end

function M.setup(opts)
  M.config = vim.tbl_deep_extend("force", M.config, opts or {})
  define_commands()
  local group = vim.api.nvim_create_augroup("bgagents", { clear = true })
  vim.api.nvim_create_autocmd({ "BufReadPost", "BufNewFile" }, {
    group = group,
    pattern = { "tasks.toml", "routines.toml" },
    callback = function(args) M.attach(args.buf) end,
  })
  if M.config.autostart then
    M.start()
  end
end

return M
