"""The daemon's Temporal client, on a thread of its own with its own asyncio loop.

The daemon is trio; the Temporal SDK is asyncio (over a Rust core with its own threads).  Two ways
were open: trio-asyncio, which runs an asyncio loop inside trio's, or a thread.  A thread was
chosen: the SDK's callbacks, its gRPC traffic and the decoding of history events (protobuf) then
never run on the trio loop, so a burst of transcript lines from the cluster cannot delay a socket
client, and the daemon's hot paths stay exactly as they are for local sessions.  The price is a
hand-off in each direction: trio -> asyncio through `asyncio.run_coroutine_threadsafe` (`call`,
`spawn`), asyncio -> trio through the trio token (`post`), where the results are applied.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from typing import Any, Awaitable, Callable

import trio

log = logging.getLogger("bgd.cluster")


class LinkError(RuntimeError):
    """The Temporal server cannot be reached (the message says where and why)."""


class TemporalLink:
    def __init__(self, address: str, namespace: str, codec=None):
        self.address = address
        self.namespace = namespace
        self.codec = codec            # bgd.cluster.codec.ClusterCodec: every payload encrypted
        self.key_checked: set[str] = set()   # task queues whose key check this key opened
        self.loop: asyncio.AbstractEventLoop | None = None
        self.client = None
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._connecting: asyncio.Lock | None = None
        self.closed = False

    def start(self) -> None:
        """Start the thread (from trio)."""
        self._token = trio.lowlevel.current_trio_token()
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self.loop = loop
            self._connecting = asyncio.Lock()
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="bgd-temporal", daemon=True)
        self._thread.start()
        ready.wait()

    def stop(self) -> None:
        self.closed = True
        loop = self.loop
        if loop is None or loop.is_closed():
            return

        def cancel_all() -> None:
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.call_soon(loop.stop)

        loop.call_soon_threadsafe(cancel_all)
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- on the asyncio side ----------------------------------------------------------

    async def connected(self):
        """The client, connecting on first use; raises LinkError when the server cannot be reached."""
        if self.client is not None:
            return self.client
        from temporalio.client import Client
        from temporalio.converter import DataConverter
        async with self._connecting:
            if self.client is None:
                converter = DataConverter.default
                if self.codec is not None:
                    from bgd.cluster.codec import data_converter
                    converter = data_converter(self.codec)
                try:
                    self.client = await Client.connect(self.address, namespace=self.namespace, identity="bgd",
                                                       data_converter=converter)
                except Exception as exc:
                    raise LinkError(f"cannot reach the Temporal server at {self.address} ({_short(exc)}); "
                                    "check [cluster] temporal in config.toml and that the server runs "
                                    "(docs/cluster.md)") from None
        return self.client

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` on the trio loop, soon (from the asyncio thread)."""
        if self.closed:
            return
        try:
            self._token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            pass

    # -- from trio ----------------------------------------------------------------------

    def spawn(self, coro: Awaitable[Any]) -> concurrent.futures.Future:
        """Start a coroutine on the asyncio loop and leave it running."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def call(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Await `fn(*args)` on the asyncio loop from trio; cancelling the trio side cancels it."""
        done = trio.Event()
        future = asyncio.run_coroutine_threadsafe(fn(*args), self.loop)
        future.add_done_callback(lambda _: self.post(done.set))
        try:
            await done.wait()
        except trio.Cancelled:
            future.cancel()
            raise
        return future.result()


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
