"""The LSP wiring of bgls: handlers translate and delegate.

Sessions and what to show about them live in `status`, the daemon link in
`daemon_link`, the command arguments in `commands`, the definitions files in
`tasks_lint` (tasks.toml) and `routines_lint` (routines.toml), on `definitions`.
This module turns their results into LSP messages, and keeps the per-editor
state (what was asked, the progress token) on the server object.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lsprotocol import types as lsp
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams
from pygls.lsp.server import LanguageServer
from pygls.uris import from_fs_path, to_fs_path
from pygls.workspace.position_codec import ServerTextPosition, ServerTextRange

from bgcore import paths
from bgcore.config import ConfigError, load_config
from bgcore.jsonrpc import INVALID_STATE, METHOD_NOT_FOUND, NOT_FOUND, RpcError
from bgcore.zones import local_zone

from . import __version__, commands, routines_lint, status, tasks_lint
from .daemon_link import DaemonLink, DaemonUnreachable
from .definitions import EditorContext, FileKind, Span

log = logging.getLogger("bgls")

STATUS_NOTIFICATION = "bgagents/status"
REPLY_REQUESTED = "bgagents/replyRequested"
REQUEST_FAILED = -32803  # LSP's RequestFailed: the daemon said no; its own code is in data
_SEVERITY = {"error": lsp.DiagnosticSeverity.Error, "warning": lsp.DiagnosticSeverity.Warning,
             "information": lsp.DiagnosticSeverity.Information}
FILE_KINDS: tuple[FileKind, ...] = (tasks_lint.KIND, routines_lint.KIND)


def file_kind(uri: str) -> FileKind | None:
    """The definitions file a document is (by its name), or None for any other file."""
    path = to_fs_path(uri)
    return next((kind for kind in FILE_KINDS if kind.handles(path)), None)


def editor_context() -> EditorContext:
    """What the user's config.toml says that the definitions files depend on (defaults when unreadable:
    the daemon then reports config.toml itself)."""
    try:
        config = load_config(paths.config_dir())
    except (ConfigError, OSError):
        return EditorContext()
    return EditorContext(frozenset(config.agents), config.routines.stagger)


class BglsServer(LanguageServer):
    """One editor's view of the daemon.  All state is here, none in module globals."""

    def __init__(self, socket_path: Path, *, spawn: bool = True, link: DaemonLink | None = None):
        super().__init__("bgls", __version__, text_document_sync_kind=lsp.TextDocumentSyncKind.Full)
        self.link = link or DaemonLink(socket_path, spawn=spawn)
        self.book = status.SessionBook()
        self.connected = False
        self.connection_detail: str | None = None
        self.asked: dict[str, str] = {}  # session id -> request id it was asked about
        self.ask_msg_ids: dict[str, str] = {}  # session id -> id of the showMessageRequest still open
        self._ids = itertools.count(1)
        self._last_status: dict | None = None
        self._progress_token: str | None = None
        self._progress_text: str | None = None
        self._progress_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        self._follower: asyncio.Task | None = None

    # -- life ------------------------------------------------------------------------

    def start_following(self) -> None:
        if self._follower is None:
            self._follower = asyncio.ensure_future(self.link.follow(self))

    def stop_following(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            self._follower = None
        for task in list(self._tasks):
            task.cancel()

    def spawn(self, coro) -> None:
        """Run a coroutine in the background, keeping a reference and logging its failure."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    def log_message(self, text: str, kind: lsp.MessageType = lsp.MessageType.Info) -> None:
        self.window_log_message(lsp.LogMessageParams(type=kind, message=text))

    def show_message(self, text: str, kind: lsp.MessageType = lsp.MessageType.Info) -> None:
        self.window_show_message(lsp.ShowMessageParams(type=kind, message=text))

    # -- the event stream (daemon_link.EventSink) --------------------------------------------

    def on_reset(self, sessions: list[dict]) -> None:
        self.book.reset(sessions)

    def on_events(self, events: list[dict]) -> None:
        changed = False
        for event in events:
            changed = self.book.apply(event) or changed
            if event.get("type") == "session.removed" and isinstance(event.get("id"), str):
                self.forget_transcript(event["id"])
        if changed:
            self.refresh()

    def on_connection(self, connected: bool, detail: str | None) -> None:
        self.connected, self.connection_detail = connected, detail
        if connected:
            self.log_message(f"bgls: following bgd on {self.link.socket_path}")
        else:
            self.log_message(f"bgls: bgd is not reachable ({detail}); retrying", lsp.MessageType.Warning)
        self.refresh()

    def refresh(self) -> None:
        """Bring what the editor shows in line with the book: status, progress, prompts."""
        now = datetime.now(timezone.utc)
        params = self.book.status(now, self.connected, self.connection_detail)
        if params != self._last_status:
            self._last_status = params
            self.protocol.notify(STATUS_NOTIFICATION, params)
            self.spawn(self.sync_progress())
        if self.connected:
            raise_now, withdraw = status.prompt_changes(self.asked, self.book.prompts())
            for session_id in withdraw:
                self.withdraw(session_id)
            for prompt in raise_now:
                self.ask(prompt)

    def current_status(self) -> dict:
        """The last status sent (or, before the first, what it would say)."""
        if self._last_status is not None:
            return self._last_status
        return self.book.status(datetime.now(timezone.utc), self.connected, self.connection_detail)

    # -- $/progress while sessions work ------------------------------------------------------

    def _supports_progress(self) -> bool:
        caps = self.client_capabilities
        return bool(caps and caps.window and caps.window.work_done_progress)

    async def sync_progress(self) -> None:
        """One work-done progress spans the time any session is working or needs input."""
        if not self._supports_progress():
            return
        async with self._progress_lock:
            current = self.current_status()
            text, active = current["text"], current["busy"] > 0
            if active and self._progress_token is None:
                token = f"bgagents-{next(self._ids)}"
                try:
                    await asyncio.wait_for(self.work_done_progress.create_async(token), 10)
                except Exception as exc:  # a client that refuses the token gets no progress, only the status
                    log.warning("the client did not create progress token %s: %s", token, exc)
                    return
                self._progress_token = token
                self._progress_text = text
                self.work_done_progress.begin(token, lsp.WorkDoneProgressBegin(
                    title="bgagents", message=text, cancellable=False))
            elif active and text != self._progress_text:
                self._progress_text = text
                self.work_done_progress.report(self._progress_token, lsp.WorkDoneProgressReport(message=text))
            elif not active and self._progress_token is not None:
                token, self._progress_token, self._progress_text = self._progress_token, None, None
                self.work_done_progress.end(token, lsp.WorkDoneProgressEnd(message=text))
                self.work_done_progress.tokens.pop(token, None)

    # -- needs input: window/showMessageRequest --------------------------------------------------

    def ask(self, prompt: status.Prompt) -> None:
        self.asked[prompt.session_id] = prompt.request_id
        msg_id = f"bgls-ask-{next(self._ids)}"
        self.ask_msg_ids[prompt.session_id] = msg_id
        self.spawn(self._ask(prompt, msg_id))

    def withdraw(self, session_id: str) -> None:
        """The request was decided elsewhere or withdrawn: ask the client to drop the prompt.

        A client that cannot (most show it until dismissed) may still send the choice;
        the daemon then refuses it as stale and the user is told so.
        """
        self.asked.pop(session_id, None)
        msg_id = self.ask_msg_ids.pop(session_id, None)
        if msg_id is not None:
            self.protocol.notify(lsp.CANCEL_REQUEST, lsp.CancelParams(id=msg_id))

    async def _ask(self, prompt: status.Prompt, msg_id: str) -> None:
        params = lsp.ShowMessageRequestParams(
            type=lsp.MessageType.Warning, message=prompt.message,
            actions=[lsp.MessageActionItem(title=title) for title in prompt.actions])
        try:
            choice = await self.protocol.send_request_async(lsp.WINDOW_SHOW_MESSAGE_REQUEST, params, msg_id=msg_id)
        except (JsonRpcException, asyncio.CancelledError, RuntimeError) as exc:
            log.info("prompt for %s ended without a choice: %s", prompt.session_id, exc)
            return
        finally:
            if self.ask_msg_ids.get(prompt.session_id) == msg_id:
                del self.ask_msg_ids[prompt.session_id]
        title = getattr(choice, "title", None) if choice is not None else None
        if title is None:
            return  # dismissed: the session keeps waiting, `bgagents.approve` etc. still work
        await self.on_choice(prompt, title)

    async def on_choice(self, prompt: status.Prompt, title: str) -> None:
        sid, rid = prompt.session_id, prompt.request_id
        if title == status.OPEN:
            await self.open_transcript(sid)
            if self.asked.get(sid) == rid:  # still undecided: ask again, now that they have looked
                self.ask(prompt)
            return
        if title == status.REPLY:
            session = self.book.get(sid) or {}
            self.protocol.notify(REPLY_REQUESTED, {
                "id": sid, "request_id": rid, "kind": prompt.kind, "message": prompt.message,
                "question": status.waiting_text(session.get("pending") or {}),
                "command": commands.REPLY, "arguments": [sid, "<text>", rid]})
            self.log_message(f"bgls: answer session {sid} with the command {commands.REPLY} "
                             f'[{sid!r}, TEXT, {rid!r}]')
            return
        if title == status.APPROVE:
            params = {"id": sid, "decision": "allow", "request_id": rid}
        elif title == status.DENY:
            params = {"id": sid, "decision": "deny", "request_id": rid}
        elif title in prompt.answers:
            params = {"id": sid, "decision": "allow", "answer": prompt.answers[title], "request_id": rid}
        else:
            self.show_message(f"bgagents: unknown choice {title!r}", lsp.MessageType.Warning)
            return
        try:
            await self.link.call("session.respond", params)
        except RpcError as err:
            stale = err.code in (INVALID_STATE, NOT_FOUND)
            self.show_message(f"bgagents: {title} for session {sid} was not applied: {err.message}",
                              lsp.MessageType.Info if stale else lsp.MessageType.Error)
        except DaemonUnreachable as exc:
            self.show_message(f"bgagents: {title} for session {sid} was not applied: {exc}", lsp.MessageType.Error)

    # -- commands --------------------------------------------------------------------------

    def default_cwd(self) -> str:
        """Where a dispatch from this editor runs: its first workspace folder."""
        try:
            workspace = self.workspace
        except RuntimeError:
            return os.getcwd()
        candidates = [to_fs_path(f.uri) for f in workspace.folders.values()] + [workspace.root_path]
        for path in candidates:
            if path and os.path.isdir(path):
                return path
        return os.getcwd()

    async def daemon_call(self, method: str, params: Any = None) -> Any:
        """A daemon call for a command: errors become clear LSP errors, never traces."""
        try:
            return await self.link.call(method, params)
        except RpcError as err:
            if err.code == METHOD_NOT_FOUND:
                message = f"bgd does not offer {method} (yet): {err.message}"
            else:
                message = f"bgd: {err.message}"
            raise JsonRpcException(message=message, code=REQUEST_FAILED,
                                   data={"daemon_code": err.code, "daemon_data": err.data}) from None
        except DaemonUnreachable as exc:
            raise JsonRpcException(message=f"bgd: {exc}", code=REQUEST_FAILED) from None

    async def run_command(self, name: str, args: list | None) -> Any:
        try:
            if name == commands.OPEN_TRANSCRIPT:
                return await self.open_transcript(commands.session_id(args, name), strict=True)
            if name == commands.REPLY:
                named = args[0] if args and isinstance(args[0], dict) else {}
                sid = named.get("id") if named else (args[0] if args else None)
                method, params = commands.reply(args, self.book.get(sid) if isinstance(sid, str) else None)
            elif name == commands.DISPATCH:
                method, params = commands.dispatch(args, self.default_cwd())
            elif name == commands.LIST:
                method, params = commands.list_sessions(args)
            elif name == commands.APPROVE:
                method, params = commands.approve(args)
            elif name == commands.DENY:
                method, params = commands.deny(args)
            elif name == commands.STOP:
                method, params = commands.stop(args)
            elif name == commands.LOOP:
                method, params = commands.loop(args, self.default_cwd())
            else:  # pragma: no cover - every registered name is handled above
                raise commands.CommandArgsError(f"unknown command {name}")
        except commands.CommandArgsError as exc:
            raise JsonRpcInvalidParams(message=f"{name}: {exc}") from None
        return await self.daemon_call(method, params)

    def transcripts_dir(self) -> Path:
        # In the user's state dir (private to them, as the daemon's own transcripts are).
        path = paths.state_dir() / "bgls-transcripts"
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        return path

    def forget_transcript(self, session_id: str) -> None:
        """A removed session's transcript file goes with it."""
        try:
            (paths.state_dir() / "bgls-transcripts" / f"{session_id}.transcript.txt").unlink()
        except OSError:
            pass

    async def open_transcript(self, session_id: str, *, strict: bool = False) -> dict | None:
        """Write the transcript to a file and ask the editor to show it."""
        from bgctl.render import session_detail, transcript_entry

        try:
            session = await self.daemon_call("session.get", {"id": session_id})
            answer = await self.daemon_call("session.transcript", {"id": session["id"]})
        except JsonRpcException as exc:
            if strict:
                raise
            self.show_message(f"bgagents: cannot open the transcript of {session_id}: {exc.message}",
                              lsp.MessageType.Error)
            return None
        lines = [session_detail(session), "", "─" * 60, ""]
        lines += [text for text in map(transcript_entry, answer["entries"]) if text]
        path = self.transcripts_dir() / f"{session['id']}.transcript.txt"
        await asyncio.to_thread(path.write_text, "\n".join(lines) + "\n", "utf-8")
        uri = from_fs_path(str(path))
        shown = False
        caps = self.client_capabilities
        if caps and caps.window and caps.window.show_document and caps.window.show_document.support:
            try:
                result = await asyncio.wait_for(self.window_show_document_async(
                    lsp.ShowDocumentParams(uri=uri, take_focus=True)), 30)
                shown = bool(result and result.success)
            except Exception as exc:
                log.warning("window/showDocument failed: %s", exc)
        if not shown:
            self.show_message(f"bgagents: transcript of {session['id']} is in {path}")
        return {"uri": uri, "path": str(path), "shown": shown}

    # -- tasks.toml and routines.toml ----------------------------------------------------------

    def lint_document(self, uri: str) -> None:
        kind = file_kind(uri)
        if kind is None:
            return
        doc = self.workspace.get_text_document(uri)
        problems = kind.lint(doc.source, now=datetime.now(timezone.utc), tz=local_zone(),
                             path=to_fs_path(uri) or kind.file_name, context=editor_context())
        diagnostics = [lsp.Diagnostic(range=to_client_range(doc, p.span), message=p.message,
                                      severity=_SEVERITY[p.severity], code=p.code, source="bgagents")
                       for p in problems]
        self.text_document_publish_diagnostics(lsp.PublishDiagnosticsParams(
            uri=uri, diagnostics=diagnostics, version=doc.version))

    def hover(self, uri: str, position: lsp.Position) -> lsp.Hover | None:
        kind = file_kind(uri)
        if kind is None:
            return None
        doc = self.workspace.get_text_document(uri)
        pos = doc.position_from_client_units(position)
        found = kind.hover(doc.source, pos.line, pos.character, now=datetime.now(timezone.utc), tz=local_zone(),
                           context=editor_context())
        if found is None:
            return None
        text, span = found
        return lsp.Hover(contents=lsp.MarkupContent(kind=lsp.MarkupKind.Markdown, value=text),
                         range=to_client_range(doc, span))

    def completion(self, uri: str, position: lsp.Position) -> lsp.CompletionList | None:
        kind = file_kind(uri)
        if kind is None:
            return None
        doc = self.workspace.get_text_document(uri)
        pos = doc.position_from_client_units(position)
        items = []
        for n, c in enumerate(kind.complete(doc.source, pos.line, pos.character, now=datetime.now(timezone.utc),
                                            tz=local_zone(), context=editor_context())):
            item_kind = {"field": lsp.CompletionItemKind.Field, "schedule": lsp.CompletionItemKind.Value,
                         "value": lsp.CompletionItemKind.EnumMember}[c.kind]
            edit = lsp.TextEdit(range=to_client_range(doc, c.replace), new_text=c.insert_text) if c.replace else None
            items.append(lsp.CompletionItem(
                label=c.label, kind=item_kind, detail=c.detail or None, sort_text=f"{n:03d}",
                documentation=lsp.MarkupContent(kind=lsp.MarkupKind.Markdown, value=c.documentation)
                if c.documentation else None,
                insert_text=c.insert_text, text_edit=edit, filter_text=c.insert_text if edit else None))
        return lsp.CompletionList(is_incomplete=False, items=items)


def to_client_range(doc, span: Span) -> lsp.Range:
    lines = doc.lines
    end_line = min(span.end_line, max(len(lines) - 1, 0))
    return doc.range_to_client_units(ServerTextRange(
        start=ServerTextPosition(span.line, span.start), end=ServerTextPosition(end_line, span.end)))


def build_server(socket_path: Path, *, spawn: bool = True) -> BglsServer:
    server = BglsServer(socket_path, spawn=spawn)

    @server.feature(lsp.INITIALIZED)
    def initialized(ls: BglsServer, params: lsp.InitializedParams) -> None:
        ls.start_following()

    @server.feature(lsp.SHUTDOWN)
    def shutdown(ls: BglsServer, params: None) -> None:
        ls.stop_following()

    @server.feature(STATUS_NOTIFICATION)
    def current_status(ls: BglsServer, params: Any) -> dict:
        """The same params as the last bgagents/status notification, on request."""
        return ls.current_status()

    @server.feature(lsp.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: BglsServer, params: lsp.DidOpenTextDocumentParams) -> None:
        ls.lint_document(params.text_document.uri)

    @server.feature(lsp.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: BglsServer, params: lsp.DidChangeTextDocumentParams) -> None:
        ls.lint_document(params.text_document.uri)

    @server.feature(lsp.TEXT_DOCUMENT_DID_SAVE)
    def did_save(ls: BglsServer, params: lsp.DidSaveTextDocumentParams) -> None:
        ls.lint_document(params.text_document.uri)  # a cwd or an env_file may have been created since

    @server.feature(lsp.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: BglsServer, params: lsp.DidCloseTextDocumentParams) -> None:
        if file_kind(params.text_document.uri) is not None:
            ls.text_document_publish_diagnostics(lsp.PublishDiagnosticsParams(
                uri=params.text_document.uri, diagnostics=[]))

    @server.feature(lsp.TEXT_DOCUMENT_HOVER)
    def hover(ls: BglsServer, params: lsp.HoverParams) -> lsp.Hover | None:
        return ls.hover(params.text_document.uri, params.position)

    @server.feature(lsp.TEXT_DOCUMENT_COMPLETION, lsp.CompletionOptions(trigger_characters=['"', "=", " ", "{", ",",
                                                                                          "[", "."]))
    def completion(ls: BglsServer, params: lsp.CompletionParams) -> lsp.CompletionList | None:
        return ls.completion(params.text_document.uri, params.position)

    for name in commands.COMMANDS:
        _register_command(server, name)
    return server


def _register_command(server: BglsServer, name: str) -> None:
    async def run(ls: BglsServer, *args: Any) -> Any:
        return await ls.run_command(name, list(args))

    run.__name__ = name.replace(".", "_")
    server.command(name)(run)
