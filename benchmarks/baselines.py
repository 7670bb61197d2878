"""Baselines for the HTTP benchmark: the cheapest answers, served with policyd's own settings.

- `raw_app`: a raw ASGI app that reads the body and answers a constant allow.
- `fastapi_json_app`: a bare FastAPI endpoint that parses the body with `await request.json()`.
- `fastapi_model_app`: the same with a pydantic model, FastAPI's usual way to take a JSON body.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel

ALLOW = b'{"reject":false,"unchange":true}'
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(ALLOW))]


async def raw_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": ALLOW})


fastapi_json_app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


@fastapi_json_app.post("/handler")
async def allow_all_json(request: Request) -> Response:
    body = await request.json()
    if not isinstance(body, dict):
        return Response(b'{"error":"not an object"}', status_code=400, media_type="application/json")
    return Response(ALLOW, media_type="application/json")


class PluginBody(BaseModel):
    version: str = ""
    op: str
    content: dict[str, Any]


fastapi_model_app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


@fastapi_model_app.post("/handler")
async def allow_all_model(body: PluginBody) -> Response:
    return Response(ALLOW, media_type="application/json")


@fastapi_json_app.get("/healthz")
@fastapi_model_app.get("/healthz")
async def healthz() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


APPS = {"raw": raw_app, "fastapi-json": fastapi_json_app, "fastapi-model": fastapi_model_app}


def main() -> None:
    """`python -m benchmarks.baselines NAME PORT`: serve one baseline as `policyd serve` would."""
    import sys

    import uvicorn

    from policyd.service.serve import server_options
    from policyd.service.settings import Settings

    name, port = sys.argv[1], int(sys.argv[2])
    uvicorn.run(APPS[name], **server_options(Settings(port=port, log_level="warning")))  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
