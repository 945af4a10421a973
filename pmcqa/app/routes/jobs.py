"""Batch ingest as a service: POST /ingest (enqueue a job), GET /jobs[/{id}], POST /papers (one JATS file).

Handlers only enqueue: the ids of a job are fetched, parsed and embedded by `pmcqa worker` processes (see
`ingest.worker`). Job records live in SQLite under data_dir, so they survive restarts of API and workers.
Request sizes are bounded: a body over the limit is a 413 (`app.guard` counts it as it arrives), too many /
no / malformed ids a 422. Uploads run one at a time on a thread of their own, and at most
`MAX_WAITING_UPLOADS` wait for it (then 503): a queue of uploads holds neither the server's threads nor
unbounded memory.

POST /ingest answers 202 with `Location: /jobs/{job_id}`; with an `Idempotency-Key` header a retried request
returns the job the first one created (`Idempotent-Replayed: true`); the key reused for other ids is a 422.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pmcqa.app.deps import get_library, get_settings, require_api_key
from pmcqa.app.errors import BackendNotReady, InvalidInput, JobNotFound, PayloadTooLarge
from pmcqa.app.schemas import error_responses
from pmcqa.app.service import Library
from pmcqa.core.ids import MAX_ID_CHARS, PAPER_ID_PATTERN, InvalidPaperId, given_paper_id, parse_id
from pmcqa.core.logs import OUTCOME_LOGGER
from pmcqa.core.settings import Settings
from pmcqa.core.status import OK, Status
from pmcqa.index.models import OutlineEntry
from pmcqa.ingest.jobs import IdempotencyConflict, Job, JobStore
from pmcqa.ingest.pipeline import Ingestor
from pmcqa.ingest.worker import submit_job

router = APIRouter(tags=["ingest"], dependencies=[Depends(require_api_key)])
outcome_log = logging.getLogger(OUTCOME_LOGGER)

# Uploads waiting for the upload thread beyond this many are refused (503), each may hold max_upload_bytes.
MAX_WAITING_UPLOADS = 4

_JOB_EXAMPLE = {
    "job_id": "5f0c1e9a7b3d4e2f8a6c4b2d0e9f7a1c",
    "created": "2026-03-01T12:00:00.123456Z",
    "updated": "2026-03-01T12:00:04.512000Z",
    "state": "done",
    "refresh": False,
    "total": 2,
    "counts": {"ingested": 1, "not-found": 1},
    "error": None,
    "request_id": "9b0c6f1e2d8a4f57a1c3e5b7d9f0a2c4",
    "items": [
        {
            "id": "PMC8026465",
            "status": "ingested",
            "paper_id": "PMC8026465",
            "title": "Kidney organoids ...",
            "chunks": 61,
            "reason": None,
        },
        {"id": "PMC99999999", "status": "not-found", "paper_id": None, "reason": "no such PMC article"},
    ],
}


class IngestRequest(BaseModel):
    ids: list[str] = Field(description="PMCIDs, PMIDs or DOIs; repeated ids are ingested once.")
    refresh: bool = Field(
        False,
        description="Fetch from PMC again even where a copy is held (the raw XML cache, or a paper stored "
        "from a file or upload, which an ingest without refresh keeps as it is).",
    )

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"ids": ["PMC8026465", "pmid:20066031", "10.1371/journal.pone.0008519"]}]
        }
    )


class JobCreated(BaseModel):
    job_id: str
    state: str
    total: int = Field(description="Distinct ids in the job.")
    status_url: str = Field(description="Where to poll it (also the Location header).")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "job_id": "5f0c1e9a7b3d4e2f8a6c4b2d0e9f7a1c",
                    "state": "queued",
                    "total": 3,
                    "status_url": "/jobs/5f0c1e9a7b3d4e2f8a6c4b2d0e9f7a1c",
                }
            ]
        }
    )


class JobList(BaseModel):
    jobs: list[Job]

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"jobs": [{**_JOB_EXAMPLE, "items": None}]}]}
    )


class JobDetail(Job):
    model_config = ConfigDict(title="Job", json_schema_extra={"examples": [_JOB_EXAMPLE]})


class PaperIngested(BaseModel):
    paper_id: str
    status: str = Field(
        description="`ingested`, or `no-full-text` (an article without body: title and abstract are stored)"
    )
    reason: str | None = Field(None, description="Why the article was stored without full text.")
    title: str | None = None
    chunks: int | None = None
    outline: list[OutlineEntry] = Field(default_factory=list)

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "paper_id": "PMC3485338",
                    "status": "ingested",
                    "title": "C. difficile 630Δerm Spo0A Regulates Sporulation ...",
                    "chunks": 61,
                    "outline": [{"path": ["Introduction"], "sec_type": "intro", "depth": 0}],
                }
            ]
        }
    )


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, or a 413 as soon as it passes `limit` (a lying Content-Length cannot get past it)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
    return bytes(body)


def validate_ids(ids: list[str], settings: Settings) -> list[str]:
    """Stripped ids, or a 422 naming every malformed one (so a client can fix a whole list at once)."""
    if not ids:
        raise InvalidInput("`ids` is empty: send at least one PMCID, PMID or DOI", code="no_ids")
    if len(ids) > settings.job_max_ids:
        raise InvalidInput(
            f"{len(ids)} ids; one job takes at most {settings.job_max_ids} (split it)", code="too_many_ids"
        )
    invalid: list[str] = []
    for text in ids:
        try:
            parse_id(text, settings.bare_digits)
        except InvalidPaperId:
            invalid.append(text)
    if invalid:
        shown = ", ".join(repr(text) for text in invalid[:20])
        detail = f"{len(invalid)} malformed id(s): {shown}"
        raise InvalidInput(detail, code="invalid_ids", invalid_ids=invalid)
    return [text.strip() for text in ids]


def _jobs(request: Request) -> JobStore:
    # One JobStore per app (it only holds a path; connections are per call).
    jobs = getattr(request.app.state, "jobs", None)
    if jobs is None:
        jobs = request.app.state.jobs = JobStore.for_settings(request.app.state.settings)
    return jobs


_INGEST_ERRORS = error_responses(
    401, 413, 422, e422="No ids, too many ids, malformed ids, an invalid body, or an Idempotency-Key reused "
    "for another request."
)
_JOB_ERRORS = error_responses(401, 404, 422, e404="No such job.")
_JOB_LIST_ERRORS = error_responses(401, 422)


@router.post(
    "/ingest",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobCreated,
    summary="Queue papers for ingest",
    responses={
        202: {
            "description": "Queued; `Location` names the job. A replayed Idempotency-Key returns the "
            "same job with `Idempotent-Replayed: true`.",
            "headers": {
                "Location": {"schema": {"type": "string"}, "description": "/jobs/{job_id}"},
                "Idempotent-Replayed": {
                    "schema": {"type": "string"},
                    "description": "`true` when the job was created by an earlier request with this key.",
                },
            },
        },
        **_INGEST_ERRORS,
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                # The body is read by hand (size-limited), so FastAPI does not see the model: described here.
                "application/json": {"schema": IngestRequest.model_json_schema()}
            },
        }
    },
)
async def ingest(
    request: Request,
    response: Response,
    settings: Settings = Depends(get_settings),
    idempotency_key: str | None = Header(
        None,
        min_length=1,  # an empty key would be one key shared by every client that sends it empty
        max_length=255,
        description="Any unique string (e.g. a UUID); a retried request with this key returns the same job.",
    ),
) -> Any:
    """Enqueue an ingest job; poll `GET /jobs/{job_id}` (the Location header) for per-id outcomes.

    Its papers read `queued` until a worker takes them (`ingesting`), so questions on them answer 409.
    """
    body = await read_limited(request, settings.max_body_bytes)
    try:
        payload = IngestRequest.model_validate_json(body)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidInput(problems or "invalid body") from exc
    ids = validate_ids(payload.ids, settings)
    try:
        job, created = await run_in_threadpool(
            submit_job, settings, ids, payload.refresh, _jobs(request), idempotency_key
        )
    except IdempotencyConflict as exc:
        raise InvalidInput(str(exc), code="idempotency_key_reused") from None
    location = f"/jobs/{job.job_id}"
    response.headers["Location"] = location
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return JobCreated(job_id=job.job_id, state=job.state, total=job.total, status_url=location)


@router.get("/jobs", response_model=JobList, summary="Recent ingest jobs", responses=_JOB_LIST_ERRORS)
async def list_jobs(request: Request, limit: int = Query(20, ge=1, le=200)) -> JobList:
    """Recent jobs, newest first (counts only; GET /jobs/{id} has the per-id outcomes)."""
    return JobList(jobs=await run_in_threadpool(_jobs(request).list, limit))


@router.get("/jobs/{job_id}", response_model=JobDetail, summary="One ingest job", responses=_JOB_ERRORS)
async def get_job(job_id: str, request: Request) -> Any:
    """A job's state and per-id outcomes, in request order; timestamps are ISO 8601 (UTC)."""
    job = await run_in_threadpool(_jobs(request).get, job_id)
    if job is None:
        raise JobNotFound(f"no job {job_id!r}")
    return job


