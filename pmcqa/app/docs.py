"""API documentation that works offline: Swagger UI at /docs, ReDoc at /redoc, the schema at /openapi.json.

The JavaScript and CSS are served from the installed `fastapi-offline` package (no CDN, no Google fonts), so
the pages load on a machine without internet access. `settings.docs_access` decides who sees them: `public`,
`key` (the API key, like every other endpoint) or `off`. GET / names the documentation.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from pmcqa.app.answering.base import StreamMessage
from pmcqa.app.deps import require_api_key
from pmcqa.core.settings import Settings

STATIC_URL = "/docs/static"
OPENAPI_URL = "/openapi.json"
ASSETS = files("fastapi_offline") / "static"  # swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js


def operation_id(route: APIRoute) -> str:
    """The handler's name (ask, search, list_papers, ...): readable ids for generated clients."""
    return route.name


class ServiceIndex(BaseModel):
    name: str = "pmcqa"
    version: str
    docs: str | None = Field(description="Swagger UI (None when the docs are off).")
    redoc: str | None = Field(description="ReDoc (None when the docs are off).")
    openapi: str | None = Field(description="The OpenAPI schema (None when the docs are off).")
    health: str = "/healthz"
    ready: str = "/readyz"

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "pmcqa",
                    "version": "0.1.0",
                    "docs": "/docs",
                    "redoc": "/redoc",
                    "openapi": "/openapi.json",
                    "health": "/healthz",
                    "ready": "/readyz",
                }
            ]
        }
    )


def install_docs(api: FastAPI, settings: Settings) -> None:
    """Serve /docs, /redoc, /openapi.json and their assets per `settings.docs_access`, and GET /.

    The FastAPI app must be created with `docs_url=None, redoc_url=None, openapi_url=None`.
    """
    api.openapi = lambda: _openapi(api)  # type: ignore[method-assign]
    served = settings.docs_access != "off"

    @api.get("/", response_model=ServiceIndex, tags=["health"], summary="Where the documentation is")
    def index() -> ServiceIndex:
        return ServiceIndex(
            version=api.version,
            docs="/docs" if served else None,
            redoc="/redoc" if served else None,
            openapi=OPENAPI_URL if served else None,
        )

    if not served:
        return
    guard = [Depends(require_api_key)] if settings.docs_access == "key" else []
    router = APIRouter(dependencies=guard, include_in_schema=False)

    @router.get(OPENAPI_URL)
    def openapi_schema() -> JSONResponse:
        return JSONResponse(api.openapi())

    @router.get("/docs")
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{OPENAPI_URL}",
            title=f"{api.title} - Swagger UI",
            oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
            swagger_js_url=f"{root}{STATIC_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{STATIC_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{STATIC_URL}/favicon.png",
        )

    @router.get("/docs/oauth2-redirect")
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @router.get("/redoc")
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{OPENAPI_URL}",
            title=f"{api.title} - ReDoc",
            redoc_js_url=f"{root}{STATIC_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{STATIC_URL}/favicon.png",
            with_google_fonts=False,
        )

    api.include_router(router)
    # Public files of the UI libraries (no data of ours), so they are served without a key.
    api.mount(STATIC_URL, StaticFiles(directory=str(ASSETS)), name="docs-static")


def _openapi(api: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the streamed messages of POST /ask (not a response model, so not collected)."""
    if api.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(
            title=api.title,
            version=api.version,
            summary=api.summary,
            description=api.description,
            routes=api.routes,
        )
        stream = TypeAdapter(StreamMessage).json_schema(
            ref_template="#/components/schemas/{model}", mode="serialization"
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, definition in stream.pop("$defs", {}).items():
            components.setdefault(name, definition)
        components["StreamMessage"] = stream
        _errors_are_json(schema)
        api.openapi_schema = schema
    return api.openapi_schema


def _errors_are_json(schema: dict[str, Any]) -> None:
    """Error bodies are always JSON (the error handlers write them), even on a route whose success is not
    (GET /metrics is text/plain, and FastAPI files its error models under the route's media type)."""
    for methods in schema.get("paths", {}).values():
        for operation in methods.values():
            for code, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if code[0] not in "45" or "application/json" in content:
                    continue
                for media in list(content):
                    if content[media].get("schema", {}).get("$ref", "").endswith("/ErrorResponse"):
                        content["application/json"] = content.pop(media)
