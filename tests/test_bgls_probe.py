import asyncio, sys
import pytest
import pytest_lsp
from pytest_lsp import ClientServerConfig, LanguageClient
from lsprotocol import types

SERVER = r'''
from pygls.lsp.server import LanguageServer
from lsprotocol import types
s = LanguageServer("x", "1")
@s.feature(types.TEXT_DOCUMENT_HOVER)
def hover(ls, params):
    return types.Hover(contents="hi")
s.start_io()
'''

@pytest_lsp.fixture(config=ClientServerConfig(server_command=[sys.executable, "-c", SERVER]))
async def client(lsp_client: LanguageClient):
    await lsp_client.initialize_session(types.InitializeParams(capabilities=types.ClientCapabilities()))
    yield
    await lsp_client.shutdown_session()

@pytest.mark.asyncio
async def test_probe(client: LanguageClient):
    r = await client.text_document_hover_async(types.HoverParams(text_document=types.TextDocumentIdentifier(uri="file:///x"), position=types.Position(0,0)))
    assert r.contents == "hi"
    await asyncio.sleep(0.01)
