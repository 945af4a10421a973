"""`RequestGuard`: pure ASGI middleware in front of every route, for what must happen before a body is read.

* **Auth first**: with `api_keys` set, a request without a valid ``Authorization: Bearer`` key gets its 401
  before a byte of its body is read (an unauthenticated 100 MB body costs the server nothing). What needs no
  key is `is_public`: the probes and GET /, and the docs unless `docs_access` is `key`.
* **Body cap**: a JSON body over `max_body_bytes` (a JATS upload, ``POST /papers``: `max_upload_bytes`) is a
  413. A declared Content-Length over the cap is refused at once; a chunked or lying body is counted as it
  streams and refused as soon as it passes the cap, so memory stays bounded either way.
* **Last resort for bugs**: an exception no handler turned into a response becomes the JSON 500 here, and the
  exception stops here. Left to Starlette's outermost middleware it would be re-raised to uvicorn, which
  then closes the connection: the client's next keep-alive request would be reset.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pmcqa.app.deps import key_matches
from pmcqa.app.docs import STATIC_URL
from pmcqa.app.errors import InternalError, PayloadTooLarge
from pmcqa.core.logs import request_id
from pmcqa.core.settings import Settings

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/"})  # probes, and the pointer to the docs
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
UPLOAD_PATH = "/papers"  # POST: one JATS article as the body, up to max_upload_bytes

BEARER_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def auth_problem(authorization: str | None, keys: list[str]) -> str | None:
    """Why a request's Authorization header is refused, or None when it carries one of `keys`."""
    scheme, _, credentials = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return "missing API key: send `Authorization: Bearer <key>`"
    if not key_matches(credentials.strip(), keys):
        return "invalid API key"
    return None


def is_public(path: str, settings: Settings) -> bool:
    """Whether a path is served without a key (the auth matrix of `deps.require_api_key`)."""
    if path in OPEN_PATHS:
        return True
    docs = path in DOCS_PATHS or path.startswith(STATIC_URL + "/")
    return docs and settings.docs_access != "key"


class RequestGuard:
    def __init__(self, app: ASGIApp, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.app = app
        self.settings = settings
        # The guard answers before the request reaches the HTTP metrics (they sit inside it): its refusals
        # are counted here, so a scraper sees a client failing auth or sending oversized bodies.
        self.refused = Counter(
            "pmcqa_requests_refused",
            "Requests refused before routing, by reason (unauthorized: no or a wrong API key; "
            "payload_too_large: a declared body over its limit).",
            ["reason"],
            registry=registry if registry is not None else CollectorRegistry(),  # never the global one
        )

    def body_limit(self, method: str, path: str) -> int:
        if method == "POST" and path.rstrip("/") == UPLOAD_PATH:
            return self.settings.max_upload_bytes
        return self.settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if self.settings.api_keys and not is_public(scope["path"], self.settings):
            problem = auth_problem(headers.get("authorization"), self.settings.api_keys)
            if problem is not None:
                self.refused.labels("unauthorized").inc()
                await _reply(scope, receive, send, 401, "unauthorized", problem, BEARER_CHALLENGE)
                return
        limit = self.body_limit(scope["method"], scope["path"])
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            detail = f"the body is {declared} bytes; the limit is {limit}"
            self.refused.labels(PayloadTooLarge.code).inc()
            await _reply(scope, receive, send, 413, PayloadTooLarge.code, detail)
            return

        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # An HTTPException passes FastAPI's body parsing unchanged and becomes the JSON 413.
                    raise HTTPException(413, f"the body is over the limit of {limit} bytes")
            return message

        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except Exception:
            # Logged with the traceback for operators; the client gets a clean message, never the trace.
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if not started:
                detail = "internal error; see the server log"
                await _reply(scope, receive, send, InternalError.http_status, InternalError.code, detail)
            # Started already (a stream broke): the response ends short; nothing more can be said on it.


async def _reply(
    scope: Scope,
    receive: Receive,
    send: Send,
    status: int,
    code: str,
    detail: str,
    headers: dict[str, str] | None = None,
) -> None:
    body = {"error": code, "detail": detail, "request_id": request_id.get()}
    await JSONResponse(body, status_code=status, headers=headers)(
        scope, receive, send
    )