# --- one local article, synchronously ----------------------------------------------------------------------
class UploadLane:
    """The one thread uploads are ingested on (one at a time: the ingestor is not shared between threads),
    and a bound on how many may wait for it."""

    def __init__(self) -> None:
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pmcqa-upload")
        self.admitted = 0  # running + waiting; only touched on the event loop

    def admit(self) -> None:
        if self.admitted > MAX_WAITING_UPLOADS:
            raise BackendNotReady(
                f"{self.admitted} uploads are already being ingested or waiting; retry shortly",
                code="too_many_uploads",
            )
        self.admitted += 1

    def leave(self) -> None:
        self.admitted -= 1


def _upload_lane(request: Request) -> UploadLane:
    lane = getattr(request.app.state, "upload_lane", None)
    if lane is None:
        lane = request.app.state.upload_lane = UploadLane()
    return lane


UPLOAD_SOURCE = "upload"  # an uploaded paper's `source` (where a file's path would be)


def _ingest_upload(request: Request, library: Library, data: bytes, id_override: str | None) -> Any:
    settings: Settings = request.app.state.settings
    # One ingestor per app, made on first use, only ever used on the upload lane's one thread.
    ingestor = getattr(request.app.state, "ingestor", None)
    if ingestor is None:
        ingestor = Ingestor(settings, store=library.store, encoder=library.embedder)
        request.app.state.ingestor = ingestor
    outcomes = ingestor.ingest_bytes(data, UPLOAD_SOURCE, id_override=id_override)
    return outcomes[0] if outcomes else None


