"""The extractive backend on really ingested papers (real chunker, store, embedder and retriever)."""

from __future__ import annotations

from pmcqa.app.answering.base import ABSTAIN_ANSWER
from pmcqa.app.answering.extractive import (
    AIM_CONFIDENCE,
    DEFAULT_MIN_CONFIDENCE,
    FINDINGS_CHARS,
    FINDINGS_CONFIDENCE,
    NAMED_SECTION_CHARS,
    NAMED_SECTION_CONFIDENCE,
    ExtractiveBackend,
    aim_sentence,
    candidates,
    chunk_sentences,
    closing_sentences,
    named_section,
    section_opening,
)
from pmcqa.core.text import split_sentences
from pmcqa.index.models import Chunk, Passage

OWN_QUESTION = "What is the probability that a research claim is true?"
FOREIGN_QUESTION = "Was XMRV detected in the blood of patients with chronic fatigue syndrome?"


def _section_chunk(chunk_id: str, text: str, path: list[str], start: int, kind: str = "back") -> Chunk:
    return Chunk(
        chunk_id=chunk_id,
        paper_id="PMC1182327",
        ordinal=start,
        kind=kind,
        section_path=path,
        text=text,
        start=start,
        end=start + len(text),
    )


def _chunk(text: str, start: int = 100) -> Chunk:
    return _section_chunk("c", text, [], start, "paragraph")


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


FUNDING = _section_chunk("funding", "Funded by the Wellcome Trust (award 123).", ["Funding"], 900_000)
COMPETING = _section_chunk("competing", "None declared.", ["Author notes", "Competing interests"], 900_100)
RESULTS = _section_chunk(
    "results", "Mice given the drug lived longer than controls.", ["Results"], 1000, "paragraph"
)


def test_a_question_names_the_back_matter_section_of_its_best_passage_only():
    passages = [
        Passage(chunk=FUNDING, score=1.0, rank=1, neighbours=[COMPETING]),
        Passage(chunk=RESULTS, score=0.5, rank=2),
    ]
    section = named_section("Who funded this work?", passages)
    assert section is not None
    # The funding passage alone, without its neighbour from another section.
    assert [p.chunk.chunk_id for p in section] == ["funding"] and section[0].neighbours == []
    # Words that name the paper itself ("authors", "work") name no section.
    assert named_section("What did the authors find in this work?", passages) is None
    # A question naming a back-matter heading whose best passage is the body is not answered from the back.
    body_first = [p.model_copy(update={"rank": 3 - p.rank}) for p in passages]
    assert named_section("Who funded this work?", body_first) is None
    assert named_section("Who funded this work?", []) is None


def test_a_named_section_keeps_its_short_statements_and_quotes_its_opening():
    assert candidates([Passage(chunk=COMPETING, score=1.0, rank=1)]) == []  # a fragment elsewhere
    (statement,) = candidates([Passage(chunk=COMPETING, score=1.0, rank=1)], min_terms=1)
    assert statement.text == "None declared."
    sentence = "The Wellcome Trust funded this study under award 123. "
    long = _section_chunk("long", sentence * 40, ["Funding"], 0)
    sentences = chunk_sentences(long)
    chosen = section_opening(sentences)
    assert chosen == list(range(len(chosen))) and 1 < len(chosen) < len(sentences)
    assert sum(len(sentences[i].text) for i in chosen) <= NAMED_SECTION_CHARS
    assert section_opening(chunk_sentences(_section_chunk("one", "x" * 2000 + ".", ["Funding"], 0))) == [0]


def test_a_question_naming_a_back_matter_section_is_answered_from_it(library, ingested):
    paper = ingested["ioannidis"]
    backend = library.backend("extractive")
    question = "Did the author declare any competing interests?"
    draft = backend.generate(question, library.retriever.retrieve(paper.paper_id, question), paper)
    assert draft.answer == "The author has declared that no competing interests exist."
    assert [paper.text[c.start : c.end] for c in draft.cited] == [draft.answer]
    assert draft.steps[2].startswith(
        '3) The question asks for the paper\'s "Author notes > Competing interests"'
    )
    assert draft.confidence is not None and draft.confidence >= NAMED_SECTION_CONFIDENCE
    # "interests" names that heading too, but the body ranks first: answered from the body.
    question = "How do financial interests affect whether research findings are true?"
    passages = library.retriever.retrieve(paper.paper_id, question)
    draft = backend.generate(question, passages, paper)
    assert draft.steps[2].startswith("3) Selected") and "Competing interests" not in draft.steps[2]


