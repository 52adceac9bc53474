"""Driving the real `bgls` over stdio with pytest-lsp's LanguageClient.

pytest runs in trio mode here, and pytest-lsp's fixtures are pytest-asyncio ones,
which trio mode takes over; so the tests are plain functions that run one asyncio
scenario each (`run(...)`), and `Editor` below starts bgls with a pytest-lsp client
and records what an editor would see.  Nothing sleeps for a fixed time: each wait
is on a condition that the notifications update.
"""

from __future__ import annotations

import asyncio
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Callable

from lsprotocol import types as lsp
from pytest_lsp import client_capabilities, make_test_lsp_client

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 20.0


def run(coro, timeout: float = 60.0):
    """Run one asyncio scenario (the tests themselves are synchronous: trio mode owns async tests)."""
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


class Editor:
    """A pytest-lsp client connected to a bgls process, with what it received."""

    def __init__(self, client) -> None:
        self.client = client
        self.statuses: list[dict] = []
        self.prompts: list[dict] = []  # {"params", "msg_id", "answer": Future}
        self.cancelled: list[str] = []  # ids of server requests the server withdrew
        self.reply_requests: list[dict] = []
        self.changed = asyncio.Condition()
        self.initialize_result: lsp.InitializeResult | None = None

    # -- waiting ---------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = TIMEOUT, what: str = "") -> Any:
        async def waiter():
            async with self.changed:
                while not (result := predicate()):
                    await self.changed.wait()
                return result
        try:
            return await asyncio.wait_for(waiter(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"timed out waiting for {what or predicate}; last status: "
                                 f"{self.statuses[-1] if self.statuses else None}; "
                                 f"messages: {[m.message for m in self.client.messages]}") from None

    async def poke(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def wait_status(self, predicate: Callable[[dict], bool], what: str = "", timeout: float = TIMEOUT) -> dict:
        return await self.wait_for(lambda: self.statuses[-1] if self.statuses and predicate(self.statuses[-1]) else None,
                                   timeout, what or "a status")

    async def wait_session(self, session_id: str, predicate: Callable[[dict], bool], what: str = "") -> dict:
        def find():
            if not self.statuses:
                return None
            for s in self.statuses[-1]["sessions"]:
                if s["id"] == session_id and predicate(s):
                    return s
            return None
        return await self.wait_for(find, what=what or f"session {session_id}")

    async def wait_prompt(self, session_id: str, n: int = 1) -> dict:
        return await self.wait_for(
            lambda: ([p for p in self.prompts if session_id in p["params"].message][n - 1:n] or [None])[0],
            what=f"prompt #{n} for {session_id}")

    async def wait_message(self, fragment: str) -> lsp.ShowMessageParams:
        return await self.wait_for(lambda: next((m for m in self.client.messages if fragment in m.message), None),
                                   what=f"a window/showMessage with {fragment!r}")

    # -- acting ------------------------------------------------------------------

    async def command(self, name: str, *args: Any) -> Any:
        return await self.client.workspace_execute_command_async(
            lsp.ExecuteCommandParams(command=name, arguments=list(args)))

    async def open(self, path: Path, text: str | None = None) -> str:
        uri = path.as_uri()
        self.client.text_document_did_open(lsp.DidOpenTextDocumentParams(text_document=lsp.TextDocumentItem(
            uri=uri, language_id="toml", version=1, text=path.read_text() if text is None else text)))
        return uri

    def change(self, uri: str, text: str, version: int) -> None:
        self.client.text_document_did_change(lsp.DidChangeTextDocumentParams(
            text_document=lsp.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[lsp.TextDocumentContentChangeWholeDocument(text=text)]))

    async def diagnostics(self, uri: str, predicate: Callable[[list], bool] = lambda d: True) -> list:
        def found():
            diags = self.client.diagnostics.get(uri)
            return (list(diags),) if diags is not None and predicate(list(diags)) else None
        return (await self.wait_for(found, what=f"diagnostics of {uri}"))[0]


def _install_handlers(editor: Editor) -> None:
    client = editor.client

    @client.feature("bgagents/status")
    async def on_status(params):
        editor.statuses.append(plain(params))
        await editor.poke()

    @client.feature("bgagents/replyRequested")
    async def on_reply_requested(params):
        editor.reply_requests.append(plain(params))
        await editor.poke()

    @client.feature(lsp.WINDOW_SHOW_MESSAGE_REQUEST)
    async def on_message_request(params: lsp.ShowMessageRequestParams):
        answer = asyncio.get_running_loop().create_future()
        editor.prompts.append({"params": params, "msg_id": client.protocol.msg_id, "answer": answer})
        await editor.poke()
        title = await answer
        return None if title is None else lsp.MessageActionItem(title=title)

    # Like most editors, this client cannot take a shown prompt back: it records the
    # withdrawal and the test decides what the user clicks afterwards.
    def on_cancel(msg_id):
        editor.cancelled.append(msg_id)
        asyncio.ensure_future(editor.poke())
    client.protocol._handle_cancel_notification = on_cancel

    # Wake waiters on every message the stock pytest-lsp handlers record.
    for method in (lsp.WINDOW_SHOW_MESSAGE, lsp.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS, lsp.PROGRESS,
                   lsp.WINDOW_SHOW_DOCUMENT, lsp.WINDOW_LOG_MESSAGE):
        _chain(editor, method)


def _chain(editor: Editor, method: str) -> None:
    client = editor.client
    original = client.protocol.fm.features[method]

    async def chained(*args):
        result = original(*args)
        if asyncio.iscoroutine(result):
            result = await result
        await editor.poke()
        return result

    client.protocol.fm.features[method] = chained


def plain(params: Any) -> Any:
    """pygls hands custom notification params over as namedtuple-like objects; make them dicts."""
    if isinstance(params, dict):
        return {k: plain(v) for k, v in params.items()}
    if isinstance(params, (list, tuple)) and not hasattr(params, "_fields"):
        return [plain(v) for v in params]
    if hasattr(params, "_asdict"):
        return {k: plain(v) for k, v in params._asdict().items()}
    return params


def bgls_command(socket: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bgls", "--socket", str(socket), *extra]


@asynccontextmanager
async def editor_session(bgd, *extra_args: str, capabilities: lsp.ClientCapabilities | None = None,
                         root: Path | None = None, env: dict | None = None):
    """bgls against `bgd` (conftest's Bgd), initialized as VS Code would, shut down afterwards."""
    client = make_test_lsp_client()
    editor = Editor(client)
    _install_handlers(editor)
    server_env = dict(bgd.env, **(env or {}))
    await client.start_io(*bgls_command(bgd.socket, *extra_args), env=server_env, cwd=str(ROOT))
    root = root or bgd.work
    caps = capabilities or client_capabilities("visual-studio-code")
    editor.initialize_result = await client.initialize_session(lsp.InitializeParams(
        capabilities=caps, root_uri=root.as_uri(),
        workspace_folders=[lsp.WorkspaceFolder(uri=root.as_uri(), name=root.name)]))
    try:
        yield editor
    finally:
        for prompt in editor.prompts:  # let pending prompts end so the server can shut down cleanly
            if not prompt["answer"].done():
                prompt["answer"].set_result(None)
        await client.shutdown_session()
        await client.stop()