@router.post(
    "/papers",
    response_model=PaperIngested,
    summary="Ingest one JATS article sent as the body",
    responses=error_responses(
        401,
        413,
        422,
        503,
        e422="A malformed `id`, an empty body, or the file could not be ingested (the detail says why).",
        e503="Too many uploads waiting, or the index is still loading.",
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/xml": {
                    "schema": {"type": "string"},
                    "example": '<article article-type="research-article">...</article>',
                }
            },
            "description": "One JATS/NXML article, at most PMCQA_MAX_UPLOAD_BYTES.",
        }
    },
)
async def upload_paper(
    request: Request,
    id: str | None = Query(
        None,
        description="Store under this id, a PMCID or a DOI (needed when the file carries neither).",
        max_length=MAX_ID_CHARS,
        # The grammar is published (OpenAPI) but checked by `given_paper_id`, whose error says what is wrong
        # in words; FastAPI's own check would answer with the whole regular expression.
        json_schema_extra={"pattern": PAPER_ID_PATTERN},
    ),
    library: Library = Depends(get_library),
) -> Any:
    """Ingest one JATS/NXML article sent as the body; returns its id and outline."""
    settings: Settings = request.app.state.settings
    if id is not None:  # checked before the body is read; a PMID or a malformed id is a 422
        try:
            given_paper_id(id)
        except InvalidPaperId as exc:
            raise InvalidInput(f"`id`: {exc}", code="invalid_id") from None
    lane = _upload_lane(request)
    lane.admit()
    try:
        data = await read_limited(request, settings.max_upload_bytes)
        if not data.strip():
            raise InvalidInput("send a JATS XML article as the request body", code="empty_body")
        loop = asyncio.get_running_loop()
        outcome = await loop.run_in_executor(lane.executor, _ingest_upload, request, library, data, id)
    finally:
        lane.leave()
    if outcome is not None:  # the same outcome line as a worker's (a JSON object with PMCQA_LOG_FORMAT=json)
        outcome_log.info(
            "upload: %s %s",
            outcome.requested,
            outcome.status,
            extra={"requested": outcome.requested, "status": outcome.status, "paper_id": outcome.paper_id,
                   "reason": outcome.reason, "chunks": outcome.chunks, "source": UPLOAD_SOURCE},
        )
    if outcome is None or outcome.status not in OK:  # no-full-text is stored (title, abstract), as by a job
        reason = getattr(outcome, "reason", None) or "the file could not be ingested"
        status_text = getattr(outcome, "status", Status.FAILED)
        raise InvalidInput(f"{status_text}: {reason}", code="not_ingested")
    record = (await run_in_threadpool(library.paper, outcome.paper_id)).record
    return PaperIngested(
        paper_id=outcome.paper_id,
        status=outcome.status,
        reason=outcome.reason,
        title=outcome.title or (record.title if record else None),
        chunks=outcome.chunks,
        outline=record.outline if record else [],
    )