def test_a_named_section_s_short_statement_answers(library, ingested):
    """ "None declared." is too short to be a candidate elsewhere; under the heading asked about it is the
    answer, where the backend without named sections has no sentence at all."""
    paper, question = ingested["ioannidis"], "Do the authors declare competing interests?"
    passages = [Passage(chunk=COMPETING, score=1.0, rank=1), Passage(chunk=RESULTS, score=0.5, rank=2)]
    draft = ExtractiveBackend(library.settings, library.embedder).generate(question, passages, paper)
    assert draft.answer == "None declared." and not draft.abstained
    unnamed = ExtractiveBackend(library.settings, library.embedder, named_sections=False)
    assert "None declared." not in unnamed.generate(question, passages, paper).answer


def test_the_findings_close_the_abstract_before_its_registration():
    findings = "We found that the drug halves mortality in adults. " * 3
    conclusions = _section_chunk(
        "c", findings + "It should be used.", ["Abstract", "Conclusions"], 0, "abstract"
    )
    registration = _section_chunk(
        "r", "ClinicalTrials.gov NCT0000001.", ["Abstract", "Trial Registration"], 300
    )
    sentences = chunk_sentences(conclusions) + chunk_sentences(registration)
    chosen = closing_sentences(sentences)
    assert chosen[-1] == 3 and chosen == list(range(chosen[0], 4))  # the conclusions' last ones, in order
    assert sum(len(sentences[i].text) for i in chosen) <= FINDINGS_CHARS
    assert closing_sentences(chunk_sentences(registration)) == []  # nothing that states a finding


def test_a_question_asking_what_the_paper_found_is_answered_by_its_abstract(library, ingested):
    """XMRV's structured abstract ends with its Conclusion: the answer quotes it, where the sentence ranker
    found nothing it was confident about in a question without a subject."""
    paper = ingested["xmrv"]
    question = "What did the authors find?"
    passages = library.retriever.retrieve(paper.paper_id, question)
    draft = library.backend("extractive").generate(question, passages, paper)
    assert not draft.abstained and "we found no evidence that XMRV is associated with CFS" in draft.answer
    by_id = {c.chunk_id: c for p in passages for c in [p.chunk, *p.neighbours]}
    assert {tuple(by_id[c.chunk_id].section_path) for c in draft.cited} == {("Abstract", "Conclusion")}
    assert all(paper.text[c.start : c.end] == c.quote for c in draft.cited)
    assert draft.steps[2].startswith("3) The question asks what the paper found: quoting the closing")
    assert draft.confidence is not None and draft.confidence >= FINDINGS_CONFIDENCE
    plain = ExtractiveBackend(library.settings, library.embedder, findings_abstract=False)
    assert plain.generate(question, passages, paper).steps[2] != draft.steps[2]


def test_the_aim_is_the_abstract_s_objective_else_its_first_sentence_saying_it():
    background = "Influenza kills thousands each winter. Vaccines wane."
    aims = "We sought to test a new adjuvant. We found that it doubles titres."
    plain = chunk_sentences(_section_chunk("a", f"{background} {aims}", ["Abstract"], 0, "abstract"))
    assert [plain[i].text for i in aim_sentence(plain)] == ["We sought to test a new adjuvant."]
    structured = chunk_sentences(
        _section_chunk("b", background, ["Abstract", "Background"], 0, "abstract")
    ) + chunk_sentences(
        _section_chunk("o", "To compare two doses. Adults were enrolled.", ["Abstract", "Objectives"], 60)
    )
    assert [structured[i].text for i in aim_sentence(structured)] == ["To compare two doses."]
    own_work = chunk_sentences(
        _section_chunk("c", f"{background} Here we show a new route.", ["Abstract"], 0)
    )
    assert [own_work[i].text for i in aim_sentence(own_work)] == ["Here we show a new route."]
    assert aim_sentence(chunk_sentences(_section_chunk("d", background, ["Abstract"], 0))) == []


def test_a_question_asking_for_the_paper_s_aim_is_answered_by_its_abstract(library, ingested):
    paper, question = ingested["xmrv"], "What was the aim of this study?"
    passages = library.retriever.retrieve(paper.paper_id, question)
    draft = library.backend("extractive").generate(question, passages, paper)
    (cited,) = draft.cited
    by_id = {c.chunk_id: c for p in passages for c in [p.chunk, *p.neighbours]}
    assert (
        by_id[cited.chunk_id].section_path[0] == "Abstract"
        and paper.text[cited.start : cited.end] == cited.quote
    )
    assert draft.steps[2].startswith("3) The question asks what the paper set out to do")
    assert draft.confidence is not None and draft.confidence >= AIM_CONFIDENCE
