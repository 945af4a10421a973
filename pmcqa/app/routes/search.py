"""POST /search: passages inside one paper (hybrid/dense/lexical) or across the library (dense)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool

from pmcqa.app.deps import get_library, require_api_key
from pmcqa.app.schemas import SearchHit, SearchRequest, SearchResponse, error_responses
from pmcqa.app.service import Library

router = APIRouter(tags=["search"], dependencies=[Depends(require_api_key)])


@router.post("/search", response_model=SearchResponse, responses=error_responses(401, 404, 409, 422))
async def search(request: SearchRequest, library: Library = Depends(get_library)) -> SearchResponse:
    library.check_question(request.query, "query")
    # A PMID/DOI may need NCBI: awaited here, not in a server thread.
    paper_id = await library.canonical_id(request.paper_id) if request.paper_id else None
    result = await run_in_threadpool(library.search, request.query, paper_id, request.k, request.mode)
    return SearchResponse(
        query=request.query,
        paper_id=result.paper_id,
        mode=result.mode,
        passages=[SearchHit.from_passage(p) for p in result.passages],
    )
