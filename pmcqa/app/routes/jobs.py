"""Batch ingest as a service: POST /ingest (enqueue a job), GET /jobs[/{id}], POST /papers (one JATS file).

Handlers only enqueue: the ids of a job are fetched, parsed and embedded by `pmcqa worker` processes (see
`ingest.worker`). Job records live in SQLite under data_dir, so they survive restarts of API and workers.
Request sizes are bounded: a body over the limit is a 413, too many / no / malformed ids a 422.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError

from pmcqa.app.deps import get_library, get_settings, require_api_key
from pmcqa.app.schemas import ErrorResponse
from pmcqa.app.service import Library
from pmcqa.core.ids import InvalidPaperId, parse_id
from pmcqa.core.settings import Settings
from pmcqa.index.models import OutlineEntry
from pmcqa.ingest.jobs import Job, JobStore

router = APIRouter(tags=["ingest"], dependencies=[Depends(require_api_key)])

# A JSON list of ids is small: 1000 ids × ~40 bytes. Anything much bigger is a mistake or an attack.
MAX_INGEST_BODY_BYTES = 256_000

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or invalid API key."},
    404: {"model": ErrorResponse, "description": "No such job."},
    413: {"model": ErrorResponse, "description": "The request body is larger than the limit."},
    422: {"model": ErrorResponse, "description": "No ids, too many ids, malformed ids, or an invalid body."},
}


class IngestRequest(BaseModel):
    ids: list[str] = Field(description="PMCIDs, PMIDs or DOIs; repeated ids are ingested once.")
    refresh: bool = Field(False, description="Re-fetch and re-index papers already in the library.")


class JobCreated(BaseModel):
    job_id: str
    state: str
    total: int
    status_url: str


class JobList(BaseModel):
    jobs: list[Job]


class PaperIngested(BaseModel):
    paper_id: str
    status: str
    title: str | None = None
    chunks: int | None = None
    outline: list[OutlineEntry] = Field(default_factory=list)


class RequestRejected(Exception):
    def __init__(self, status_code: int, code: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status_code, self.code, self.detail, self.extra = status_code, code, detail, extra

    def response(self) -> JSONResponse:
        body = {"error": self.code, "detail": self.detail, **self.extra}
        return JSONResponse(body, status_code=self.status_code)


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, or a 413 as soon as it passes `limit` (a lying Content-Length cannot get past it)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestRejected(413, "payload_too_large", f"the body is {declared} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestRejected(413, "payload_too_large", f"the body is over the limit of {limit} bytes")
    return bytes(body)


def validate_ids(ids: list[str], settings: Settings) -> list[str]:
    """Stripped ids, or a 422 naming every malformed one (so a client can fix a whole list at once)."""
    if not ids:
        raise RequestRejected(422, "no_ids", "`ids` is empty: send at least one PMCID, PMID or DOI")
    if len(ids) > settings.job_max_ids:
        raise RequestRejected(
            422, "too_many_ids", f"{len(ids)} ids; one job takes at most {settings.job_max_ids} (split it)"
        )
    invalid: list[str] = []
    for text in ids:
        try:
            parse_id(text, settings.bare_digits)
        except InvalidPaperId:
            invalid.append(text)
    if invalid:
        shown = ", ".join(repr(text) for text in invalid[:20])
        raise RequestRejected(
            422, "invalid_ids", f"{len(invalid)} malformed id(s): {shown}", invalid_ids=invalid
        )
    return [text.strip() for text in ids]


def _jobs(request: Request) -> JobStore:
    # One JobStore per app (it only holds a path; connections are per call).
    jobs = getattr(request.app.state, "jobs", None)
    if jobs is None:
        jobs = request.app.state.jobs = JobStore.for_settings(request.app.state.settings)
    return jobs


@router.post("/ingest", status_code=status.HTTP_202_ACCEPTED, response_model=JobCreated, responses=_ERRORS)
async def create_job(request: Request, settings: Settings = Depends(get_settings)) -> Any:
    """Enqueue an ingest job; poll `GET /jobs/{job_id}` for per-id outcomes."""
    try:
        body = await read_limited(request, MAX_INGEST_BODY_BYTES)
        try:
            payload = IngestRequest.model_validate_json(body)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise RequestRejected(422, "invalid_request", problems or "invalid body") from exc
        ids = validate_ids(payload.ids, settings)
    except RequestRejected as rejected:
        return rejected.response()
    from pmcqa.ingest.worker import enqueue_job

    job = await run_in_threadpool(enqueue_job, settings, ids, payload.refresh, _jobs(request))
    return JobCreated(job_id=job.job_id, state=job.state, total=job.total, status_url=f"/jobs/{job.job_id}")


@router.get("/jobs", response_model=JobList, responses=_ERRORS)
async def list_jobs(request: Request, limit: int = Query(20, ge=1, le=200)) -> JobList:
    """Recent jobs, newest first (counts only; GET /jobs/{id} has the per-id outcomes)."""
    return JobList(jobs=await run_in_threadpool(_jobs(request).list, limit))


@router.get("/jobs/{job_id}", response_model=Job, responses=_ERRORS)
async def get_job(job_id: str, request: Request) -> Any:
    job = await run_in_threadpool(_jobs(request).get, job_id)
    if job is None:
        return RequestRejected(404, "job_not_found", f"no job {job_id!r}").response()
    return job


# --- one local article, synchronously ----------------------------------------------------------------------
_INGESTOR_LOCK = threading.Lock()


def _ingest_upload(request: Request, library: Library, data: bytes, id_override: str | None) -> Any:
    from pmcqa.ingest.pipeline import Ingestor

    settings: Settings = request.app.state.settings
    uploads = settings.data_dir / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    # One ingestor per app, made on first use; uploads are rare, so one at a time is fine and thread-safe.
    with _INGESTOR_LOCK:
        ingestor = getattr(request.app.state, "ingestor", None)
        if ingestor is None:
            ingestor = Ingestor(settings, store=library.store, encoder=library.embedder)
            request.app.state.ingestor = ingestor
        with tempfile.NamedTemporaryFile(dir=uploads, suffix=".xml", delete=False) as handle:
            handle.write(data)
            path = Path(handle.name)
        try:
            outcomes = ingestor.ingest_files([path], id_override=id_override)
        finally:
            path.unlink(missing_ok=True)
    return outcomes[0] if outcomes else None


@router.post(
    "/papers",
    response_model=PaperIngested,
    responses=_ERRORS,
    openapi_extra={"requestBody": {"content": {"application/xml": {"schema": {"type": "string"}}}}},
)
async def upload_paper(
    request: Request,
    id: str | None = Query(None, description="Store under this id (when the file carries no PMCID)."),
    library: Library = Depends(get_library),
) -> Any:
    """Ingest one JATS/NXML article sent as the body; returns its id and outline."""
    settings: Settings = request.app.state.settings
    try:
        data = await read_limited(request, settings.max_upload_bytes)
        if not data.strip():
            raise RequestRejected(422, "empty_body", "send a JATS XML article as the request body")
    except RequestRejected as rejected:
        return rejected.response()
    outcome = await run_in_threadpool(_ingest_upload, request, library, data, id)
    if outcome is None or getattr(outcome, "status", None) != "ingested":
        reason = getattr(outcome, "reason", None) or "the file could not be ingested"
        code = getattr(outcome, "status", "failed")
        return RequestRejected(422, "not_ingested", f"{code}: {reason}").response()
    record = await run_in_threadpool(library.store.get_paper, outcome.paper_id)
    return PaperIngested(
        paper_id=outcome.paper_id,
        status=outcome.status,
        title=outcome.title or (record.title if record else None),
        chunks=outcome.chunks,
        outline=record.outline if record else [],
    )
