"""ASGI middleware of the service: request ids with one access-log line per request, and trailing slashes.

- `RequestIdMiddleware` takes the client's `X-Request-ID` (a sane token) or makes one, sets
  `pmcqa.core.logs.request_id` for everything the request runs (log lines, error bodies, the OpenAI-compatible
  server), echoes it in the response, and logs one `pmcqa.access` line per request with route, status and
  latency (with `PMCQA_LOG_FORMAT=json`, those are JSON fields).
- `TrailingSlashMiddleware` serves `/papers/` as `/papers` (no redirect, and never as a paper id of "").
"""

from __future__ import annotations

import logging
import time

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pmcqa.core.logs import ACCESS_LOGGER, REQUEST_ID_HEADER, accept_request_id, request_id

access_log = logging.getLogger(ACCESS_LOGGER)


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = accept_request_id(Headers(scope=scope).get(REQUEST_ID_HEADER))
        # Not reset afterwards: the 500 handler runs outside this middleware and still needs it; every request
        # runs in its own task (own context), so nothing leaks into the next one.
        request_id.set(rid)
        started = time.perf_counter()
        status = 500  # what the client gets if the app fails before it starts a response

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                if REQUEST_ID_HEADER not in headers:
                    headers.append(REQUEST_ID_HEADER, rid)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = getattr(scope.get("route"), "path", None)  # the template, e.g. /papers/{paper_id:path}
            latency_ms = round((time.perf_counter() - started) * 1000, 1)
            access_log.info(
                "%s %s %s %.1fms",
                scope["method"],
                scope["path"],
                status,
                latency_ms,
                extra={
                    "request_id": rid,
                    "method": scope["method"],
                    "path": scope["path"],
                    "route": route,
                    "status": status,
                    "latency_ms": latency_ms,
                },
            )


class TrailingSlashMiddleware:
    """`/papers/` is `/papers`: strips trailing slashes before routing (FastAPI would redirect, or worse, read
    `/papers/` as the paper whose id is empty)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and len(path) > 1 and path.endswith("/"):
            scope = dict(scope)
            scope["path"] = path.rstrip("/") or "/"
            raw = scope.get("raw_path")
            if raw:
                scope["raw_path"] = raw.rstrip(b"/") or b"/"
        await self.app(scope, receive, send)
