"""The contract every answer backend meets, and the typed answer the API returns.

A backend turns (question, retrieved passages, paper) into a `Draft`: answer text, steps, and the spans it
claims to cite. `app.answering.citations` then checks each claimed span verbatim against the paper's canonical
text and drops anything invented or not retrieved, so every backend obeys the same citation contract.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal, Protocol

from pydantic import BaseModel, Field

from pmcqa.index.models import PaperRecord, Passage

ABSTAIN_ANSWER = "The paper does not appear to answer this."


class CitedSpan(BaseModel):
    """A span a backend claims supports its answer (unverified)."""

    chunk_id: str
    quote: str | None = Field(None, description="Verbatim text; None = the whole chunk (or start/end).")
    start: int | None = None
    end: int | None = None


class Draft(BaseModel):
    answer: str
    steps: list[str] = Field(default_factory=list)
    cited: list[CitedSpan] = Field(default_factory=list)
    abstained: bool = False
    model: str = ""
    truncated: bool = Field(False, description="Generation stopped before the answer was complete.")


class Citation(BaseModel):
    chunk_id: str
    section: str
    quote: str
    start: int
    end: int


class Answer(BaseModel):
    paper_id: str
    question: str
    answer: str
    steps: list[str]
    citations: list[Citation]
    abstained: bool
    backend: str
    model: str
    truncated: bool = Field(False, description="Generation stopped before the answer was complete.")
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per stage.")


class StreamEvent(BaseModel):
    """One server-sent event of a streamed answer."""

    event: Literal["step", "answer", "done", "error"]
    data: str | dict = ""


class AnswerBackend(Protocol):
    name: str
    model: str

    def is_ready(self) -> bool: ...

    def generate(self, question: str, passages: list[Passage], paper: PaperRecord) -> Draft: ...

    def stream(self, question: str, passages: list[Passage], paper: PaperRecord) -> Iterator[StreamEvent]:
        """Yield `step` and `answer` deltas as produced, then a `done` event whose data is the Draft."""
        ...
