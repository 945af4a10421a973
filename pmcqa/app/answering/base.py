"""The contract every answer backend meets, the typed answer the API returns, and the streamed events.

A backend turns (question, retrieved passages, paper) into a `Draft`: answer text, steps, and the spans it
claims to cite. `app.answering.citations` then checks each claimed span verbatim against the paper's canonical
text and drops anything invented or not retrieved, so every backend obeys the same citation contract.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Literal, Protocol

from pydantic import BaseModel, Field

from pmcqa.app.errors import ServiceError
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


# --- streamed answers ---------------------------------------------------------------------------------------
# A backend streams `StepEvent`s and `AnswerDelta`s, then one `DraftDone`; the service turns the draft into
# the final Answer (`AnswerDone`) or reports a refusal (`ErrorEvent`). `sse()` is the one serialisation to
# Server-Sent Events: the event name, and the data as text (a step or delta) or JSON (an Answer, an error).


class _Event(BaseModel):
    event: str
    data: str | BaseModel

    def sse(self) -> dict[str, str]:
        """This event as a Server-Sent Event's fields."""
        data = self.data if isinstance(self.data, str) else self.data.model_dump_json()
        return {"event": self.event, "data": data}


class StepEvent(_Event):
    """One reasoning step, once it is complete."""

    event: Literal["step"] = "step"
    data: str


class AnswerDelta(_Event):
    """The next piece of the answer text."""

    event: Literal["answer"] = "answer"
    data: str


class DraftDone(_Event):
    """A backend's last event: its Draft, citations not yet verified."""

    event: Literal["done"] = "done"
    data: Draft


class AnswerDone(_Event):
    """The stream's last event: the final Answer, as `POST /ask` without streaming returns it."""

    event: Literal["done"] = "done"
    data: Answer


class StreamError(BaseModel):
    error: str = Field(description="The refusal's code, as in an error response.")
    detail: str


class ErrorEvent(_Event):
    """The stream's last event when no answer could be produced (e.g. a generation timeout)."""

    event: Literal["error"] = "error"
    data: StreamError

    @classmethod
    def of(cls, error: ServiceError) -> ErrorEvent:
        return cls(data=StreamError(error=error.code, detail=error.detail))


# What a backend's `stream` yields, and what the service's stream yields.
BackendEvent = Annotated[StepEvent | AnswerDelta | DraftDone, Field(discriminator="event")]
AnswerEvent = Annotated[StepEvent | AnswerDelta | AnswerDone | ErrorEvent, Field(discriminator="event")]


class AnswerBackend(Protocol):
    name: str
    model: str

    def is_ready(self) -> bool: ...

    def generate(self, question: str, passages: list[Passage], paper: PaperRecord) -> Draft: ...

    def stream(self, question: str, passages: list[Passage], paper: PaperRecord) -> Iterator[BackendEvent]:
        """Yield steps and answer deltas as produced, then `DraftDone` with the Draft."""
        ...
