"""The OpenAPI document, completed with what the handlers enforce (schema fuzzing holds the service to it).

FastAPI derives the schema from the routes' models; some rules live elsewhere and are written in here:

* limits from the settings: question/query length (`max_question_chars`), ids per job (`job_max_ids`);
* the paper-id grammar (`core.ids.PAPER_ID_PATTERN`) on every id a request names, body or path;
* the body of ``POST /ingest`` (its handler reads the raw body to cap it) and the text of ``GET /metrics``;
* the refusals of `app.guard` and the service on every operation they apply to: 401 (with keys configured),
  413 (a body over its cap), 503/504 (index loading, NCBI unreachable or slow) and 422 in the service's
  ``{error, detail}`` shape rather than FastAPI's default validation-error shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from pmcqa.app.guard import is_public
from pmcqa.core.ids import MAX_ID_CHARS, PAPER_ID_PATTERN
from pmcqa.core.settings import Settings

_ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
_JSON_ERROR = {"application/json": {"schema": _ERROR_REF}}
_ID_SCHEMA = {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS, "pattern": PAPER_ID_PATTERN}

_REFUSALS = {
    "401": "Missing or invalid API key (when PMCQA_API_KEYS is set); checked before the body is read.",
    "413": "The body is over its limit (PMCQA_MAX_BODY_BYTES; uploads PMCQA_MAX_UPLOAD_BYTES).",
    "422": "A malformed id or field, an empty or over-long question, or an invalid body.",
    "503": "The index or answer backend is not ready, or NCBI could not be reached to resolve a PMID/DOI.",
    "504": "Generation ran past PMCQA_GENERATION_TIMEOUT_S, or NCBI did not answer an id lookup within "
    "PMCQA_RESOLVE_TIMEOUT_S.",
}
# Operations that resolve a paper id (NCBI may be needed: 503/504) or use the loaded library (503).
_RESOLVES_IDS = {
    ("/ask", "post"),
    ("/search", "post"),
    ("/papers/{paper_id}", "get"),
    ("/papers/{paper_id}", "delete"),
}
_NEEDS_LIBRARY = {("/papers", "get"), ("/papers", "post")}

_INGEST_BODY_EXAMPLE = {
    "ids": ["PMC8026465", "pmid:33785890", "10.1183/23120541.50193-2021"],
    "refresh": False,
}


def install_openapi(api: FastAPI, settings: Settings) -> None:
    """Make `api.openapi()` return the completed document (built once, then cached like FastAPI's)."""
    generate: Callable[[], dict[str, Any]] = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            api.openapi_schema = complete(generate(), settings)
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]


def complete(schema: dict[str, Any], settings: Settings) -> dict[str, Any]:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    _limit_requests(components, settings)
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            _complete_operation(path, method, operation, settings)
    ingest = schema.get("paths", {}).get("/ingest", {}).get("post")
    if ingest is not None:
        ingest["requestBody"] = _ingest_body(settings)
    metrics = schema.get("paths", {}).get("/metrics", {}).get("get")
    if metrics is not None:
        metrics["summary"] = "Prometheus metrics: HTTP traffic, answers, abstentions, answer time by backend"
        example = metrics["responses"].get("200", {}).get("content", {}).get("text/plain", {}).get("example")
        text: dict[str, Any] = {"schema": {"type": "string"}, **({"example": example} if example else {})}
        metrics["responses"]["200"] = {
            "description": "Prometheus text exposition format.",
            "content": {"text/plain": text},
        }
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return schema


def _limit_requests(components: dict[str, Any], settings: Settings) -> None:
    text = {"minLength": 1, "maxLength": settings.max_question_chars}
    ask = components.get("AskRequest", {}).get("properties", {})
    if "question" in ask:
        ask["question"].update(text)
        ask["question"]["description"] = (
            f"The question, answered from this paper only (at most {settings.max_question_chars} characters, "
            "PMCQA_MAX_QUESTION_CHARS; not only whitespace)."
        )
    if "paper_id" in ask:  # the request model's own (tighter) length limit stays
        ask["paper_id"].update({**_ID_SCHEMA, "maxLength": ask["paper_id"].get("maxLength", MAX_ID_CHARS)})
    if "backend" in ask:
        ask["backend"]["description"] = (
            f"Answer backend; allowed on this server: {', '.join(settings.request_backends())} "
            "(PMCQA_ALLOWED_BACKENDS); others are a 422. Default: the configured one."
        )
    search = components.get("SearchRequest", {}).get("properties", {})
    if "query" in search:
        search["query"].update(text)
    if "paper_id" in search:
        search["paper_id"]["anyOf"] = [_ID_SCHEMA, {"type": "null"}]


def _ingest_body(settings: Settings) -> dict[str, Any]:
    body_schema = {
        "type": "object",
        "title": "IngestRequest",
        "required": ["ids"],
        "properties": {
            "ids": {
                "type": "array",
                "items": {**_ID_SCHEMA, "description": "A PMCID, PMID or DOI."},
                "minItems": 1,
                "maxItems": settings.job_max_ids,
                "description": f"PMCIDs, PMIDs or DOIs (at most {settings.job_max_ids}, PMCQA_JOB_MAX_IDS); "
                "repeated ids are ingested once.",
            },
            "refresh": {
                "type": "boolean",
                "default": False,
                "description": "Re-fetch and re-index papers already in the library.",
            },
        },
    }
    return {
        "required": True,
        "description": f"At most {settings.max_body_bytes} bytes (PMCQA_MAX_BODY_BYTES).",
        "content": {"application/json": {"schema": body_schema, "example": _INGEST_BODY_EXAMPLE}},
    }


def _complete_operation(path: str, method: str, operation: dict[str, Any], settings: Settings) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    for parameter in operation.get("parameters", []):
        if parameter.get("name") == "paper_id" and parameter.get("in") == "path":
            parameter["schema"] = {**parameter.get("schema", {}), **_ID_SCHEMA}
    wanted: list[str] = []
    if not is_public(path, settings):
        wanted.append("401")
    if method in ("post", "put", "patch"):
        wanted.append("413")
    if "422" in responses or operation.get("parameters") or "requestBody" in operation or path == "/ingest":
        wanted.append("422")
    if (path, method) in _RESOLVES_IDS:
        wanted += ["503", "504"]
    if (path, method) in _NEEDS_LIBRARY:
        wanted.append("503")
    for code in wanted:
        entry = responses.get(code)
        if entry is None or code == "422" or "content" not in entry:
            described = (entry or {}).get("description") or _REFUSALS[code]
            responses[code] = {"description": described, "content": _JSON_ERROR}
