"""The routine endpoints on the daemon's HTTP listener (docs/http.md): thin starlette handlers over
fires.py, mounted by install() and wanted while some routine has an API or GitHub trigger.

    POST /v1/routines/<name>/fire   Authorization: Bearer <token>; optional {"text": "..."}; Idempotency-Key
    POST /v1/github/webhook         X-Hub-Signature-256, X-GitHub-Event, X-GitHub-Delivery (bodies up to 25 MiB)
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bgd import fastjson
from bgd.group_commit import CommitFailed
from bgd.http.errors import json_error
from bgd.routines.fires import GITHUB_MAX_BODY, Refusal, api_fire, github_delivery


def routes(service) -> list[Route]:
    async def fire(request: Request) -> JSONResponse:
        body = await request.body()
        try:
            status, answer, headers = await api_fire(service, request.path_params["name"],
                                                     request.headers.get("authorization"), body,
                                                     request.headers.get("idempotency-key"))
        except Refusal as refusal:
            return _refused(refusal)
        return JSONResponse(answer, status_code=status, headers=headers)

    async def webhook(request: Request) -> Response:
        body = await request.body()
        try:
            status, answer, stored = github_delivery(service, request.headers, body)  # (its get ignores case)
            if stored is not None:
                await stored.wait()  # answered once what it wrote is committed
        except Refusal as refusal:
            return _refused(refusal)
        except CommitFailed as exc:
            return json_error(500, f"{exc}; the daemon's log says why")
        return Response(fastjson.dumps(answer), status_code=status, media_type="application/json")

    return [Route("/v1/routines/{name}/fire", fire, methods=["POST"], name="routine_fire"),
            Route("/v1/github/webhook", webhook, methods=["POST"], name="github_webhook",
                  max_body_size=GITHUB_MAX_BODY)]


def _refused(refusal: Refusal) -> JSONResponse:
    if refusal.extra:
        return JSONResponse(refusal.body(), status_code=refusal.status, headers=refusal.headers)
    return json_error(refusal.status, refusal.message, refusal.type, headers=refusal.headers)
