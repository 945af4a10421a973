"""Liveness (no auth, no dependencies, answered from the moment the port opens) and readiness (the library's
index and answer backend loaded; while they load, 503 with what is still loading); both are open to probes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from pmcqa import __version__
from pmcqa.app.loader import LibraryLoader
from pmcqa.app.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is alive (never requires a key)")
async def healthz() -> Health:
    # async: answered on the event loop, never queued behind requests waiting for the threadpool.
    return Health(version=__version__)


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Index and answer backend are ready (never requires a key: it is a probe)",
    responses={503: {"model": Readiness, "description": "Index or backend not ready."}},
)
def readyz(request: Request) -> JSONResponse:
    loader: LibraryLoader = request.app.state.loader
    library = loader.library
    if library is None:  # `detail` says what is loading ("loading embedding model", ...) or why it failed
        backend = request.app.state.settings.answer_backend
        state = Readiness(
            ready=False, index=False, backend=backend, backend_ready=False, papers=0, detail=loader.stage
        )
    else:
        state = Readiness(**library.readiness())
    return JSONResponse(state.model_dump(), status_code=200 if state.ready else 503)
