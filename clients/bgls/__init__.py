"""bgls: the bgagents language server (SPEC §10).

An editor starts it over stdio.  It follows the daemon's events and shows
session states (a `bgagents/status` notification and a `$/progress`), asks for
decisions with `window/showMessageRequest`, runs the `bgagents.*` commands, and
treats tasks.toml and routines.toml as languages (diagnostics, hover, completion).

Modules: `server` (LSP wiring), `daemon_link` (asyncio client of the socket),
`status` (counts, summary, prompts), `commands` (command arguments),
`tasks_lint` (tasks.toml), `routines_lint` (routines.toml), `definitions` (what the two share: the
scanner of the text, schedule hovers, the results), `main` (the entry point).
"""

__version__ = "0.1.0"
