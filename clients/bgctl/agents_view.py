"""`bgctl agents`: the full-screen agent view on textual (SPEC §9).

Imported only by `bgctl agents`, so the rest of bgctl never loads textual.
The screens here draw what `agents_model` decides and send what the person
asks through `bgcore.aio_link`; neither the grouping nor the wire lives here.

This module holds the app (the daemon link and the state the screens share)
and the list screen; the peek, attach, rename and help screens, and `Line`,
the line at the bottom of every screen that decides which keys are commands,
are in `agents_screens`.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from bgcore.aio_link import DaemonLink, DaemonUnreachable, RpcError

from . import agents_model as model
from .agents_screens import (MESSAGE_S, UNREACHABLE, AttachScreen, Banner, HelpScreen, Line, LineCommands,
                             PeekScreen, RenameScreen, while_shown)

HINTS = "↑↓ · space peek · ⏎ attach · ^T pin · ^R rename · ^X stop · ^S group · ? help"


def _cells_text(cells: list[tuple[str, str]]) -> Text:
    text = Text(no_wrap=True, overflow="ellipsis")
    for chunk, style in cells:
        text.append(chunk, style=style or None)
    return text


# -- the list -------------------------------------------------------------------

class ListScreen(LineCommands, Screen):
    """Groups of sessions, a status line and the dispatch line."""

    BINDINGS = [
        Binding("up", "move(-1)", "up", priority=True, show=False),
        Binding("down", "move(1)", "down", priority=True, show=False),
        Binding("pageup", "move(-10)", priority=True, show=False),
        Binding("pagedown", "move(10)", priority=True, show=False),
        Binding("ctrl+t", "pin", "pin", priority=True, show=False),
        Binding("ctrl+r", "rename", "rename", priority=True, show=False),
        Binding("ctrl+x", "stop", "stop", priority=True, show=False),
        Binding("ctrl+s", "toggle_group", "group", priority=True, show=False),
        Binding("escape", "escape", priority=True, show=False),
        Binding("tab", "typing", priority=True, show=False),
    ]
    # Keys read by the dispatch line (see Line): commands only while it is empty ...
    WHEN_EMPTY = {"space": "peek", "right": "attach", "question_mark": "help", "q": "quit"}
    # ... and always: Enter dispatches or attaches; the others dispatch and attach.
    ALWAYS = {"enter": "enter", "shift+enter": "submit_attach", "ctrl+j": "submit_attach",
              "alt+enter": "submit_attach"}

    STYLE = """
    ListScreen { layout: vertical; }
    #title { height: 1; background: $panel; color: $text; }
    #sessions { height: 1fr; border: none; padding: 0; background: $surface; scrollbar-size-vertical: 1; }
    #sessions > .option-list--option-highlighted { background: $block-cursor-background;
                                                   color: $block-cursor-foreground; text-style: bold; }
    App:nocolor #sessions > .option-list--option-highlighted { text-style: bold reverse; }
    #status { height: 1; color: $text-muted; }
    #status.error { color: $error; text-style: bold; }
    #prompt-row { height: 1; }
    #prompt-mark { width: 2; color: $accent; }
    #dispatch { width: 1fr; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.status_text = ""
        self._status_timer = None

    def compose(self) -> ComposeResult:
        yield Banner(UNREACHABLE, id="banner")
        yield Static("", id="title")
        sessions = OptionList(id="sessions")
        sessions.can_focus = False
        yield sessions
        yield Static(HINTS, id="status")
        with Horizontal(id="prompt-row"):
            yield Label("› ", id="prompt-mark", classes="mark")
            yield Line("a prompt starts a session here · @dir PROMPT beside · s:STATE filters", "dispatch",
                       when_empty=self.WHEN_EMPTY, always=self.ALWAYS)

    def on_mount(self) -> None:
        self.query_one("#dispatch", Input).focus()
        self.app.rebuild()

    def on_resize(self) -> None:
        self.app.rebuild()

    @property
    def line(self) -> Line:
        return self.query_one("#dispatch", Line)

    @while_shown
    def show_message(self, text: str, error: bool = False) -> None:
        self.status_text = text
        status = self.query_one("#status", Static)
        status.update(text)
        status.set_class(error, "error")
        if self._status_timer is not None:
            self._status_timer.stop()
        self._status_timer = self.set_timer(MESSAGE_S, self._clear_message)

    @while_shown
    def _clear_message(self) -> None:
        self.status_text = ""
        status = self.query_one("#status", Static)
        status.update(HINTS)
        status.remove_class("error")

    # -- actions ----------------------------------------------------------------

    def action_move(self, step: int) -> None:
        self.app.move_selection(step)

    def do_enter(self, value: str) -> None:
        if value.strip():
            self.submit(value, attach=False)
        else:
            self.do_attach(value)

    def do_submit_attach(self, value: str) -> None:
        if value.strip():
            self.submit(value, attach=True)
        else:
            self.do_attach(value)

    def do_attach(self, value: str) -> None:
        row = self.app.selected_row()
        if row is not None and row.kind == "session":
            self.app.attach(row.session_id)
        elif row is not None and row.kind == "fold":
            self.app.toggle_fold(row.group)

    def do_peek(self, value: str) -> None:
        row = self.app.selected_row()
        if row is None:
            return
        if row.kind == "fold":
            self.app.toggle_fold(row.group)
        elif row.kind == "session":
            self.app.push_screen(PeekScreen(row.session_id))

    def do_help(self, value: str) -> None:
        self.app.push_screen(HelpScreen())

    def do_quit(self, value: str) -> None:
        self.app.exit()

    def submit(self, text: str, attach: bool) -> None:
        try:
            parsed = model.parse_line(text, self.app.cwd)
        except model.LineError as exc:
            self.show_message(str(exc), error=True)
            return
        if isinstance(parsed, model.Filter):
            self.line.clear()
            self.app.set_filter(parsed.states)
            return
        # Clear at once, so typing can go on while the daemon answers; a
        # refused prompt comes back to the line (unless something new is there).
        self.line.clear()
        self.app.dispatch_session(parsed, attach=attach, restore=lambda: self._restore(text))

    def _restore(self, text: str) -> None:
        if not self.line.value:
            self.line.value = text

    def action_pin(self) -> None:
        session = self.app.selected_session()
        if session is not None:
            pinned = not session.get("pinned")
            self.app.call_daemon("session.pin", {"id": session["id"], "pinned": pinned},
                         f"{'pinned' if pinned else 'unpinned'} · {model.clip(model.title_of(session), 40)}")

    def action_rename(self) -> None:
        session = self.app.selected_session()
        if session is None:
            return

        def renamed(name: str | None) -> None:
            if name is not None:
                self.app.call_daemon("session.rename", {"id": session["id"], "name": name.strip()},
                             f"renamed · {name.strip()}" if name.strip() else "name cleared")

        self.app.push_screen(RenameScreen(session.get("name") or ""), renamed)

    def action_stop(self) -> None:
        session = self.app.selected_session()
        if session is None:
            return
        what = self.app.double_tap.press(session["id"], self.app.clock())
        title = model.clip(model.title_of(session), 40)
        if what == "remove":
            self.app.call_daemon("session.remove", {"id": session["id"]}, f"removed · {title}")
        elif session.get("state") in model.ENDED:
            self.show_message(f"{session['state']} · {title} — Ctrl+X again within 2 s removes it")
        else:
            self.app.call_daemon("session.stop", {"id": session["id"]},
                         f"stopped · {title} — Ctrl+X again within 2 s removes it")

    def action_toggle_group(self) -> None:
        self.app.toggle_group()

    def action_typing(self) -> None:
        self.line.set_typing(not self.line.typing)

    def action_escape(self) -> None:
        if self.line.value or self.line.typing:
            self.line.clear()
        elif self.app.states_filter is not None:
            self.app.set_filter(None)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        # A mouse click on a row selects it (and a click on "… N more" unfolds).
        self.app.select_index(event.option_index)
        row = self.app.selected_row()
        if row is not None and row.kind == "fold":
            self.app.toggle_fold(row.group)
        self.line.focus()


