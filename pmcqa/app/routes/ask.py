"""POST /ask: a cited answer from one paper, as JSON or as Server-Sent Events.

Streamed, every event's data is one JSON object whose `type` is also the event name (`step`, `answer.delta`,
then `done` with the whole Answer, or `error`) and which carries the request id (see
`app.answering.base.StreamMessage`). A client that disconnects stops the generation.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Iterator

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from sse_starlette import EventSourceResponse

from pmcqa.app.answering.base import Answer, AnswerDone, AnswerEvent, ErrorEvent
from pmcqa.app.deps import AnswerMetrics, get_library, get_metrics, require_api_key
from pmcqa.app.errors import InternalError
from pmcqa.app.schemas import ANSWER_EXAMPLE, AskRequest, error_responses
from pmcqa.app.service import Library
from pmcqa.core.logs import request_id

log = logging.getLogger(__name__)
router = APIRouter(tags=["answering"], dependencies=[Depends(require_api_key)])

_STREAM_DOC = (
    'event: step\ndata: {"type": "step", "request_id": "4f2c...", "text": "1) Searched 8 passages ..."}\n\n'
    'event: answer.delta\ndata: {"type": "answer.delta", "request_id": "4f2c...", "text": "The key"}\n\n'
    'event: done\ndata: {"type": "done", "request_id": "4f2c...", "answer": {"paper_id": "PMC3485338", '
    '"answer": "The key regulator of sporulation is Spo0A.", "citations": [...], ...}}\n\n'
)
# `app.docs` adds the StreamMessage schema to the components (FastAPI only collects response models).
_STREAM_SCHEMA = {
    "type": "string",
    "description": "Server-Sent Events; each event's data is a JSON StreamMessage "
    "(#/components/schemas/StreamMessage).",
}


@router.post(
    "/ask",
    response_model=Answer,
    summary="Answer a question from one paper, with verbatim citations",
    responses={
        200: {
            "content": {
                "application/json": {"example": ANSWER_EXAMPLE},
                "text/event-stream": {"schema": _STREAM_SCHEMA, "example": _STREAM_DOC},
            },
            "description": "The Answer; with `stream: true`, Server-Sent Events whose data are StreamMessage "
            "objects: steps, answer deltas, then `done` (the Answer) or `error`.",
        },
        **error_responses(401, 404, 409, 422, 502, 503, 504),
    },
)
async def ask(
    request: AskRequest,
    library: Library = Depends(get_library),
    metrics: AnswerMetrics = Depends(get_metrics),
) -> Answer | EventSourceResponse:
    # Input errors first (as `Library.prepare` orders them), then the id: a PMID/DOI may need NCBI, which
    # is awaited here, not in a server thread.
    library.check_backend_allowed(request.backend)
    library.check_question(request.question)
    paper_id = await library.canonical_id(request.paper_id)
    if request.stream:
        # Validation, id resolution and retrieval happen before the stream opens, so errors keep their codes.
        prepared = await run_in_threadpool(
            library.prepare, paper_id, request.question, request.top_k, request.backend
        )
        cancelled = threading.Event()
        events = library.stream(prepared, cancelled)
        return EventSourceResponse(_sse(events, metrics, cancelled, request_id.get()))
    answer = await run_in_threadpool(library.ask, paper_id, request.question, request.top_k, request.backend)
    metrics.observe(answer)
    return answer


async def _sse(
    events: Iterator[AnswerEvent], metrics: AnswerMetrics, cancelled: threading.Event, rid: str | None
) -> AsyncIterator[dict[str, str]]:
    try:
        while True:
            try:
                # Each step of the sync generator runs in a worker thread; the loop never blocks on it.
                event = await asyncio.to_thread(next, events, None)
                if event is None:
                    return
                message = event.sse(rid)
            except Exception:  # a 200 is already sent: the stream still ends with an event saying so
                log.exception("answer stream failed")
                yield ErrorEvent.of(InternalError("generation failed")).sse(rid)
                return
            if isinstance(event, AnswerDone):
                metrics.observe(event.data)
            yield message
    finally:
        # Normal end, or the client disconnected (the response cancels this generator): stop generating.
        cancelled.set()
