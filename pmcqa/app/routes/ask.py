"""POST /ask: a cited answer from one paper, as JSON or as Server-Sent Events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from sse_starlette import EventSourceResponse

from pmcqa.app.answering.base import Answer, AnswerDone, AnswerEvent
from pmcqa.app.deps import AnswerMetrics, get_library, get_metrics, require_api_key
from pmcqa.app.schemas import ANSWER_EXAMPLE, AskRequest, error_responses
from pmcqa.app.service import Library

router = APIRouter(tags=["answering"], dependencies=[Depends(require_api_key)])

_STREAM_DOC = (
    "event: step\ndata: 1) Searched 8 passages of PMC3485338 for ...\n\n"
    "event: answer\ndata: The key regulator of sporulation is Spo0A.\n\n"
    'event: done\ndata: {"paper_id": "PMC3485338", "answer": "...", "citations": [...], ...}\n\n'
)


@router.post(
    "/ask",
    response_model=Answer,
    summary="Answer a question from one paper, with verbatim citations",
    responses={
        200: {
            "content": {
                "application/json": {"example": ANSWER_EXAMPLE},
                "text/event-stream": {"schema": {"type": "string"}, "example": _STREAM_DOC},
            },
            "description": "The Answer; with `stream: true`, Server-Sent Events that end in `done`.",
        },
        **error_responses(401, 404, 409, 422, 503, 504),
    },
)
async def ask(
    request: AskRequest,
    library: Library = Depends(get_library),
    metrics: AnswerMetrics = Depends(get_metrics),
) -> Answer | EventSourceResponse:
    if request.stream:
        # Validation, id resolution and retrieval happen before the stream opens, so errors keep their codes.
        prepared = await run_in_threadpool(
            library.prepare, request.paper_id, request.question, request.top_k, request.backend
        )
        return EventSourceResponse(_sse(library.stream(prepared), metrics))
    answer = await run_in_threadpool(
        library.ask, request.paper_id, request.question, request.top_k, request.backend
    )
    metrics.observe(answer)
    return answer


async def _sse(events: Iterator[AnswerEvent], metrics: AnswerMetrics) -> AsyncIterator[dict[str, str]]:
    while True:
        # Each step of the sync generator runs in a worker thread; the loop never blocks on the backend.
        event = await asyncio.to_thread(next, events, None)
        if event is None:
            return
        if isinstance(event, AnswerDone):
            metrics.observe(event.data)
        yield event.sse()
