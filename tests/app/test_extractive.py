"""The extractive backend on really ingested papers (real chunker, store, embedder and retriever)."""

from __future__ import annotations

from pmcqa.app.answering.base import ABSTAIN_ANSWER
from pmcqa.app.answering.extractive import DEFAULT_MIN_CONFIDENCE, ExtractiveBackend, chunk_sentences
from pmcqa.core.text import split_sentences
from pmcqa.index.models import Chunk

OWN_QUESTION = "What is the probability that a research claim is true?"
FOREIGN_QUESTION = "Was XMRV detected in the blood of patients with chronic fatigue syndrome?"


def _chunk(text: str, start: int = 100) -> Chunk:
    return Chunk(
        chunk_id="c",
        paper_id="PMC1",
        ordinal=0,
        kind="paragraph",
        text=text,
        start=start,
        end=start + len(text),
    )


def test_sentence_split_keeps_exact_offsets_and_skips_abbreviations():
    text = (
        "As shown by Wu et al. in Fig. 2, the dose was 2.5 mg per kg. This was tested (n = 12). "
        "Results differ, e.g. in mice.\nA table row: 3 | 4"
    )
    paper_text = "x" * 100 + text
    sentences = chunk_sentences(_chunk(text))
    assert [s.text for s in sentences] == [
        "As shown by Wu et al. in Fig. 2, the dose was 2.5 mg per kg.",
        "This was tested (n = 12).",
        "Results differ, e.g. in mice.",
        "A table row: 3 | 4",
    ]
    for sentence in sentences:
        assert paper_text[sentence.start : sentence.end] == sentence.text


def test_extractive_sentences_are_the_shared_splitter_at_paper_offsets() -> None:
    text = "As shown by Wu et al. in Fig. 2, it held. It was tested (n = 12).\nA row: 3 | 4"
    paper_text = "x" * 40 + text
    sentences = chunk_sentences(_chunk(text, start=40))
    assert [(s.start - 40, s.end - 40) for s in sentences] == split_sentences(text)
    assert [s.index for s in sentences] == [0, 1, 2]
    assert all(paper_text[s.start : s.end] == s.text for s in sentences)


def test_answers_with_verbatim_cited_sentences(library, ingested):
    paper = ingested["ioannidis"]
    backend = library.backend("extractive")
    passages = library.retriever.retrieve(paper.paper_id, OWN_QUESTION, 8, "hybrid")
    draft = backend.generate(OWN_QUESTION, passages, paper)
    assert not draft.abstained
    assert 1 <= len(draft.cited) <= 3
    assert "probability" in draft.answer.lower()
    for span in draft.cited:
        assert paper.text[span.start : span.end] == span.quote
        assert span.quote in draft.answer or draft.answer.startswith(span.quote[:40])
    assert draft.steps[0].startswith("1) Searched 8 passages of PMC1182327")
    assert draft.steps[1].startswith("2) Most relevant sections:")
    assert draft.steps[2].startswith("3) Selected") and "chance" in draft.steps[2]
    assert draft.confidence is not None and draft.confidence >= DEFAULT_MIN_CONFIDENCE


def test_abstains_on_a_question_about_another_paper(library, ingested):
    paper = ingested["ioannidis"]
    backend = library.backend("extractive")
    passages = library.retriever.retrieve(paper.paper_id, FOREIGN_QUESTION, 8, "hybrid")
    draft = backend.generate(FOREIGN_QUESTION, passages, paper)
    assert draft.abstained and draft.answer == ABSTAIN_ANSWER and draft.cited == []
    assert "under the minimum" in draft.steps[-1]
    # ... while the same question is answered from the paper that is about it.
    xmrv = ingested["xmrv"]
    own = backend.generate(
        FOREIGN_QUESTION, library.retriever.retrieve(xmrv.paper_id, FOREIGN_QUESTION), xmrv
    )
    assert not own.abstained and own.cited


def test_a_lone_candidate_sentence_is_no_evidence_of_certainty(library, ingested):
    """One passage holding one sentence: nothing to compare it with is not a wide margin (it answered an
    unrelated question with confidence 1.0)."""
    paper, question = ingested["ioannidis"], "What is the recipe for chocolate cake?"
    backend = library.backend("extractive")
    passages = library.retriever.retrieve(paper.paper_id, question, 20, "hybrid")
    lone = next(p for p in passages if len(chunk_sentences(p.chunk)) == 1)
    draft = backend.generate(question, [lone.model_copy(update={"rank": 1})], paper)
    assert draft.abstained and draft.confidence is not None and draft.confidence < 0.5, draft.steps


def test_threshold_setting_overrides_the_calibrated_default(library, embedder):
    assert ExtractiveBackend(library.settings, embedder).min_confidence == DEFAULT_MIN_CONFIDENCE
    strict = ExtractiveBackend(library.settings.model_copy(update={"min_confidence": 1.0}), embedder)
    paper = library.store.get_paper("PMC1182327")
    passages = library.retriever.retrieve(paper.paper_id, OWN_QUESTION)
    assert strict.generate(OWN_QUESTION, passages, paper).abstained


def test_stream_yields_steps_then_answer_then_done(library, ingested):
    paper = ingested["ioannidis"]
    backend = library.backend("extractive")
    passages = library.retriever.retrieve(paper.paper_id, OWN_QUESTION)
    events = list(backend.stream(OWN_QUESTION, passages, paper))
    kinds = [e.event for e in events]
    assert kinds[:3] == ["step", "step", "step"]
    assert kinds[-1] == "done" and "answer" in kinds
    assert kinds.index("answer") > 2
    answer = "".join(str(e.data) for e in events if e.event == "answer")
    assert events[-1].data.answer == answer
    assert len(events[-1].data.steps) == 3