# -- the app --------------------------------------------------------------------------

class AgentsApp(App):
    """The agent view.  State shared by the screens lives here."""

    TITLE = "bgctl agents"
    # All styles in one place: the default screen gets no per-screen CSS loading.
    CSS = "".join(screen.STYLE for screen in (ListScreen, PeekScreen, AttachScreen, RenameScreen, HelpScreen))
    BINDINGS = [
        Binding("ctrl+c", "quit", "quit", priority=True, show=False),
        Binding("ctrl+q", "quit", "quit", priority=True, show=False),
    ]
    ENABLE_COMMAND_PALETTE = False

    def __init__(self, socket_path: str | Path, cwd: str, settings_path: str | Path, *,
                 clock: Callable[[], float] = time.monotonic, now: Callable[[], datetime] = model.utcnow):
        super().__init__()
        self.cwd = cwd
        self.settings_path = Path(settings_path)
        self.settings = model.load_settings(self.settings_path)
        self.group_by: str = self.settings["group_by"]
        self.states_filter: frozenset[str] | None = None
        self.expanded: set[str] = set()
        self.table = model.SessionTable()
        self.rows: list[model.Row] = []
        self.selected: int | None = None
        self.selected_key: str | None = None
        self.double_tap = model.DoubleTap()
        self.clock = clock
        self.now = now
        self.connected = False
        self.link_message = "connecting…"
        self.synced = 0                 # how many times the list was (re)synced; tests wait on it
        self.list_screen: ListScreen | None = None
        self._rebuild_pending = False
        # One connection for events and calls (answers come in order with events); every
        # reconnect resyncs the list (open transcripts refetch); never starts a daemon.
        self.link = DaemonLink(socket_path, types=["session"], always_resync=True, call_timeout=30.0,
                               on_events=self._on_events, on_resync=self._on_sync, on_state=self._on_status)

    def get_default_screen(self) -> Screen:
        self.list_screen = ListScreen()
        return self.list_screen

    def on_mount(self) -> None:
        self.run_worker(self.link.run(), name="daemon-link", group="link", exit_on_error=False)
        self.set_interval(1.0, self.rebuild)   # countdowns and ages; no daemon polling

    def on_unmount(self) -> None:
        self.link.close()

    # -- the daemon's side ------------------------------------------------------------

    @while_shown
    def _on_status(self, up: bool, detail: str | None) -> None:
        self.connected = up
        self.link_message = "" if up else f"{UNREACHABLE} ({detail})"
        for screen in self.screen_stack:
            self.show_link_state(screen)

    def show_link_state(self, screen: Screen) -> None:
        for banner in screen.query(Banner):
            banner.update(self.link_message or UNREACHABLE)
            banner.set_class(not self.connected, "down")

    def _on_events(self, events: list[dict]) -> None:
        for event in events:
            try:
                self._on_event(event)
            except Exception:  # a bug here must cost one event, not the rest of the batch
                logging.getLogger(__name__).exception("agent view: an event failed")

    @while_shown
    def _on_sync(self, sessions: list[dict], since_subscribe: list[dict]) -> None:
        # (since_subscribe's transcript entries come again with the refetch in resynced())
        self.table.replace(sessions, since_subscribe)
        self.synced += 1
        self.schedule_rebuild()
        for screen in self.screen_stack:
            if isinstance(screen, (PeekScreen, AttachScreen)):
                screen.refresh_session()
                screen.resynced()

    @while_shown
    def _on_event(self, event: dict) -> None:
        kind = event.get("type", "")
        if kind == "session.transcript":
            for screen in self.screen_stack:
                if isinstance(screen, (PeekScreen, AttachScreen)):
                    screen.daemon_transcript(event.get("id"), event.get("entry") or {})
            return
        session_id = self.table.apply(event)
        if session_id is None:
            return
        self.schedule_rebuild()
        for screen in self.screen_stack:
            if isinstance(screen, (PeekScreen, AttachScreen)):
                screen.daemon_session(session_id)

    # -- the list ----------------------------------------------------------------------

    def schedule_rebuild(self) -> None:
        # Events come in bursts; redraw once per burst.
        if not self._rebuild_pending:
            self._rebuild_pending = True
            self.set_timer(0.03, self.rebuild)

    @while_shown
    def rebuild(self) -> None:
        self._rebuild_pending = False
        screen = self.list_screen
        if screen is None or not screen.is_mounted:
            return
        rows = model.build_rows(self.table.values(), group_by=self.group_by, states=self.states_filter,
                                expanded=self.expanded)
        self.selected = model.reselect(rows, self.selected_key, self.selected)
        old_keys = [r.key for r in self.rows]
        self.rows = rows
        self.selected_key = rows[self.selected].key if self.selected is not None else None
        options = screen.query_one("#sessions", OptionList)
        width = options.scrollable_content_region.width or (self.size.width - 1)
        now = self.now()
        prompts = [self._prompt(row, now, width) for row in rows]
        if old_keys == [r.key for r in rows] and options.option_count == len(rows):
            for i, prompt in enumerate(prompts):
                options.replace_option_prompt_at_index(i, prompt)
        else:
            options.set_options(Option(p, id=row.key, disabled=row.kind == "header") for p, row in zip(prompts, rows))
        options.highlighted = self.selected
        self._update_title(screen)

    def _prompt(self, row: model.Row, now: datetime, width: int) -> Text:
        if row.kind == "header":
            return Text(row.title, style="bold underline", no_wrap=True)
        if row.kind == "fold":
            return Text("  " + row.title, style="italic", no_wrap=True)
        return _cells_text(model.row_cells(row.session, now, width))

    def _update_title(self, screen: ListScreen) -> None:
        count = len(self.table.sessions)
        parts = [f"agents · {count} session{'s' if count != 1 else ''}", f"dispatch in {model.short_dir(self.cwd, 30)}",
                 "by directory" if self.group_by == "dir" else "by state"]
        if self.states_filter is not None:
            parts.append("filter s:" + ",".join(sorted(self.states_filter)))
        screen.query_one("#title", Static).update(" · ".join(parts))

    def selected_row(self) -> model.Row | None:
        if self.selected is None or self.selected >= len(self.rows):
            return None
        return self.rows[self.selected]

    def selected_session(self) -> dict | None:
        row = self.selected_row()
        return row.session if row is not None and row.kind == "session" else None

    def select_index(self, index: int | None) -> None:
        if index is None or not (0 <= index < len(self.rows)) or self.rows[index].kind == "header":
            return
        self.selected = index
        self.selected_key = self.rows[index].key
        if self.list_screen is not None:
            self.list_screen.query_one("#sessions", OptionList).highlighted = index

    def select_session(self, session_id: str) -> None:
        for i, row in enumerate(self.rows):
            if row.key == "s:" + session_id:
                self.select_index(i)
                return
        self.selected_key = "s:" + session_id   # not drawn yet: the next rebuild lands on it

    def move_selection(self, step: int) -> None:
        target = self.selected
        for _ in range(abs(step)):
            target = model.move(self.rows, target, 1 if step > 0 else -1)
        self.select_index(target)

    def toggle_fold(self, group: str) -> None:
        self.expanded.symmetric_difference_update({group})
        self.rebuild()

    def toggle_group(self) -> None:
        self.group_by = "dir" if self.group_by == "state" else "state"
        self.settings["group_by"] = self.group_by
        model.save_settings(self.settings_path, self.settings)
        self.expanded.clear()
        self.rebuild()
        self.say("grouped by directory" if self.group_by == "dir" else "grouped by state")

    def set_filter(self, states: frozenset[str] | None) -> None:
        self.states_filter = states
        self.rebuild()
        self.say(f"filter s:{','.join(sorted(states))} — s: alone clears it" if states else "filter cleared")

    # -- acting ------------------------------------------------------------------------------

    def say(self, text: str, error: bool = False) -> None:
        """A message on the status line of the screen the person is looking at."""
        screen = self.screen
        if hasattr(screen, "show_message") and not getattr(screen, "closing", False):
            screen.show_message(text, error)
        elif self.list_screen is not None:
            self.list_screen.show_message(text, error)

    def attach(self, session_id: str | None) -> None:
        if session_id:
            self.push_screen(AttachScreen(session_id))

    @work(group="rpc")
    async def call_daemon(self, method: str, params: dict, done: str, after: Callable[[Any], None] | None = None) -> None:
        """Call the daemon off the key handler; say what happened on the status line."""
        try:
            result = await self.link.call(method, params)
        except RpcError as exc:
            self.say(exc.message, error=True)
            return
        except DaemonUnreachable:
            self.say(UNREACHABLE, error=True)
            return
        if isinstance(result, dict) and result.get("state") and self.table.offer(result):
            self.schedule_rebuild()
        if after is not None:
            after(result)
        self.say(done)

    @work(group="rpc")
    async def dispatch_session(self, what: model.Dispatch, attach: bool, restore: Callable[[], None]) -> None:
        try:
            session = await self.link.call("session.dispatch", {"prompt": what.prompt, "cwd": what.cwd})
        except (RpcError, DaemonUnreachable) as exc:
            restore()
            self.say(getattr(exc, "message", None) or UNREACHABLE, error=True)
            return
        self.table.offer(session)
        self.select_session(session["id"])
        self.rebuild()
        where = "" if what.cwd == self.cwd else f" · in {model.short_dir(what.cwd, 30)}"
        if session.get("state") == "failed":
            self.say(f"failed · {session['id']} · {session.get('error')}", error=True)
        else:
            self.say(f"backgrounded · {session['id']} · {model.clip(model.title_of(session), 40)}{where}")
        if attach:
            self.attach(session["id"])


def run(socket_path: str | Path, cwd: str, settings_path: str | Path) -> int:
    app = AgentsApp(socket_path, cwd, settings_path)
    app.run()
    return app.return_code or 0


__all__ = ["AgentsApp", "run"]
