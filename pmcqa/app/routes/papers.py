"""GET/DELETE /papers: what is in the library, each paper's metadata, ingest status and outline."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool

from pmcqa.app.deps import get_library, require_api_key
from pmcqa.app.schemas import DeleteResponse, PaperDetail, PaperList, PaperSummary, error_responses
from pmcqa.app.service import Library

router = APIRouter(prefix="/papers", tags=["papers"], dependencies=[Depends(require_api_key)])


@router.get("", response_model=PaperList, responses=error_responses(401, 422))
def list_papers(
    offset: int = Query(0, ge=0, description="Papers to skip."),
    limit: int = Query(50, ge=1, le=500, description="Papers per page."),
    library: Library = Depends(get_library),
) -> PaperList:
    page = library.papers(offset, limit)
    return PaperList(
        total=page.total,
        offset=offset,
        limit=limit,
        papers=[PaperSummary.from_record(record) for record in page.papers],
    )


@router.get("/{paper_id:path}", response_model=PaperDetail, responses=error_responses(401, 404, 422))
async def get_paper(paper_id: str, library: Library = Depends(get_library)) -> PaperDetail:
    view = await run_in_threadpool(library.paper, paper_id)
    record = view.record
    if record is None:  # queued / ingesting / failed: the status, so clients can poll it
        return PaperDetail(paper_id=view.paper_id, status=view.status)
    return PaperDetail(
        **PaperSummary.from_record(record, view.status).model_dump(),
        license=record.license,
        article_type=record.article_type,
        source=record.source,
        chars=len(record.text),
        chunks=view.chunks,
        outline=record.outline,
    )


@router.delete(
    "/{paper_id:path}", response_model=DeleteResponse, responses=error_responses(401, 404, 409, 422)
)
async def delete_paper(paper_id: str, library: Library = Depends(get_library)) -> DeleteResponse:
    return DeleteResponse(deleted=await run_in_threadpool(library.delete, paper_id))
