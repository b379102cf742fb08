"""A bound on request bodies, checked before anything reads them.

FastAPI reads and parses a JSON body before the dependencies that authenticate run: without a
bound, anyone (no token needed) could make the service buffer and parse gigabytes. A body
announced larger than the bound is refused at once (413); one streamed without a length is
counted as it comes and refused when it passes the bound.
"""

from __future__ import annotations

from fastapi import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The API's bound: a run's inputs travel in one request (100,000 inputs of 500 bytes are
#: ~50 MB of JSON).
API_MAX_BODY_BYTES = 256 << 20
#: The web pages' forms hold a token or a CSRF field.
WEB_MAX_BODY_BYTES = 64 << 10


class BodyLimit:
    def __init__(
        self, app: ASGIApp, api_max: int = API_MAX_BODY_BYTES, web_max: int = WEB_MAX_BODY_BYTES
    ) -> None:
        self.app, self.api_max, self.web_max = app, api_max, web_max

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.web_max if str(scope.get("path", "")).startswith("/web") else self.api_max
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > limit
            except ValueError:
                too_big = True  # not a length: refused like one too large
            if too_big:
                await _too_large(limit)(scope, receive, send)
                return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, _detail(limit))
            return message

        await self.app(scope, counted, send)


def _detail(limit: int) -> str:
    return f"request body over {limit // 1024} KiB"


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse({"detail": _detail(limit)}, 413)
