"""The agent view's secondary screens: peek, attach, rename and help (SPEC §9).

Imported only through `agents_view` (itself imported only by `bgctl agents`),
so the rest of bgctl never loads textual.  Also here: what every screen of
the view shares — `Line` (the line at the bottom that carries its screen's
commands), `LineCommands`, `Banner`, `while_shown` — and `TranscriptFollower`,
the live transcript that peek and attach both follow.  The list screen and
the app, which owns the daemon link, are in `agents_view`.

Focus stays on the line at the bottom of each screen, so typing always goes
there.  Keys that would also be text (Space, →, ?, q, digits) are commands
only while that line is empty; the rest (↑/↓, Ctrl+…, Esc) always are.  The
line itself decides which a key is (`Line`), in the order the keys were typed:
a binding that looked at the line's text could see it before the keys typed
just ahead of it had landed, and a fast typist's spaces would open peeks.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from rich.text import Text
from textual import events, work
from textual.message import Message
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.screen import ModalScreen, Screen
from textual.widgets import Input, Label, RichLog, Static

from bgcore.aio_link import DaemonUnreachable, RpcError

from . import agents_model as model

UNREACHABLE = "daemon unreachable — reconnecting…"


def while_shown(method: Callable) -> Callable:
    """For code run by timers and daemon events: do nothing once the widgets are gone.

    Quitting unmounts screens while a redraw timer or an event may still be
    on its way; that must end quietly, not with a traceback on a restored
    terminal.
    """
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except NoMatches:
            return None
    return wrapper
MESSAGE_S = 6.0          # how long a status message stays before the key hints return
PEEK_LINES = 6           # lines of latest output in a peek

HELP = """\
[b]Agent view[/b] — every session of this daemon, live.   (Esc, q or ? closes)
  ↑ ↓        move                Space    peek: latest output or the request
  Enter →    attach: live transcript and a reply box (Esc or ← on it: back)
  Ctrl+T     pin / unpin         Ctrl+R   rename (an empty name clears it)
  Ctrl+X     stop; again within 2 s: remove
  Ctrl+S     group by directory / by state (remembered)
  ?          this help           q Ctrl+C quit
  Enter or Space on "… N more" unfolds the older completed sessions.

[b]The line at the bottom[/b]
  PROMPT ⏎           start a session in this directory
  @dir PROMPT ⏎      … in the directory `dir` beside this one
  Shift+⏎            dispatch and attach (Ctrl+J or Alt+⏎ in terminals
                     that send Shift+⏎ as a plain ⏎)
  s:STATE ⏎          filter: s:failed, s:needs, s:done…; s: alone clears

[b]Peek and attach[/b]  1 approve · 2 approve always · 3 deny, or a question's
  options; typed text ⏎ answers (denies with that message, or replies).

