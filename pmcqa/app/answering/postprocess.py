"""From a model's (analysis, final) text to a `Draft`, the same way for every LLM backend.

- steps: the analysis split into numbered steps;
- answer: the final message, with `[n]` markers kept only for excerpt numbers that were actually given;
- cited: one `CitedSpan` per cited excerpt, covering its whole chunk (`citations.py` checks them verbatim);
- abstained: the answer says the paper doesn't answer the question.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from pmcqa.app.answering.base import ABSTAIN_ANSWER, AnswerDelta, CitedSpan, Draft, DraftDone, StepEvent
from pmcqa.app.answering.harmony import CITATION_MARKER, Progress, StepTracker, excerpt_chunks, split_steps
from pmcqa.core.text import split_sentences
from pmcqa.index.models import Passage

_CITATION_RE = re.compile(r"\s?" + CITATION_MARKER)
_ABSTAIN_RE = re.compile(
    r"does not appear to answer|do(?:es)? not answer|not stated in the (?:paper|excerpts?|text)"
    r"|cannot (?:be )?answer|can't answer|unable to answer"
    r"|(?:paper|excerpts?|text) (?:does|do) not (?:state|say|mention|report|provide|contain|specify)"
    r"|not (?:mentioned|reported|provided|specified|addressed|discussed) in the (?:paper|excerpts?|text)"
    r"|no information (?:about|on|regarding)",
    re.IGNORECASE,
)


def cited_numbers(text: str) -> list[int]:
    """Excerpt numbers cited as [n], [n, m] or [n-m], in order of first appearance."""
    numbers: list[int] = []
    for match in _CITATION_RE.finditer(text):
        for number in _expand(match.group(1)):
            if number not in numbers:
                numbers.append(number)
    return numbers


def _expand(group: str) -> list[int]:
    numbers: list[int] = []
    for part in re.split(r"\s*[,;]\s*", group.strip()):
        bounds = [int(value) for value in re.split(r"\s*[\u2013-]\s*", part) if value]
        if len(bounds) == 2 and 0 <= bounds[1] - bounds[0] < 50:  # a range such as [2-4]
            numbers.extend(range(bounds[0], bounds[1] + 1))
        else:
            numbers.extend(bounds)
    return numbers


def drop_unknown_citations(text: str, count: int) -> str:
    """Keep [n] markers only for excerpts 1..count; a marker left with no valid number disappears."""

    def rewrite(match: re.Match[str]) -> str:
        valid = [number for number in _expand(match.group(1)) if 1 <= number <= count]
        if not valid:
            return ""
        lead = match.group(0)[: len(match.group(0)) - len(match.group(0).lstrip())]
        return f"{lead}[{', '.join(str(number) for number in dict.fromkeys(valid))}]"

    return _CITATION_RE.sub(rewrite, text).strip()


def is_abstention(answer: str) -> bool:
    """The answer's first sentence says the paper doesn't answer (later sentences may hedge a real answer)."""
    sentences = split_sentences(answer)
    return bool(sentences and _ABSTAIN_RE.search(answer[slice(*sentences[0])]))


def build_draft(
    analysis: str,
    final: str | None,
    passages: list[Passage],
    model: str,
    *,
    truncated: bool = False,
) -> Draft:
    """Assemble the Draft; without a final message the answer is the last reasoning step (truncated)."""
    count = len(passages)
    steps = [drop_unknown_citations(step, count) for step in split_steps(analysis)]
    answer = drop_unknown_citations(final or "", count)
    if not answer:
        # Truncated before (or during an empty) final: answer from what's there, and say so.
        answer, truncated = (steps[-1] if steps else ""), True
    if not answer or is_abstention(answer):
        return Draft(answer=ABSTAIN_ANSWER, steps=steps, abstained=True, model=model, truncated=truncated)
    # An excerpt is the passage with the neighbours merged in for context: its citations are all of them,
    # so every claim's supporting text is in a citation's quote.
    cited = [
        CitedSpan(chunk_id=chunk.chunk_id, start=chunk.start, end=chunk.end)
        for number in cited_numbers(answer)
        for chunk in excerpt_chunks(passages[number - 1])
    ]
    return Draft(answer=answer, steps=steps, cited=cited, model=model, truncated=truncated)


class StreamAssembler:
    """Turns a growing (analysis, final) into `StepEvent`s and `AnswerDelta`s.

    A step is emitted once the next one has begun (or the analysis is over); answer events carry text deltas.
    `grow` takes what the texts gained (from `harmony.CompletionStream`): its work is in the gain's length, so
    a streamed reply costs time linear in its length. `update` takes the whole texts, for the end of a reply
    or one parsed whole.
    """

    def __init__(self) -> None:
        self._steps = StepTracker()
        self._steps_sent = 0
        self._split: list[str] | None = None  # split_steps of the analysis, once over (until it changes)
        self._answer_sent: list[str] = []
        self._answer_length = 0

    def take(self, progress: Progress) -> Iterator[StepEvent | AnswerDelta]:
        """The events of one piece of a `CompletionStream`."""
        if progress.whole is not None:
            return self.update(progress.whole.analysis, progress.whole.final)
        return self.grow(progress.analysis, progress.final, final_begun=progress.final_begun)

    def grow(self, analysis: str, final: str, *, final_begun: bool) -> Iterator[StepEvent | AnswerDelta]:
        """The analysis gained `analysis` and the answer `final` (`final_begun`: the analysis is over)."""
        if analysis:
            self._steps.extend(analysis)
            self._split = None
        yield from self._new_steps(analysis_over=final_begun)
        if final:
            yield self._send(final)

    def update(
        self, analysis: str, final: str | None, *, finished: bool = False
    ) -> Iterator[StepEvent | AnswerDelta]:
        """The whole analysis and final so far (`final` None: not begun); costs their length."""
        known = self._steps.analysis
        if analysis != known:
            if not analysis.startswith(known):  # rewritten, not grown: read it again
                self._steps = StepTracker()
                known = ""
            self._steps.extend(analysis[len(known) :])
            self._split = None
        yield from self._new_steps(analysis_over=finished or final is not None)
        # Only ever append: a partial parse that would rewrite already-sent text waits for more tokens.
        if final and len(final) > self._answer_length and final.startswith("".join(self._answer_sent)):
            yield self._send(final[self._answer_length :])

    def _send(self, delta: str) -> AnswerDelta:
        self._answer_sent.append(delta)
        self._answer_length += len(delta)
        return AnswerDelta(data=delta)

    def _new_steps(self, *, analysis_over: bool) -> Iterator[StepEvent]:
        # While reasoning runs, only a numbered split is stable enough to emit its completed steps.
        if not analysis_over:
            ready = self._steps.complete
        else:
            if self._split is None:
                self._split = split_steps(self._steps.analysis)
            ready = self._split
        for step in ready[self._steps_sent :]:
            yield StepEvent(data=step)
        self._steps_sent = max(self._steps_sent, len(ready))

    @staticmethod
    def done(draft: Draft) -> DraftDone:
        return DraftDone(data=draft)
