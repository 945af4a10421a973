"""The FastAPI application: `create_app(settings)`.

The library (embedder, store, retriever, default answer backend) is loaded once per process by a
`LibraryLoader` that the lifespan starts in a background thread, so the port opens at once: `/healthz` answers
from the start, `/readyz` says what is still loading, and routes that need the library get it through
`deps.get_library` (503 with `Retry-After` until it is ready). The routers are listed in `ROUTERS`. Errors
leave as ``{"error": code, "detail": message, "request_id": ...}`` with the status a `ServiceError` names
(`pmcqa.app.errors`, with `Retry-After` when it is temporary); nothing a client sends can produce a stack
trace. `app.guard.RequestGuard`, in front of the routes, checks the key and caps the body before anything
reads it, and turns a bug into a clean 500 that keeps the connection usable; `app.openapi` makes the schema
say what the handlers enforce.

Conventions: every response carries `X-Request-ID` (the client's, or a new one) and every request is one
access-log line (`app.middleware`); `/papers/` is `/papers` (no redirects); operation ids are the handlers'
names; /docs and /redoc work offline (`app.docs`). Who needs the API key: everything but /healthz, /readyz
and GET /; the docs per `docs_access`; /metrics unless it is served on `metrics_port` instead.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CollectorRegistry
from prometheus_fastapi_instrumentator import Instrumentator
from starlette.exceptions import HTTPException as StarletteHTTPException

from pmcqa import __version__
from pmcqa.app.deps import AnswerMetrics, require_api_key
from pmcqa.app.docs import install_docs, operation_id
from pmcqa.app.errors import InvalidInput, PayloadTooLarge, ServiceError
from pmcqa.app.guard import RequestGuard
from pmcqa.app.loader import LibraryFactory, LibraryLoader
from pmcqa.app.metrics import LibraryCollector, serve_metrics
from pmcqa.app.middleware import RequestIdMiddleware, TrailingSlashMiddleware
from pmcqa.app.openapi import install_openapi
from pmcqa.app.routes import ask, health, jobs, papers, search
from pmcqa.app.schemas import error_responses
from pmcqa.app.service import RETRY_AFTER_S
from pmcqa.core.db import DatabaseUnavailable, postgres_url
from pmcqa.core.extras import MissingExtra
from pmcqa.core.logs import REQUEST_ID_HEADER, request_id
from pmcqa.core.settings import Settings, get_settings

log = logging.getLogger(__name__)

_HTTP_CODES = {
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: PayloadTooLarge.code,
    503: "unavailable",
}


def error(status_code: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return error_body({"error": code, "detail": detail}, status_code, headers)


def error_body(
    body: dict[str, object], status_code: int, headers: dict[str, str] | None = None
) -> JSONResponse:
    """An error response carrying the request id, in the body and (for errors raised outside the request-id
    middleware, i.e. 500s) in the header."""
    current = request_id.get()
    headers = {**(headers or {}), **({REQUEST_ID_HEADER: current} if current else {})}
    return JSONResponse({**body, "request_id": current}, status_code=status_code, headers=headers)


def _describe_validation(exc: RequestValidationError) -> str:
    """One readable line per problem, e.g. "body.question: Field required"."""
    parts = []
    for problem in exc.errors():
        if problem.get("type") == "json_invalid":  # loc is ("body", character offset)
            offset = problem.get("loc", ("body", "?"))[-1]
            reason = problem.get("ctx", {}).get("error", "invalid")
            parts.append(f"the body is not valid JSON: {reason} (character {offset})")
            continue
        where = ".".join(str(p) for p in problem.get("loc", ()))
        parts.append(f"{where}: {problem.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(api: FastAPI) -> None:
    @api.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return error_body(exc.body(), exc.http_status, exc.headers())

    @api.exception_handler(MissingExtra)
    async def missing_extra(_: Request, exc: MissingExtra) -> JSONResponse:
        # e.g. POST /ingest in Redis mode without the redis extra: the operator's fix is in the message.
        log.error("%s", exc)
        return error(503, "missing_extra", str(exc))

    @api.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error(InvalidInput.http_status, InvalidInput.code, _describe_validation(exc))

    @api.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.__cause__ is not None:
            # FastAPI's 400 for a body it could not decode: malformed input, a 422 as any.
            problem = (
                "nested too deeply" if isinstance(exc.__cause__, RecursionError) else "not UTF-8 encoded JSON"
            )
            return error(InvalidInput.http_status, InvalidInput.code, f"the body is {problem}")
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    async def database_down(_: Request, exc: Exception) -> JSONResponse:
        # The library's database went away (restart, network): a temporary refusal, not our bug.
        log.error("database unavailable: %s: %s", type(exc).__name__, exc)
        detail = f"the library's database is unavailable ({type(exc).__name__}); retry shortly"
        return error(503, "database_unavailable", detail, {"Retry-After": str(RETRY_AFTER_S)})

    api.add_exception_handler(DatabaseUnavailable, database_down)
    if postgres_url(api.state.settings) is not None:  # psycopg is only there with a PostgreSQL library
        import psycopg
        from psycopg_pool import PoolTimeout

        api.add_exception_handler(psycopg.OperationalError, database_down)
        api.add_exception_handler(PoolTimeout, database_down)

    # Any other exception is answered by `RequestGuard` (a handler for `Exception` here would run in
    # Starlette's outermost middleware, which re-raises to uvicorn, which then drops the connection).


# Every router of the service; a new endpoint module is added here.
ROUTERS = (ask.router, health.router, jobs.router, papers.router, search.router)


def create_app(
    settings: Settings | None = None,
    library_factory: LibraryFactory | None = None,
    *,
    load_in_background: bool | None = None,
) -> FastAPI:
    """The service. `library_factory` (tests, embedding) replaces `Library.create`, run once at startup.

    `load_in_background` (default: only for `Library.create`) loads the library in a thread while the app
    already serves; a supplied factory otherwise runs before the app takes requests, so the library is
    there as soon as the app has started.
    """
    settings = settings or get_settings()
    background = library_factory is None if load_in_background is None else load_in_background
    registry = CollectorRegistry()  # per app, so several apps in one process (tests) never collide

    @asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        loader = api.state.loader = LibraryLoader(settings, library_factory)
        if background:
            loader.start()
        else:
            loader.load()
        try:
            with serve_metrics(settings, registry):  # on its own port, when metrics_port is set
                yield
        finally:
            loader.close()

    api = FastAPI(
        title="pmcqa",
        summary="Paper-grounded question answering over PubMed Central full texts.",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,  # served offline by app.docs, per settings.docs_access
        redoc_url=None,
        openapi_url=None,
        generate_unique_id_function=operation_id,
        redirect_slashes=False,  # TrailingSlashMiddleware serves /papers/ as /papers instead
    )
    api.state.settings = settings
    api.state.loader = LibraryLoader(settings, library_factory)  # not started: the lifespan starts its own
    api.state.answer_metrics = AnswerMetrics(registry)
    registry.register(LibraryCollector(lambda: api.state.loader.library))
    install_error_handlers(api)
    install_docs(api, settings)
    for router in ROUTERS:
        api.include_router(router)
    instrumentator = Instrumentator(registry=registry, excluded_handlers=["/metrics", "/healthz"])
    instrumentator.instrument(api)
    if settings.metrics_port is None:  # else only on its own port, without a key
        instrumentator.expose(
            api,
            endpoint="/metrics",
            tags=["health"],
            dependencies=[Depends(require_api_key)],
            summary="Prometheus metrics",
            response_class=PlainTextResponse,
            responses={
                200: {"content": {"text/plain": {"example": "pmcqa_library_papers 3.0\n"}}},
                **error_responses(401),
            },
        )
    install_openapi(api, settings)
    # Outermost last: slashes are stripped before the request id middleware sees the route, and the request
    # has its id before the guard (key check and body cap, before any body is read) may refuse it.
    api.add_middleware(RequestGuard, settings=settings, registry=registry)
    api.add_middleware(RequestIdMiddleware)
    api.add_middleware(TrailingSlashMiddleware)
    return api


def app_factory() -> FastAPI:
    """For `uvicorn --factory pmcqa.app.main:app_factory`."""
    return create_app()
