"""The routines benchmarks' baseline: a bare hypercorn + starlette app on trio with the daemon's two
routine endpoints doing the least they could. `python3 bench/bare_routines.py PORT SECRET_FILE`;
prints "ready".

    POST /v1/github/webhook        reads the body, checks X-Hub-Signature-256 (HMAC-SHA256 with the
                                   secret, compared in constant time): 200 {"ok": true}, else 401
    POST /v1/routines/{name}/fire  reads the body, answers 200 with a JSON object of the daemon's shape

No dedupe, no matching, no store, no run: what is left is the HTTP server, the framework and the
signature, which is what the daemon's figures are divided by.
"""

from __future__ import annotations

import hashlib
import hmac
import sys
import uuid

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


def main(port: int, secret_file: str) -> None:
    with open(secret_file, "rb") as f:
        secret = f.read().strip()

    async def webhook(request: Request) -> JSONResponse:
        body = await request.body()
        given = request.headers.get("x-hub-signature-256") or ""
        expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return JSONResponse({"error": {"type": "unauthorized", "message": "wrong signature"}}, status_code=401)
        return JSONResponse({"ok": True})

    async def fire(request: Request) -> JSONResponse:
        await request.body()
        run = uuid.uuid4().hex[:8]
        return JSONResponse({"type": "routine_fire", "run_id": run, "routine": request.path_params["name"],
                             "status": "running", "session_id": run, "session_url": f"http://127.0.0.1:{port}/s/{run}"})

    app = Starlette(routes=[Route("/v1/github/webhook", webhook, methods=["POST"]),
                            Route("/v1/routines/{name}/fire", fire, methods=["POST"])])
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
