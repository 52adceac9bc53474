"""Agent backends behind one seam (`base`): Claude Code (`claude`), Agent Client Protocol agents (`acp`),
any command (`command`); the child process shell (`process`) and the daemon's MCP tools (`mcp_server`)."""
