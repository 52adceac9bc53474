"""The Neovim plugin, headless: it starts bgls, shows a dispatched session in its statusline
function, and :BgApprove unblocks a session that needs input; tasks.toml buffers get diagnostics.

The Lua side waits with vim.wait on conditions (the status notifications), never fixed sleeps,
and writes what it saw to a JSON file that this test then checks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "editors" / "nvim"
NVIM = shutil.which("nvim")

pytestmark = pytest.mark.skipif(NVIM is None, reason="nvim is not installed (apt-get install neovim)")

SCRIPT = r"""
local out_path = %(out)s
local results = {}
local function finish(err)
  results.error = err
  local f = io.open(out_path, "w")
  f:write(vim.fn.json_encode(results))
  f:close()
  vim.cmd(err and "cquit 1" or "qall!")
end

local ok, err = pcall(function()
  vim.lsp.set_log_level("ERROR")
  local bg = require("bgagents")
  bg.setup({ cmd = %(cmd)s, cmd_env = %(env)s, prompt = false })
  local function wait(what, cond)
    if not vim.wait(20000, cond, 10) then
      error("timed out waiting for " .. what .. "; statusline: " .. bg.statusline())
    end
  end

  wait("bgls to connect", function() return bg.state.status and bg.state.status.connected end)
  results.idle = bg.statusline()

  vim.cmd([[BgDispatch tool Bash {"command":"ls"}]])
  wait("a session needing input", function() return bg.statusline():find("1 needs input", 1, true) end)
  results.waiting = bg.statusline()
  wait("the prompt", function() return bg.state.last_prompt ~= nil end)
  results.prompt = bg.state.last_prompt
  results.session = bg.sessions("needs_input")[1].id

  vim.cmd("BgApprove")
  wait("the session to complete", function() return #bg.sessions("completed") == 1 end)
  results.done = bg.statusline()

  vim.cmd("edit " .. vim.fn.fnameescape(%(tasks)s))
  local buf = vim.api.nvim_get_current_buf()
  wait("tasks.toml diagnostics", function() return #vim.diagnostic.get(buf) > 0 end)
  results.diagnostics = {}
  for _, d in ipairs(vim.diagnostic.get(buf)) do
    table.insert(results.diagnostics, { lnum = d.lnum, col = d.col, end_col = d.end_col, message = d.message })
  end
  bg.stop()
end)
finish(not ok and tostring(err) or nil)
"""


def lua(value) -> str:
    """A Lua literal for a string, list of strings or dict of strings."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "{" + ", ".join(lua(v) for v in value) + "}"
    return "{" + ", ".join(f"[{json.dumps(k)}] = {lua(v)}" for k, v in value.items()) + "}"


def test_nvim_plugin_statusline_and_approve(running_bgd, tmp_path):
    bgd = running_bgd
    out = tmp_path / "out.json"
    tasks = bgd.config_dir / "tasks.toml"
    tasks.write_text(f'[tasks.x]\nprompt = "p"\ncwd = "{bgd.work}"\nschedule = "every 5 blargs"\n')
    script = tmp_path / "test.lua"
    script.write_text(SCRIPT % {
        "out": lua(str(out)), "tasks": lua(str(tasks)),
        "cmd": lua([sys.executable, "-m", "bgls", "--socket", str(bgd.socket)]),
        "env": lua({"BGD_CONFIG_DIR": str(bgd.config_dir), "BGD_STATE_DIR": str(bgd.state_dir)}),
    })
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "xdg-config"), XDG_STATE_HOME=str(tmp_path / "xdg-state"),
               XDG_CACHE_HOME=str(tmp_path / "xdg-cache"), XDG_DATA_HOME=str(tmp_path / "xdg-data"))
    proc = subprocess.run([NVIM, "--headless", "-u", "NONE", "-i", "NONE", "-n",
                           "--cmd", f"set rtp^={PLUGIN}", "-c", f"luafile {script}"],
                          cwd=str(bgd.work), env=env, capture_output=True, text=True, timeout=60)
    assert out.exists(), f"nvim wrote nothing (exit {proc.returncode}): {proc.stderr[-2000:]}"
    results = json.loads(out.read_text())
    assert results.get("error") is None, results["error"]

    assert results["idle"] == "bg: idle"
    assert results["waiting"] == "bg: 1 needs input"
    assert results["prompt"]["id"] == results["session"] and results["prompt"]["request_id"]
    assert "wants to use Bash: ls" in results["prompt"]["message"]
    assert results["done"] == "bg: idle"
    session = bgd.rpc("session.get", {"id": results["session"]})
    assert session["state"] == "completed" and session["cwd"] == str(bgd.work)
    transcript = json.dumps(bgd.rpc("session.transcript", {"id": session["id"]})["entries"])
    assert "allowed Bash" in transcript

    (diag,) = results["diagnostics"]
    assert (diag["lnum"], diag["col"], diag["end_col"]) == (3, 20, 26)  # "blargs"
    assert "not a unit" in diag["message"]
