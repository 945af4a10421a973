"""Liveness (no auth, no dependencies; says the version) and readiness (index and backend loaded)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from pmcqa import __version__
from pmcqa.app.deps import require_api_key
from pmcqa.app.schemas import Health, Readiness, error_responses

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is alive (never requires a key)")
def healthz() -> Health:
    return Health(version=__version__)


@router.get(
    "/readyz",
    response_model=Readiness,
    dependencies=[Depends(require_api_key)],
    responses={
        **error_responses(401),
        503: {"model": Readiness, "description": "Index or backend not ready."},
    },
)
def readyz(request: Request) -> JSONResponse:
    library = getattr(request.app.state, "library", None)
    if library is None:
        state = Readiness(
            ready=False, index=False, backend="", backend_ready=False, papers=0, detail="starting"
        )
    else:
        state = Readiness(**library.readiness())
    return JSONResponse(state.model_dump(), status_code=200 if state.ready else 503)
