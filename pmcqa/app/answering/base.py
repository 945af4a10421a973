"""The contract every answer backend meets, the typed answer the API returns, and the streamed events.

A backend turns (question, retrieved passages, paper) into a `Draft`: answer text, steps, and the spans it
claims to cite. `app.answering.citations` then checks each claimed span verbatim against the paper's canonical
text and drops anything invented or not retrieved, so every backend obeys the same citation contract.
"""

from __future__ import annotations

import threading
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
    confidence: float | None = Field(
        None, description="Estimated probability that the answer holds the right information, if known."
    )
    verbatim: bool = Field(
        False,
        description="The answer is verbatim paper text (extractive): the cited spans, or a phrase of one; "
        "each quote is a claim.",
    )


class Citation(BaseModel):
    chunk_id: str
    section: str = Field(description='Section path of the cited text, e.g. "Results > Binding".')
    label: str | None = Field(
        None, description='Label of a cited table, figure or box, e.g. "Table 2"; None for running text.'
    )
    quote: str
    start: int
    end: int

    @property
    def place(self) -> str:
        """Where the quote is, for people: "Results > Table 2", "Results", "Table 2" or ""."""
        return " > ".join(part for part in (self.section, self.label) if part)


class Claim(BaseModel):
    """One sentence of the answer, checked against the text it cites."""

    text: str
    citations: list[int] = Field(
        default_factory=list, description="Positions (0-based) in the answer's `citations` of what it cites."
    )
    supported: bool = Field(description="Checked and supported by what it cites.")
    reason: str = Field(description="Why it is (not) supported, e.g. 'number 12% is not in the cited text'.")
    checked: bool = Field(
        True,
        description="False when the answer's time (generation_timeout_s) ran out before the check reached "
        "this claim: it is then not supported (`supported` false), and the answer says it was not verified.",
    )


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
    confidence: float | None = Field(
        None,
        description="Estimated probability (0-1) that the answer holds the right information; calibrated on "
        "COVID-QA for the extractive backend, null for backends without a calibrated estimate.",
    )
    claims: list[Claim] = Field(
        default_factory=list, description="The answer's sentences, each checked against what it cites."
    )
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per stage.")


# --- streamed answers ---------------------------------------------------------------------------------------
# A backend streams `StepEvent`s and `AnswerDelta`s, then one `DraftDone`; the service turns the draft into
# the final Answer (`AnswerDone`) or reports a refusal (`ErrorEvent`). `sse()` is the one serialisation to
# Server-Sent Events. On the wire every event is one JSON object (`StreamMessage`) whose `type` is also the
# SSE event name:
#   {"type": "step", "request_id": ..., "text": "1) Searched ..."}
#   {"type": "answer.delta", "request_id": ..., "text": "The key regulator"}
#   {"type": "done", "request_id": ..., "answer": {...the Answer, as POST /ask returns it...}}
#   {"type": "error", "request_id": ..., "error": "generation_timeout", "detail": "..."}


class StreamStep(BaseModel):
    type: Literal["step"] = "step"
    request_id: str | None = None
    text: str = Field(description="One reasoning step, once it is complete.")


class StreamDelta(BaseModel):
    type: Literal["answer.delta"] = "answer.delta"
    request_id: str | None = None
    text: str = Field(description="The next piece of the answer text; the pieces concatenate to the answer.")


class StreamDone(BaseModel):
    type: Literal["done"] = "done"
    request_id: str | None = None
    answer: Answer = Field(description="The final Answer, as `POST /ask` without streaming returns it.")


class StreamFailure(BaseModel):
    type: Literal["error"] = "error"
    request_id: str | None = None
    error: str = Field(description="The refusal's code, as in an error response.")
    detail: str


StreamMessage = Annotated[StreamStep | StreamDelta | StreamDone | StreamFailure, Field(discriminator="type")]


class _Event(BaseModel):
    event: str
    data: str | BaseModel

    def message(self, request_id: str | None) -> BaseModel:
        """This event as it goes on the wire."""
        raise NotImplementedError(f"{type(self).__name__} is not sent to clients")

    def sse(self, request_id: str | None = None) -> dict[str, str]:
        """This event as a Server-Sent Event's fields: the message's type names the event, the message is
        its data."""
        message = self.message(request_id)
        return {"event": message.type, "data": message.model_dump_json()}  # type: ignore[attr-defined]


class StepEvent(_Event):
    """One reasoning step, once it is complete."""

    event: Literal["step"] = "step"
    data: str

    def message(self, request_id: str | None) -> StreamStep:
        return StreamStep(request_id=request_id, text=self.data)


class AnswerDelta(_Event):
    """The next piece of the answer text."""

    event: Literal["answer"] = "answer"
    data: str

    def message(self, request_id: str | None) -> StreamDelta:
        return StreamDelta(request_id=request_id, text=self.data)


class DraftDone(_Event):
    """A backend's last event: its Draft, citations not yet verified (never sent to clients)."""

    event: Literal["done"] = "done"
    data: Draft


class AnswerDone(_Event):
    """The stream's last event: the final Answer, as `POST /ask` without streaming returns it."""

    event: Literal["done"] = "done"
    data: Answer

    def message(self, request_id: str | None) -> StreamDone:
        return StreamDone(request_id=request_id, answer=self.data)


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

    def message(self, request_id: str | None) -> StreamFailure:
        return StreamFailure(request_id=request_id, error=self.data.error, detail=self.data.detail)


# What a backend's `stream` yields, and what the service's stream yields.
BackendEvent = Annotated[StepEvent | AnswerDelta | DraftDone, Field(discriminator="event")]
AnswerEvent = Annotated[StepEvent | AnswerDelta | AnswerDone | ErrorEvent, Field(discriminator="event")]


class AnswerBackend(Protocol):
    name: str
    model: str

    def is_ready(self) -> bool: ...

    def generate(self, question: str, passages: list[Passage], paper: PaperRecord) -> Draft: ...

    def stream(
        self,
        question: str,
        passages: list[Passage],
        paper: PaperRecord,
        cancelled: threading.Event | None = None,
    ) -> Iterator[BackendEvent]:
        """Yield steps and answer deltas as produced, then `DraftDone` with the Draft.

        Once `cancelled` is set (the client went away) stop generating as soon as possible and return
        without a `DraftDone`: a model frees itself for the next request, a connection is closed.
        """
        ...