Space → ← ? q and digits are commands only while the line is empty; press
Tab first (› turns ✎) to type a line that starts with one of them."""


class Banner(Static):
    """One line shown while the daemon cannot be reached."""

    DEFAULT_CSS = """
    Banner { height: 1; background: $error; color: $text; text-style: bold; display: none; }
    Banner.down { display: block; }
    """


class Line(Input):
    """A one-line input without borders that also carries its screen's commands.

    `when_empty` maps keys to screen actions while the line is empty (and not
    in typing mode); `always` maps keys to actions whatever the line holds
    (Enter and friends, which submit it).  The action is posted as a
    `Line.Command` with the text as it was when the key arrived.  Tab switches
    typing mode on, where only `always` keys are commands, for a line that
    must start with Space, q, ? or a digit.
    """

    class Command(Message):
        def __init__(self, line: "Line", action: str, value: str) -> None:
            super().__init__()
            self.line = line
            self.action = action
            self.value = value

    def __init__(self, placeholder: str, id: str, *, when_empty: dict[str, str] | None = None,
                 always: dict[str, str] | None = None) -> None:
        super().__init__(placeholder=placeholder, id=id, compact=True, select_on_focus=False)
        self.when_empty = when_empty or {}
        self.always = always or {}
        self.typing = False

    async def _on_key(self, event: events.Key) -> None:
        action = self.always.get(event.key)
        if action is None and not self.value and not self.typing:
            action = self.when_empty.get(event.key)
        if action is not None:
            event.stop()
            event.prevent_default()   # nor Input's own handling (no text, no submit)
            self.post_message(self.Command(self, action, self.value))

    def set_typing(self, typing: bool) -> None:
        self.typing = typing
        self.set_class(typing, "typing")
        for mark in self.screen.query(".mark"):
            mark.update("✎ " if typing else "› ")

    def clear(self) -> None:
        self.value = ""
        self.set_typing(False)


class LineCommands:
    """A screen mixin: run `do_<action>(value, *args)` for each `Line.Command`.

    An action written `choose:3` passes "3" as an argument.
    """

    def on_line_command(self, message: Line.Command) -> None:
        message.stop()
        name, _, arg = message.action.partition(":")
        handler = getattr(self, "do_" + name)
        handler(message.value, arg) if arg else handler(message.value)


DIGIT_KEYS = {str(n): f"choose:{n}" for n in range(1, 10)}


# -- peek -------------------------------------------------------------------------

class TranscriptFollower:
    """A screen mixin: load a session's transcript once, then follow it live.

    Entries that arrive while the first load is in flight are held back so
    lines appear in order; entry numbers drop anything seen twice (a
    reconnect replays events after `since`).  The screen it is mixed into
    provides `add_lines(lines)`, which shows new transcript lines.
    """

    session_id: str

    def init_follower(self) -> None:
        self.entries_seen = -1
        self.loaded = False
        self.held: list[dict] = []
        self.lines: list[str] = []

    @work(group="transcript", exclusive=True)
    async def load_transcript(self) -> None:
        try:
            answer = await self.app.link.call("session.transcript", {"id": self.session_id, "since": self.entries_seen})
        except (RpcError, DaemonUnreachable) as exc:
            self.add_lines([f"· could not load the transcript: {getattr(exc, 'message', exc)}"])
            return
        self.loaded = True
        self.take_entries(answer.get("entries") or [])
        held, self.held = self.held, []
        self.take_entries(held)

    def transcript_event(self, entry: dict) -> None:
        if not self.loaded:
            self.held.append(entry)
        else:
            self.take_entries([entry])

    def take_entries(self, entries: list[dict]) -> None:
        fresh = [e for e in sorted(entries, key=lambda e: e.get("n", -1)) if e.get("n", -1) > self.entries_seen]
        if fresh:
            self.entries_seen = fresh[-1]["n"]
            self.add_lines(model.transcript_lines(fresh))

    def resynced(self) -> None:
        """After a reconnect: fetch anything after the last entry seen."""
        self.loaded = False
        self.load_transcript()



class PeekScreen(LineCommands, TranscriptFollower, ModalScreen):
    """A quick look at one session: latest output, or its pending request, answerable here."""

    BINDINGS = [
        Binding("escape", "close", priority=True, show=False),
        Binding("tab", "typing", priority=True, show=False),
        Binding("up", "move(-1)", priority=True, show=False),
        Binding("down", "move(1)", priority=True, show=False),
    ]
    WHEN_EMPTY = {"space": "close", **DIGIT_KEYS}
    ALWAYS = {"enter": "enter"}

    STYLE = """
    PeekScreen { align: center bottom; }
    #peek { height: auto; max-height: 18; width: 100%; border: round $accent; background: $surface;
            padding: 0 1; }
    #peek-title { height: 1; text-style: bold; }
    #peek-output { height: auto; max-height: 7; color: $text-muted; }
    #peek-pending { height: auto; color: $warning; }
    #peek-choices { height: auto; text-style: bold; }
    #peek-hint { height: 1; color: $text-muted; }
    #peek-row { height: 1; }
    #peek-row .mark { width: 2; color: $accent; }
    #peek-input { width: 1fr; }
    """

    def __init__(self, session_id: str) -> None:
        super().__init__()
        self.session_id = session_id
        self.init_follower()
        self.choice_text = ""
        self.hint_text = ""
        self.closing = False

    def compose(self) -> ComposeResult:
        with Vertical(id="peek"):
            yield Static("", id="peek-title")
            yield Static("", id="peek-output")
            yield Static("", id="peek-pending")
            yield Static("", id="peek-choices")
            with Horizontal(id="peek-row"):
                yield Label("› ", classes="mark")
                yield Line("", "peek-input", when_empty=self.WHEN_EMPTY, always=self.ALWAYS)
            yield Static("", id="peek-hint")

    def on_mount(self) -> None:
        self.query_one("#peek-input", Input).focus()
        self.refresh_session()
        self.load_transcript()

    @property
    def session(self) -> dict | None:
        return self.app.table.sessions.get(self.session_id)

    @property
    def line(self) -> Line:
        return self.query_one("#peek-input", Line)

    def retarget(self, session_id: str) -> None:
        self.session_id = session_id
        self.init_follower()
        self.query_one("#peek-output", Static).update("")
        self.refresh_session()
        self.load_transcript()

    @while_shown
    def refresh_session(self) -> None:
        session = self.session
        if session is None:
            self.query_one("#peek-title", Static).update(f"{self.session_id} — removed")
            return
        state = session["state"] + (f" ({session['waiting_for']})" if session.get("waiting_for") else "")
        badge = model.loop_badge(session, self.app.now())
        title = Text.assemble((model.STATE_MARKS.get(session["state"], " ") + " ", model.STATE_STYLES.get(session["state"], "")),
                              (model.clip(model.title_of(session), 50), "bold"),
                              f"  {state}  {model.short_dir(session.get('cwd') or '', 30)}  {model.cost_text(session)}",
                              f"  {badge}" if badge else "")
        self.query_one("#peek-title", Static).update(title)
        pending = model.pending_lines(session)
        if not pending and session.get("state") == "failed" and session.get("error"):
            pending = [f"✗ {session['error']}"]
        self._set("#peek-pending", Text("\n".join(pending)))
        choices = model.choices(session)
        self.choice_text = "   ".join(f"{c.key} {c.label}" for c in choices)
        self._set("#peek-choices", self.choice_text)
        if choices and session.get("waiting_for") == "question":
            hint, placeholder = "digit: pick · text ⏎: answer · ⏎: attach · esc: close", "type an answer"
        elif choices:
            hint, placeholder = "digit: decide · text ⏎: deny with that message · ⏎: attach · esc: close", "deny with a message"
        elif session.get("state") == "working":
            hint, placeholder = "⏎: attach · ↑↓: next session · esc/space: close", "(working — replies wait for the turn to end)"
        else:
            hint, placeholder = "text ⏎: reply (starts a new turn) · ⏎: attach · esc/space: close", "reply"
        self.line.placeholder = placeholder
        if not self.hint_text:
            self.query_one("#peek-hint", Static).update(hint)

    def _set(self, selector: str, content: Any) -> None:
        widget = self.query_one(selector, Static)
        widget.update(content)
        widget.display = bool(str(content))

    @while_shown
    def add_lines(self, lines: list[str]) -> None:
        self.lines.extend(lines)
        tail = self.lines[-PEEK_LINES:]
        self._set("#peek-output", Text("\n".join(model.clip(l, 200) for l in tail)))

    # events from the app
    def daemon_session(self, session_id: str) -> None:
        if session_id == self.session_id:
            self.refresh_session()

    def daemon_transcript(self, session_id: str, entry: dict) -> None:
        if session_id == self.session_id:
            self.transcript_event(entry)

    @while_shown
    def show_message(self, text: str, error: bool = False) -> None:
        self.hint_text = text
        hint = self.query_one("#peek-hint", Static)
        hint.update(Text(text, style="bold red" if error else ""))

    # actions
    def action_typing(self) -> None:
        self.line.set_typing(not self.line.typing)

    def action_close(self) -> None:
        self.closing = True
        self.dismiss()

    def do_close(self, value: str) -> None:
        self.action_close()

    def action_move(self, step: int) -> None:
        self.app.move_selection(step)
        session = self.app.selected_session()
        if session is not None and session["id"] != self.session_id:
            self.retarget(session["id"])

    def do_enter(self, value: str) -> None:
        text = value.strip()
        if text:
            self.line.clear()
            self.app.call_daemon("session.reply", {"id": self.session_id, "text": text}, "sent", after=self._after_answer)
            return
        session_id = self.session_id
        self.action_close()
        self.app.attach(session_id)

    def do_choose(self, value: str, key: str) -> None:
        session = self.session
        choice = model.choice_for(session, key) if session else None
        if choice is None:
            # Nothing pending: the digit was meant as text.
            self.line.insert_text_at_cursor(key)
            return
        self.app.call_daemon("session.respond", {"id": self.session_id, **choice.params},
                             f"{choice.label} · {model.clip(model.title_of(session), 40)}", after=self._after_answer)

    def _after_answer(self, result: Any) -> None:
        # Answered: back to the list, ready for the next one.
        if self.is_current and not self.closing:
            self.action_close()


# -- attach -----------------------------------------------------------------------

class AttachScreen(LineCommands, TranscriptFollower, Screen):
    """One session's full transcript, live, with a reply box."""

    BINDINGS = [
        Binding("escape", "back", priority=True, show=False),
        Binding("tab", "typing", priority=True, show=False),
        Binding("ctrl+x", "stop", priority=True, show=False),
    ]
    WHEN_EMPTY = {"left": "back", **DIGIT_KEYS}
    ALWAYS = {"enter": "send"}

    STYLE = """
    #attach-title { height: 1; background: $panel; }
    #transcript { height: 1fr; border: none; background: $surface; }
    #attach-pending { height: auto; max-height: 4; color: $warning; }
    #attach-hint { height: 1; color: $text-muted; }
    #attach-hint.error { color: $error; text-style: bold; }
    #reply-row { height: 1; }
    #reply-mark { width: 2; color: $accent; }
    #reply { width: 1fr; }
    """

    def __init__(self, session_id: str) -> None:
        super().__init__()
        self.session_id = session_id
        self.init_follower()
        self.hint_text = ""
        self._hint_timer = None

    def compose(self) -> ComposeResult:
        yield Banner(UNREACHABLE, id="banner")
        yield Static("", id="attach-title")
        log = RichLog(id="transcript", wrap=True, markup=False, highlight=False)
        log.can_focus = False
        yield log
        yield Static("", id="attach-pending")
        yield Static("", id="attach-hint")
        with Horizontal(id="reply-row"):
            yield Label("› ", id="reply-mark", classes="mark")
            yield Line("reply… (Esc, or ← on an empty line: back to the list)", "reply",
                       when_empty=self.WHEN_EMPTY, always=self.ALWAYS)

    def on_mount(self) -> None:
        self.query_one("#reply", Input).focus()
        self.app.show_link_state(self)
        self.refresh_session()
        self.load_transcript()

    @property
    def session(self) -> dict | None:
        return self.app.table.sessions.get(self.session_id)

    @property
    def line(self) -> Line:
        return self.query_one("#reply", Line)

    @while_shown
    def refresh_session(self) -> None:
        session = self.session
        title = self.query_one("#attach-title", Static)
        if session is None:
            title.update(f"{self.session_id} — removed")
            self.query_one("#attach-pending", Static).update("")
            return
        state = session["state"] + (f" ({session['waiting_for']})" if session.get("waiting_for") else "")
        badge = model.loop_badge(session, self.app.now())
        title.update(Text.assemble(
            (model.STATE_MARKS.get(session["state"], " ") + " ", model.STATE_STYLES.get(session["state"], "")),
            (model.clip(model.title_of(session), 40), "bold"),
            f"  {state}  {model.short_dir(session.get('cwd') or '', 28)}  {model.cost_text(session)}",
            f"  {badge}" if badge else "", f"  {session['id']}"))
        lines = model.pending_lines(session)
        choices = model.choices(session)
        if choices:
            lines.append("   ".join(f"{c.key} {c.label}" for c in choices)
                         + ("   · or type an answer" if session.get("waiting_for") == "question" else ""))
        self.query_one("#attach-pending", Static).update(Text("\n".join(lines)))
        if not self.hint_text:
            self._show_hint(self._default_hint(session))

    def _default_hint(self, session: dict) -> str:
        if session.get("state") == "working":
            return "working · Esc back · Ctrl+X stop"
        if session.get("state") == "needs_input":
            return "needs input · digits decide · text ⏎ answers/denies · Esc back"
        return f"{session['state']} · text ⏎ replies (a new turn) · Esc back"

    def _show_hint(self, text: str, error: bool = False) -> None:
        hint = self.query_one("#attach-hint", Static)
        hint.update(text)
        hint.set_class(error, "error")

    @while_shown
    def show_message(self, text: str, error: bool = False) -> None:
        self.hint_text = text
        self._show_hint(text, error)
        if self._hint_timer is not None:
            self._hint_timer.stop()
        self._hint_timer = self.set_timer(MESSAGE_S, self._clear_message)

    @while_shown
    def _clear_message(self) -> None:
        self.hint_text = ""
        if self.session:
            self._show_hint(self._default_hint(self.session))

    @while_shown
    def add_lines(self, lines: list[str]) -> None:
        self.lines.extend(lines)
        log = self.query_one("#transcript", RichLog)
        for line in lines:
            log.write(Text(line))

    def daemon_session(self, session_id: str) -> None:
        if session_id == self.session_id:
            self.refresh_session()

    def daemon_transcript(self, session_id: str, entry: dict) -> None:
        if session_id == self.session_id:
            self.transcript_event(entry)

    def action_typing(self) -> None:
        self.line.set_typing(not self.line.typing)

    def action_back(self) -> None:
        self.app.pop_screen()

    def do_back(self, value: str) -> None:
        self.action_back()

    def do_send(self, value: str) -> None:
        text = value.strip()
        if not text:
            return
        self.line.clear()
        self.app.call_daemon("session.reply", {"id": self.session_id, "text": text}, "sent")

    def do_choose(self, value: str, key: str) -> None:
        session = self.session
        choice = model.choice_for(session, key) if session else None
        if choice is None:
            # Nothing pending: the digit was meant as text.
            self.line.insert_text_at_cursor(key)
            return
        self.app.call_daemon("session.respond", {"id": self.session_id, **choice.params}, choice.label)

    def action_stop(self) -> None:
        self.app.call_daemon("session.stop", {"id": self.session_id}, "stopped")


# -- small modals -------------------------------------------------------------------

class RenameScreen(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "cancel", priority=True, show=False)]
    STYLE = """
    RenameScreen { align: center middle; }
    #rename { width: 60; height: auto; border: round $accent; background: $surface; padding: 0 1; }
    """

    def __init__(self, current: str) -> None:
        super().__init__()
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="rename"):
            yield Static("Rename (empty clears; Enter saves, Esc cancels)")
            yield Line("a name", "rename-input")

    def on_mount(self) -> None:
        line = self.query_one("#rename-input", Input)
        line.value = self.current
        line.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,q,question_mark,space,enter", "close", priority=True, show=False)]
    STYLE = """
    HelpScreen { align: center middle; }
    #help { width: 80; max-width: 100%; height: auto; max-height: 100%; border: round $accent;
            background: $surface; padding: 0 1; overflow-y: auto; }
    """

    def compose(self) -> ComposeResult:
        yield Static(HELP, id="help")

    def action_close(self) -> None:
        self.dismiss()
