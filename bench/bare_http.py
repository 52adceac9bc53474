"""The HTTP benchmark's baseline: a bare hypercorn + starlette app on trio answering GET /v1/health
with the same JSON as the daemon. `python3 bench/bare_http.py PORT VERSION`; prints "ready"."""

from __future__ import annotations

import sys

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


def main(port: int, version: str) -> None:
    payload = {"ok": True, "version": version}

    async def health(request: Request) -> JSONResponse:
        return JSONResponse(payload)

    app = Starlette(routes=[Route("/v1/health", health, methods=["GET"])])
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.errorlog = None

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve, app, config)
            print("ready", flush=True)

    trio.run(run)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
