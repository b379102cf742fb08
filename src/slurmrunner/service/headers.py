"""Security headers on every response, and a content policy on the web pages.

The web pages show what users' jobs wrote (task names, errors, log tails): templates escape
it, and the content policy is the second line should an escape ever be missed: scripts only
from this server's own files (no inline script, no eval), no page of ours inside another
site's frame (clickjacking a Cancel or Retry button), forms posting only back here. Inline
`style` attributes stay allowed (the status bars' widths); they cannot run code.

The policy is not sent with `/docs` and `/redoc`: FastAPI's pages load their script from a
CDN and start it inline. The API's JSON needs no policy; `nosniff` stops a browser from reading a
JSON body (which may quote a user's text) as a page or a script.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

WEB_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
ALWAYS: list[tuple[bytes, bytes]] = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


def _is_web(path: str) -> bool:
    return path == "/" or path == "/web" or path.startswith("/web/")


def headers_for(path: str) -> dict[str, str]:
    """The headers an answer to `path` carries: added by SecurityHeaders, and by the 500
    handler (app.py), since Starlette sends an unhandled error's answer from outside every
    middleware, this one included."""
    found = {k.decode(): v.decode() for k, v in ALWAYS}
    if _is_web(path):
        found["content-security-policy"] = WEB_POLICY
    return found


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        wanted = headers_for(str(scope.get("path", "")))
        extra = [(name.encode(), value.encode()) for name, value in wanted.items()]

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                headers = list(message.get("headers", []))
                headers += [(k, v) for k, v in extra if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
