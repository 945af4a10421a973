"""Liveness (no dependencies) and readiness (index and backend loaded); both are open to probes, no key."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from pmcqa.app.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is alive (never requires a key)")
def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Index and answer backend are ready (never requires a key: it is a probe)",
    responses={503: {"model": Readiness, "description": "Index or backend not ready."}},
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
