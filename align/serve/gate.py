"""The ASGI middleware every request passes before FastAPI reads it: bearer token, then body size.

Both checks live here, below FastAPI, for the same reason: FastAPI reads (and parses) the whole body
before a route's dependencies run, so a token checked in a dependency would let an anonymous client
make the server read and parse up to the body limit, and a size checked after reading would have
read it. Here a request without the token is refused from its headers alone, a declared
``Content-Length`` over the limit is refused before one body byte is read, and a body without one
(``Transfer-Encoding: chunked``) is counted as it streams and cut off at the limit.

Which paths need the token: every ``/v1/...`` endpoint and ``/metrics`` (health included: it names
the checkpoint folder and the indexes' fields); the page (``/`` and its static files) does not,
because it holds no data and has to load before its user can type the token in.
"""

from __future__ import annotations

import hmac
import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PROTECTED_PREFIXES = ("/v1/", "/metrics")


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes the limit; FastAPI re-raises an
    ``HTTPException`` met while reading the body, and the app answers it as 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than the server's limit of {limit} bytes")


async def send_error(send: Send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class GateMiddleware:
    """Token (when configured) and body limit; see the module docstring."""

    def __init__(self, app: ASGIApp, *, token: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.max_body_bytes = int(max_body_bytes)

    def authorised(self, scope: Scope) -> bool:
        if self.token is None or not scope["path"].startswith(PROTECTED_PREFIXES):
            return True
        headers = dict(scope.get("headers") or ())
        scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self.authorised(scope):
            await send_error(
                send,
                401,
                "missing or wrong bearer token (send 'Authorization: Bearer TOKEN')",
                {"WWW-Authenticate": "Bearer"},
            )
            return
        limit = self.max_body_bytes
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await send_error(send, 400, f"Content-Length {declared.decode(errors='replace')!r} is no number")
                return
            if size > limit:
                await send_error(
                    send,
                    413,
                    f"request body of {size} bytes is larger than the server's limit of {limit} bytes",
                    {"Connection": "close"},
                )
                return
        seen = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge as err:  # raised where no handler turned it into a response
            if started:
                raise
            await send_error(send, 413, err.detail, {"Connection": "close"})
