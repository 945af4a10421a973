"""GET/DELETE /papers: what is in the library, each paper's metadata, ingest status, outline and text.

`GET /papers/{paper_id}/text?start=&end=&context=` returns canonical text around a span (a citation's `start`
and `end`), so a client can show a quote where it stands. Paper ids may contain slashes (DOIs), so the text
route is registered before the detail route, whose path parameter takes the rest of the path.
"""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool

from pmcqa.app.deps import get_library, require_api_key
from pmcqa.app.schemas import (
    DeleteResponse,
    PaperDetail,
    PaperList,
    PaperSummary,
    PaperTextResponse,
    error_responses,
)
from pmcqa.app.service import MAX_TEXT_WINDOW, Library

router = APIRouter(prefix="/papers", tags=["papers"], dependencies=[Depends(require_api_key)])


# Far beyond any library, and inside SQLite's 64-bit integers (a larger OFFSET overflows it).
MAX_OFFSET = 10**12


@router.get("", response_model=PaperList, summary="List the papers", responses=error_responses(401, 422))
def list_papers(
    offset: int = Query(0, ge=0, le=MAX_OFFSET, description="Papers to skip."),
    limit: int = Query(50, ge=1, le=500, description="Papers per page."),
    library: Library = Depends(get_library),
) -> PaperList:
    page = library.papers(offset, limit)
    return PaperList(
        total=page.total,
        offset=offset,
        limit=limit,
        papers=[PaperSummary.from_record(paper, page.statuses.get(paper.paper_id)) for paper in page.papers],
    )


@router.get(
    "/{paper_id:path}/text",
    response_model=PaperTextResponse,
    summary="Canonical text around a span (a citation in context)",
    responses=error_responses(401, 404, 409, 422),
)
async def paper_text(
    paper_id: str,
    start: int = Query(0, ge=0, description="Start of the span (a citation's `start`)."),
    end: int | None = Query(
        None,
        ge=0,
        description=f"End of the span, exclusive (default: as far as one {MAX_TEXT_WINDOW}-character window "
        "reaches with its context, clipped to the text).",
    ),
    context: int = Query(0, ge=0, le=MAX_TEXT_WINDOW, description="Characters added on either side."),
    library: Library = Depends(get_library),
) -> PaperTextResponse:
    canonical = await library.canonical_id(paper_id)
    window = await run_in_threadpool(library.text, canonical, start, end, context)
    return PaperTextResponse(**asdict(window))


@router.get(
    "/{paper_id:path}",
    response_model=PaperDetail,
    summary="One paper: metadata, ingest status and outline",
    responses=error_responses(401, 404, 422),
)
async def get_paper(paper_id: str, library: Library = Depends(get_library)) -> PaperDetail:
    canonical = await library.canonical_id(paper_id)
    return PaperDetail.from_view(await run_in_threadpool(library.paper, canonical))


@router.delete(
    "/{paper_id:path}",
    response_model=DeleteResponse,
    summary="Remove a paper from the library",
    responses=error_responses(401, 404, 409, 422),
)
async def delete_paper(paper_id: str, library: Library = Depends(get_library)) -> DeleteResponse:
    canonical = await library.canonical_id(paper_id)
    return DeleteResponse(deleted=await run_in_threadpool(library.delete, canonical))
