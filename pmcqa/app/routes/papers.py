"""GET/DELETE /papers: what is in the library, each paper's metadata, ingest status and outline."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool

from pmcqa.app.deps import get_library, require_api_key
from pmcqa.app.schemas import DeleteResponse, PaperDetail, PaperList, PaperSummary, error_responses
from pmcqa.app.service import Library, PaperBusy, PaperNotFound, not_found_message

router = APIRouter(prefix="/papers", tags=["papers"], dependencies=[Depends(require_api_key)])


@router.get("", response_model=PaperList, responses=error_responses(401, 422))
def list_papers(
    offset: int = Query(0, ge=0, description="Papers to skip."),
    limit: int = Query(50, ge=1, le=500, description="Papers per page."),
    library: Library = Depends(get_library),
) -> PaperList:
    records = library.store.list_papers(offset, limit)
    return PaperList(
        total=library.store.count_papers(),
        offset=offset,
        limit=limit,
        papers=[PaperSummary.from_record(r) for r in records],
    )


@router.get("/{paper_id:path}", response_model=PaperDetail, responses=error_responses(401, 404, 422))
async def get_paper(paper_id: str, library: Library = Depends(get_library)) -> PaperDetail:
    return await run_in_threadpool(_detail, library, paper_id)


def _detail(library: Library, paper_id: str) -> PaperDetail:
    canonical = library.resolve_id(paper_id)
    status = library.status_of(canonical)
    record = library.store.get_paper(canonical)
    if record is None:
        if status:  # queued / ingesting / failed: report the status so clients can poll it
            return PaperDetail(paper_id=canonical, status=status)
        raise PaperNotFound(not_found_message(canonical))
    summary = PaperSummary.from_record(record, status if status and status != "ingested" else None)
    return PaperDetail(
        **summary.model_dump(),
        license=record.license,
        article_type=record.article_type,
        source=record.source,
        chars=len(record.text),
        chunks=len(library.store.get_chunks(canonical)),
        outline=record.outline,
    )


@router.delete(
    "/{paper_id:path}", response_model=DeleteResponse, responses=error_responses(401, 404, 409, 422)
)
async def delete_paper(paper_id: str, library: Library = Depends(get_library)) -> DeleteResponse:
    return await run_in_threadpool(_delete, library, paper_id)


def _delete(library: Library, paper_id: str) -> DeleteResponse:
    canonical = library.resolve_id(paper_id)
    status = library.status_of(canonical)
    if status in ("queued", "ingesting"):
        raise PaperBusy(f"{canonical} is being ingested (status: {status}); delete it when that is done.")
    if library.store.get_paper(canonical) is None:
        raise PaperNotFound(f"{canonical} is not in the library.")
    library.store.delete_paper(canonical)
    return DeleteResponse(deleted=canonical)
