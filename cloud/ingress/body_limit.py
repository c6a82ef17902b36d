"""A limit on HTTP request bodies, as ASGI middleware: a larger body is answered 413 before the app reads it.

Starlette has no such setting, and Ray Serve's HTTP proxy passes any body on.
A declared ``Content-Length`` over the limit is refused at once; a body sent
without one (chunked) is counted as it arrives and refused when it passes the
limit. Paths under a listed prefix may have their own limit (model uploads are
larger than escalations).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _TooLarge(Exception):
    pass


class BodyLimit:
    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        by_prefix: Mapping[str, int] | None = None,
        on_refused: Callable[[], None] = lambda: None,
    ) -> None:
        """``on_refused``: called for every body refused (a counter)."""
        self.app = app
        self.max_bytes = max_bytes
        self.by_prefix = dict(by_prefix or {})
        self.on_refused = on_refused

    def limit_for(self, path: str) -> int:
        return next((limit for prefix, limit in self.by_prefix.items() if path.startswith(prefix)), self.max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            self.on_refused()
            await _refuse(scope, send, int(declared), limit)
            return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if started:  # the app answered before reading it all; nothing more can be said
                raise
            self.on_refused()
            await _refuse(scope, send, seen, limit)


async def _refuse(scope: Scope, send: Send, size: int, limit: int) -> None:
    message = f"request body of {size} bytes or more is larger than the limit of {limit} bytes"
    # The v2 protocol's errors are {"error": ...}; the rest of the API uses FastAPI's {"detail": ...}.
    key = "error" if scope.get("path", "").startswith("/v2") else "detail"
    body = json.dumps({key: message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
