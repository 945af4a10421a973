"""The FastAPI application: `create_app(settings)`.

The lifespan loads the library (embedder, store, retriever, default answer backend) once per process and the
routes get it through dependencies; the routers are listed in `ROUTERS`. Errors leave as
``{"error": code, "detail": message, "request_id": ...}`` with the status a `ServiceError` names
(`pmcqa.app.errors`); nothing a client sends can produce a stack trace.

Conventions: every response carries `X-Request-ID` (the client's, or a new one) and every request is one
access-log line (`app.middleware`); `/papers/` is `/papers` (no redirects); operation ids are the handlers'
names; /docs and /redoc work offline (`app.docs`). Who needs the API key: everything but /healthz, /readyz
and GET /; the docs per `docs_access`; /metrics unless it is served on `metrics_port` instead.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CollectorRegistry
from prometheus_fastapi_instrumentator import Instrumentator
from starlette.exceptions import HTTPException as StarletteHTTPException

from pmcqa.app.deps import AnswerMetrics, require_api_key
from pmcqa.app.docs import install_docs, operation_id
from pmcqa.app.errors import InternalError, InvalidInput, ServiceError
from pmcqa.app.metrics import LibraryCollector, serve_metrics
from pmcqa.app.middleware import RequestIdMiddleware, TrailingSlashMiddleware
from pmcqa.app.routes import ask, health, jobs, papers, search
from pmcqa.app.schemas import error_responses
from pmcqa.app.service import Library
from pmcqa.core.logs import REQUEST_ID_HEADER, request_id
from pmcqa.core.settings import Settings, get_settings

log = logging.getLogger(__name__)

_HTTP_CODES = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 503: "unavailable"}


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
        where = ".".join(str(p) for p in problem.get("loc", ()))
        parts.append(f"{where}: {problem.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(api: FastAPI) -> None:
    @api.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return error_body(exc.body(), exc.http_status)

    @api.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error(InvalidInput.http_status, InvalidInput.code, _describe_validation(exc))

    @api.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @api.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Logged with the traceback for operators; the client gets a clean message, never the trace.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error(InternalError.http_status, InternalError.code, "internal error; see the server log")


# Every router of the service; a new endpoint module is added here.
ROUTERS = (ask.router, health.router, jobs.router, papers.router, search.router)


def create_app(
    settings: Settings | None = None, library_factory: Callable[[Settings], Library] | None = None
) -> FastAPI:
    """The service; `library_factory` (tests, embedding) replaces `Library.create`, run once at startup."""
    settings = settings or get_settings()
    factory = library_factory or Library.create

    registry = CollectorRegistry()  # per app, so several apps in one process (tests) never collide

    @asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        library = factory(settings)
        api.state.library = library
        try:
            with serve_metrics(settings, registry):  # on its own port, when metrics_port is set
                yield
        finally:
            api.state.library = None
            if library_factory is None:  # a library handed in by the caller stays the caller's to close
                library.close()

    api = FastAPI(
        title="pmcqa",
        summary="Paper-grounded question answering over PubMed Central full texts.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # served offline by app.docs, per settings.docs_access
        redoc_url=None,
        openapi_url=None,
        generate_unique_id_function=operation_id,
        redirect_slashes=False,  # TrailingSlashMiddleware serves /papers/ as /papers instead
    )
    api.state.settings = settings
    api.state.library = None
    api.state.answer_metrics = AnswerMetrics(registry)
    registry.register(LibraryCollector(lambda: api.state.library))
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
    # Outermost last: slashes are stripped before the request id middleware sees the route.
    api.add_middleware(RequestIdMiddleware)
    api.add_middleware(TrailingSlashMiddleware)
    return api


def app_factory() -> FastAPI:
    """For `uvicorn --factory pmcqa.app.main:app_factory`."""
    return create_app()
