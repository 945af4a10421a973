"""Retriever: dense / BM25 / hybrid ranking inside one paper, structure-aware boosts, neighbour expansion.

Uses the real MiniLM embedder (session fixture `embedder`), a small in-memory stand-in for the store (same
methods as `index.store.Store`) for the ranking logic, and the real Store once end to end.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import pmcqa.app.commands.search as search_command
from pmcqa.app.cli import cli
from pmcqa.app.errors import PaperNotFound
from pmcqa.app.schemas import SearchHit
from pmcqa.app.service import Library
from pmcqa.core.settings import Settings
from pmcqa.core.text import tokenize
from pmcqa.index.models import Chunk, PaperRecord, ReferenceInfo
from pmcqa.index.retrieval import (
    AuthorMention,
    LabelKey,
    Retriever,
    approx_tokens,
    asks_about,
    asks_for_aim,
    asks_for_findings,
    author_mentions,
    heading_stem_terms,
    label_keys,
    lexical_text,
    matching_references,
    reciprocal_rank_fusion,
)


class MemoryStore:
    """In-memory stand-in for `index.store.Store` (the methods the retriever uses)."""

    def __init__(self, embedder: object) -> None:
        self.embedder = embedder
        self.papers: dict[str, PaperRecord] = {}
        self.chunks: dict[str, list[Chunk]] = {}
        self.vectors: dict[str, np.ndarray] = {}

    def put_paper(self, record: PaperRecord, chunks: list[Chunk]) -> None:
        self.papers[record.paper_id] = record
        self.chunks[record.paper_id] = sorted(chunks, key=lambda c: c.ordinal)
        self.vectors[record.paper_id] = self.embedder.embed_documents([c.text for c in chunks])

    def get_paper(self, paper_id: str) -> PaperRecord | None:
        return self.papers.get(paper_id)

    def get_chunks(self, paper_id: str) -> list[Chunk]:
        return list(self.chunks.get(paper_id, []))

    def get_vectors(self, paper_id: str) -> tuple[list[str], np.ndarray]:
        chunks = self.chunks[paper_id]
        return [c.chunk_id for c in chunks], self.vectors[paper_id]

    def search_library(self, query_vector: np.ndarray, k: int) -> list[tuple[Chunk, float]]:
        hits = [
            (chunk, float(vector @ query_vector))
            for paper_id, chunks in self.chunks.items()
            for chunk, vector in zip(chunks, self.vectors[paper_id], strict=True)
        ]
        return sorted(hits, key=lambda hit: -hit[1])[:k]


def build_paper(
    paper_id: str,
    items: list[tuple[list[str], str, str] | tuple[list[str], str, str, dict]],
    references: list[ReferenceInfo] | None = None,
) -> tuple[PaperRecord, list[Chunk]]:
    """A record whose canonical text is the items joined by blank lines, one chunk per item."""
    chunks: list[Chunk] = []
    offset = 0
    for ordinal, item in enumerate(items):
        path, kind, text = item[:3]
        extra = item[3] if len(item) > 3 else {}
        chunks.append(
            Chunk(
                chunk_id=f"{paper_id}-c{ordinal}",
                paper_id=paper_id,
                ordinal=ordinal,
                section_path=path,
                kind=kind,
                text=text,
                start=offset,
                end=offset + len(text),
                **extra,
            )
        )
        offset += len(text) + 2
    record = PaperRecord(
        paper_id=paper_id,
        title=items[0][2],
        text="\n\n".join(c.text for c in chunks),
        references=references or [],
    )
    return record, chunks


INTRO = ["Introduction"]
METHODS = ["Methods"]
RESULTS = ["Results"]

VIRUS_PAPER = [
    (["Title"], "title", "Antiviral activity of compound K against influenza A virus in ferrets"),
    (
        INTRO,
        "paragraph",
        "Influenza A virus causes seasonal epidemics and occasional pandemics with substantial mortality.",
    ),
    (
        INTRO,
        "paragraph",
        "Neuraminidase inhibitors are the main antiviral drugs, but resistant strains have emerged.",
    ),
    (
        METHODS,
        "paragraph",
        "Ferrets were inoculated intranasally with 10^6 plaque forming units and treated twice daily.",
    ),
    (
        METHODS,
        "paragraph",
        "Nasal washes were collected on days 1, 3, 5 and 7 and titrated on MDCK cells.",
    ),
    (
        RESULTS,
        "paragraph",
        "Compound K reduced viral titres in nasal washes by three orders of magnitude on day 3.",
    ),
    (RESULTS, "paragraph", "Treated ferrets lost less body weight and had milder fever than controls."),
]


@pytest.fixture(scope="module")
def store(embedder: object) -> MemoryStore:
    store = MemoryStore(embedder)
    record, chunks = build_paper("PMC1", VIRUS_PAPER)
    store.put_paper(record, chunks)
    return store


def make_retriever(store: MemoryStore, embedder: object, **kwargs: object) -> Retriever:
    return Retriever(store, embedder, Settings(top_k=3, context_tokens=1024), **kwargs)


# --- ranking ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
def test_each_mode_finds_the_passage_that_answers(store: MemoryStore, embedder: object, mode: str) -> None:
    retriever = make_retriever(store, embedder)
    passages = retriever.retrieve("PMC1", "How much did compound K reduce viral titres?", mode=mode)

    assert len(passages) == 3
    top = passages[0]
    assert top.chunk.chunk_id == "PMC1-c5"
    assert top.chunk.section_path == ["Results"]
    record = store.get_paper("PMC1")
    assert record is not None and record.text[top.chunk.start : top.chunk.end] == top.chunk.text
    assert [p.rank for p in passages] == [1, 2, 3]
    assert [p.score for p in passages] == sorted((p.score for p in passages), reverse=True)
    assert (top.dense_score is not None) == (mode != "lexical")
    assert (top.lexical_score is not None) == (mode != "dense")


def test_dense_scores_are_cosines_against_the_papers_own_vectors(
    store: MemoryStore, embedder: object
) -> None:
    question = "Which cells were used for titration?"
    passages = make_retriever(store, embedder).retrieve("PMC1", question, top_k=7, mode="dense")
    query = embedder.embed_queries([question])[0]
    ids, matrix = store.get_vectors("PMC1")
    expected = dict(zip(ids, matrix @ query, strict=True))
    assert len(passages) == 7
    for passage in passages:
        assert passage.score == pytest.approx(float(expected[passage.chunk.chunk_id]), abs=1e-5)
    assert passages[0].chunk.chunk_id == "PMC1-c4"


def test_hybrid_score_is_reciprocal_rank_fusion_of_both_lists(store: MemoryStore, embedder: object) -> None:
    retriever = make_retriever(store, embedder, rrf_k=10, lexical_weight=2.0)
    question = "body weight and fever of treated ferrets"
    hybrid = retriever.retrieve("PMC1", question, top_k=7, mode="hybrid", budget_tokens=0)
    dense = retriever.retrieve("PMC1", question, top_k=7, mode="dense", budget_tokens=0)
    lexical = retriever.retrieve("PMC1", question, top_k=7, mode="lexical", budget_tokens=0)
    dense_rank = {p.chunk.chunk_id: p.rank for p in dense}
    lexical_rank = {p.chunk.chunk_id: p.rank for p in lexical if p.score > 0}
    for passage in hybrid:
        cid = passage.chunk.chunk_id
        lexical_part = 2 / (10 + lexical_rank[cid]) if cid in lexical_rank else 0
        expected = 1 / (10 + dense_rank[cid]) + lexical_part
        assert passage.score == pytest.approx(expected)
    assert hybrid[0].chunk.chunk_id == "PMC1-c6"


def test_rrf_arithmetic() -> None:
    fused = reciprocal_rank_fusion(4, [([2, 0, 1], 1.0), ([0, 3], 2.0)], k=60)
    assert fused[0] == pytest.approx(1 / 62 + 2 / 61)
    assert fused[1] == pytest.approx(1 / 63)
    assert fused[2] == pytest.approx(1 / 61)
    assert fused[3] == pytest.approx(2 / 62)


def test_unknown_paper_and_bad_mode(store: MemoryStore, embedder: object) -> None:
    retriever = make_retriever(store, embedder)
    assert retriever.retrieve("PMC404", "anything") == []
    with pytest.raises(ValueError, match="unknown retrieval mode"):
        retriever.retrieve("PMC1", "anything", mode="sparse")  # type: ignore[arg-type]


def test_lexical_index_is_cached_per_paper_and_chunk_set(embedder: object) -> None:
    store = MemoryStore(embedder)
    store.put_paper(*build_paper("PMC1", VIRUS_PAPER))
    retriever = Retriever(store, embedder, Settings(), lexical_cache_size=1)
    first = retriever._lexical_index("PMC1", store.get_chunks("PMC1"))
    assert retriever._lexical_index("PMC1", store.get_chunks("PMC1")) is first
    # Re-ingested with different text: the cache key changes, the stale index is not reused.
    store.put_paper(*build_paper("PMC1", VIRUS_PAPER[:-1] + [(RESULTS, "paragraph", "Ferrets recovered.")]))
    second = retriever._lexical_index("PMC1", store.get_chunks("PMC1"))
    assert second is not first
    assert len(retriever._lexical) == 1


def test_bm25_reads_each_chunks_section_headings_before_its_text() -> None:
    # The statement shares no word with the question; its heading does.
    notes = [
        (["Author notes", "Competing interests"], "back", "University College London holds patents."),
        (["Funding"], "back", "Supported by grant 12 of the Wellcome Trust."),
    ]
    embedder = _ZeroEmbedder()
    store = MemoryStore(embedder)
    store.put_paper(*build_paper("PMC1", VIRUS_PAPER + notes))
    question = "Do the authors declare any competing interests?"
    read_with_headings = Retriever(store, embedder, Settings()).rank("PMC1", question, "lexical")
    text_retriever = Retriever(store, embedder, Settings(), lexical_heading=False)
    text_alone = text_retriever.rank("PMC1", question, "lexical")
    assert read_with_headings is not None and text_alone is not None
    patents = len(VIRUS_PAPER)
    assert read_with_headings.order[0] == patents and read_with_headings.scores[patents] > 0
    assert text_alone.scores[patents] == 0
    # Flat text (COVID-QA) has no headings: BM25 reads it as before.
    (flat,) = build_paper("PMC2", [([], "paragraph", "Plain text.")])[1]
    assert lexical_text(flat) == "Plain text."


def test_bm25_meets_a_heading_in_another_form_of_its_word() -> None:
    # The grant's text never says fund*; its heading "Funding" shares only a Snowball stem with "funded".
    grant = (["Funding"], "back", "Supported by grant 12 of the Wellcome Trust.")
    # Body text matches as tokenize reads it: "work" meets "work", "funding" in a text does not meet "funded".
    body = (RESULTS, "paragraph", "This work is the first to test compound K in ferrets.")
    body_funding = (RESULTS, "paragraph", "Funding cuts delayed the second trial of compound K.")
    embedder = _ZeroEmbedder()
    store = MemoryStore(embedder)
    store.put_paper(*build_paper("PMC1", VIRUS_PAPER + [grant, body, body_funding]))
    question = "Who funded this work?"
    with_stems = Retriever(store, embedder, Settings()).rank("PMC1", question, "lexical")
    plain_heading = Retriever(store, embedder, Settings(), lexical_heading_stems=False)
    without = plain_heading.rank("PMC1", question, "lexical")
    assert with_stems is not None and without is not None
    grant_at, body_at, body_funding_at = range(len(VIRUS_PAPER), len(VIRUS_PAPER) + 3)
    assert with_stems.order[0] == grant_at and with_stems.scores[body_at] > 0
    assert with_stems.scores[body_funding_at] == 0
    assert without.order[0] == body_at and without.scores[grant_at] == 0
    assert heading_stem_terms("Funding") == heading_stem_terms("funded") == ["\u00a7fund"]


BOILERPLATE = [
    (["Author notes", "Competing interests"], "back", "The authors declare no competing interests."),
    (["Author notes", "Author contributions"], "back", "These authors contributed equally to this work."),
    (["Funding"], "back", "This work was funded by grant 12 of the Wellcome Trust."),
]


@pytest.mark.parametrize(
    ("question", "first"),
    [
        ("What did the authors find in this study?", None),  # names only the paper: no back matter first
        ("Do the authors declare any competing interests?", "Competing interests"),
        ("Who funded this work?", "Funding"),  # "funded" and "Funding" share their stem
        ("What did each author contribute?", "Author contributions"),
    ],
)
def test_back_matter_the_question_does_not_ask_about_ranks_last(
    embedder: object, question: str, first: str | None
) -> None:
    store = MemoryStore(embedder)
    store.put_paper(*build_paper("PMC1", VIRUS_PAPER + BOILERPLATE))
    ranking = make_retriever(store, embedder).rank("PMC1", question)
    assert ranking is not None
    ranked = [ranking.chunks[i] for i in ranking.order]
    if first is None:  # every back-matter chunk after every chunk of the paper's own text
        assert [c.kind for c in ranked[-len(BOILERPLATE) :]] == ["back"] * len(BOILERPLATE)
    else:
        assert ranked[0].section_path[-1] == first
        assert all(c.kind != "back" for c in ranked[1 : -len(BOILERPLATE) + 1])  # the others last
    unordered = make_retriever(store, embedder, back_matter_last=False).rank("PMC1", question)
    assert unordered is not None and sorted(unordered.order) == sorted(ranking.order)


def test_asks_about_ignores_the_words_that_name_the_paper() -> None:
    chunks = build_paper("PMC1", BOILERPLATE)[1]
    assert asks_about("What did the authors conclude in this paper?", chunks) == [False, False, False]
    assert asks_about("Are there conflicts of interest?", chunks) == [True, False, False]
    assert asks_about("Who designed the study?", chunks) == [False, False, False]


ABSTRACT = [
    (["Abstract"], "abstract", "We tested compound K against influenza A virus in ferrets."),
    (["Abstract"], "abstract", "Compound K is a candidate antiviral for influenza."),
    (["Abstract (summary)"], "abstract", "Flu is a common illness; a new drug may help."),
]


def test_a_question_asking_only_for_the_findings_ranks_the_main_abstract_first(embedder: object) -> None:
    assert asks_for_findings("What did the authors find?")
    assert asks_for_findings("What is the main conclusion of this study?")
    assert not asks_for_findings("What did the authors find about fever?")  # asks about fever
    assert not asks_for_findings("What methods did the authors use?")
    assert not asks_for_findings("What is this?")  # asks nothing
    assert asks_for_aim("What was the purpose of this study?")
    assert asks_for_aim("What are the main objectives?")
    assert not asks_for_aim("What is the main finding?") and not asks_for_aim("What is the aim of the drug?")
    store = MemoryStore(embedder)
    store.put_paper(*build_paper("PMC1", [VIRUS_PAPER[0], *ABSTRACT, *VIRUS_PAPER[1:]]))
    question = "What did the authors find?"
    ranking = make_retriever(store, embedder).rank("PMC1", question)
    assert ranking is not None
    first = [ranking.chunks[i] for i in ranking.order[:2]]
    assert [c.section_path for c in first] == [["Abstract"], ["Abstract"]]  # not the summary beside it
    plain = make_retriever(store, embedder, findings_abstract=False).rank("PMC1", question)
    assert plain is not None and plain.structural == set()
    aim = make_retriever(store, embedder).rank("PMC1", "What was the aim of this study?")
    assert aim is not None
    assert [aim.chunks[i].section_path for i in aim.order[:2]] == [["Abstract"], ["Abstract"]]


def test_a_changed_section_path_is_a_new_lexical_index() -> None:
    embedder = _ZeroEmbedder()
    store = MemoryStore(embedder)
    store.put_paper(*build_paper("PMC1", VIRUS_PAPER))
    retriever = Retriever(store, embedder, Settings())
    first = retriever._lexical_index("PMC1", store.get_chunks("PMC1"))
    store.put_paper(*build_paper("PMC1", [(["Discussion"], *item[1:]) for item in VIRUS_PAPER]))
    assert retriever._lexical_index("PMC1", store.get_chunks("PMC1")) is not first


class _ZeroEmbedder:
    """Lexical ranking needs no embedding model; the store stand-in still asks for document vectors."""

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        return np.zeros((len(texts), 4), dtype=np.float32)

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return np.zeros((len(texts), 4), dtype=np.float32)


def test_lexical_cache_is_safe_under_concurrent_requests() -> None:
    embedder = _ZeroEmbedder()
    store = MemoryStore(embedder)
    papers = [f"PMC{n}" for n in range(6)]
    for n, paper_id in enumerate(papers):  # one paper text per id, so each ranking is distinct
        items = VIRUS_PAPER[n:] + VIRUS_PAPER[:n]
        store.put_paper(*build_paper(paper_id, items))
    question = "How much did compound K reduce viral titres in ferrets?"
    # Far more papers than cache slots: every thread keeps evicting what another one is reading.
    retriever = Retriever(store, embedder, Settings(), lexical_cache_size=2)
    alone = Retriever(store, embedder, Settings())
    expected = {p: list(alone.rank(p, question, "lexical").order) for p in papers}  # type: ignore[union-attr]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible to provoke interleavings
    try:

        def hammer(seed: int) -> list[tuple[str, list[int]]]:
            seen = []
            for step in range(150):
                paper_id = papers[(seed * 7 + step * (seed + 1)) % len(papers)]
                ranking = retriever.rank(paper_id, question, "lexical")
                assert ranking is not None
                seen.append((paper_id, list(ranking.order)))
            return seen

        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(hammer, range(8)))
    finally:
        sys.setswitchinterval(switch)
    assert all(order == expected[paper_id] for seen in results for paper_id, order in seen)
    assert sum(len(seen) for seen in results) == 8 * 150
    assert len(retriever._lexical) <= 2


def test_lexical_tokens() -> None:
    assert tokenize("What do the Infections and viruses show in Table 2?") == [
        "infection",
        "virus",
        "show",
        "table",
        "2",
    ]
    assert approx_tokens("") == 0
    assert approx_tokens("one two three four five six seven eight nine ten") == 13


# --- structure: cited authors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("According to Wu et al., what was the incubation period?", [AuthorMention("Wu")]),
        ("What did Wu et al. (2019) report?", [AuthorMention("Wu", year="2019")]),
        ("What did Wu and Chen (2019) find?", [AuthorMention("Wu", "Chen", "2019")]),
        ("In Smith's study, how many patients were enrolled?", [AuthorMention("Smith")]),
        ("What did van der Berg et al. measure?", [AuthorMention("van der Berg")]),
        ("According to Müller, which gene is involved?", [AuthorMention("Müller")]),
        ("What causes Parkinson's disease?", []),
        ("According to the WHO, how many cases were reported?", []),
        ("What is shown in Table 2?", []),
    ],
)
def test_author_mentions(question: str, expected: list[AuthorMention]) -> None:
    assert list(dict.fromkeys(author_mentions(question))) == expected


REFERENCES = [
    ReferenceInfo(id="r1", authors=["Wu", "Chen"], year="2019"),
    ReferenceInfo(id="r2", authors=["Wu", "Li"], year="2015"),
    ReferenceInfo(id="r3", authors=["Chen", "Wu"], year="2019"),
    ReferenceInfo(id="r4", authors=["van der Berg", "Smith"], year="2010"),
    ReferenceInfo(id="r5", authors=["Müller"], year="2001"),
]


def test_matching_references_uses_first_author_then_year_and_second_author() -> None:
    assert matching_references([AuthorMention("Wu")], REFERENCES) == {"r1", "r2"}
    assert matching_references([AuthorMention("Wu", year="2015")], REFERENCES) == {"r2"}
    assert matching_references([AuthorMention("Wu", "Chen", "2019")], REFERENCES) == {"r1"}
    # A wrong year does not lose the author.
    assert matching_references([AuthorMention("Wu", year="1999")], REFERENCES) == {"r1", "r2"}
    assert matching_references([AuthorMention("Berg")], REFERENCES) == {"r4"}
    assert matching_references([AuthorMention("Muller")], REFERENCES) == {"r5"}
    assert matching_references([AuthorMention("Smith")], REFERENCES) == set()


CITING_PAPER = [
    (["Title"], "title", "Transmission dynamics of a novel coronavirus in hospital wards"),
    (
        INTRO,
        "paragraph",
        "The incubation period of the novel coronavirus was estimated at 5.2 days in an early analysis of "
        "hospital cases, and the incubation period determines how long contacts are quarantined.",
        {"ref_ids": ["r3"]},
    ),
    (
        INTRO,
        "paragraph",
        "Serial intervals were longer in households than in wards, which a follow-up report attributed to "
        "delayed testing.",
        {"ref_ids": ["r1"]},
    ),
    (
        INTRO,
        "paragraph",
        "Estimates of the incubation period of coronaviruses vary with how exposure windows are defined.",
        {"ref_ids": ["r2"]},
    ),
    (METHODS, "paragraph", "We reviewed the records of 120 patients admitted between January and March."),
]


def test_cited_author_pulls_the_citing_chunk_to_the_top(embedder: object) -> None:
    store = MemoryStore(embedder)
    store.put_paper(*build_paper("PMC2", CITING_PAPER, REFERENCES))
    question = "According to Wu and Chen (2019), what was the incubation period?"
    plain = make_retriever(store, embedder, structure_weight=0.0).retrieve("PMC2", question, budget_tokens=0)
    boosted = make_retriever(store, embedder).retrieve("PMC2", question, budget_tokens=0)
    # Dense + BM25 alone prefer the chunks that talk about the incubation period ...
    assert plain[0].chunk.chunk_id != "PMC2-c2"
    # ... but only chunk 2 cites Wu & Chen 2019 (r1).
    assert boosted[0].chunk.chunk_id == "PMC2-c2"
    # "Wu et al." without a year matches both Wu papers; both outrank the rest.
    top_two = make_retriever(store, embedder).retrieve("PMC2", "What do Wu et al. say about incubation?")
    assert {p.chunk.chunk_id for p in top_two[:2]} == {"PMC2-c2", "PMC2-c3"}


# --- structure: figure/table labels ----------------------------------------------------------------------


def test_label_keys_normalise_figure_and_supplementary_forms() -> None:
    figure3 = LabelKey("figure", False, "3")
    assert label_keys("What does Fig. 3 show?") == {figure3}
    assert label_keys("In Figure 3B, which group is larger?") == {figure3}
    assert label_keys("see figs 3") == {figure3}
    supp = LabelKey("table", True, "1")
    assert (
        label_keys("Supplementary Table S1")
        == label_keys("Table S1")
        == label_keys("Suppl. Table 1")
        == {supp}
    )
    assert label_keys("Table 2 and Figure 1") == {
        LabelKey("table", False, "2"),
        LabelKey("figure", False, "1"),
    }
    assert label_keys("What was the 2 fold change?") == set()


FLOAT_PAPER = [
    (["Title"], "title", "Weight loss in treated ferrets"),
    (
        RESULTS,
        "paragraph",
        "Figure 2 shows fever curves for all 3 groups; fever peaked on day 3 and was shown to end by day 5.",
    ),
    (
        RESULTS,
        "paragraph",
        "What is shown in the figures is consistent across 3 independent experiments, shown as means.",
    ),
    (["Floats"], "caption", "Body weight of ferrets over 14 days after infection.", {"label": "Figure 3"}),
    (["Floats"], "caption", "Fever curves of the three groups.", {"label": "Figure 2"}),
    (["Floats"], "table", "Strain | Dose | Route\nA/PR8 | 10^6 | intranasal", {"label": "Table S1"}),
]


def test_figure_and_table_labels_find_their_chunk(embedder: object) -> None:
    store = MemoryStore(embedder)
    store.put_paper(*build_paper("PMC3", FLOAT_PAPER))
    question = "What is shown in Fig. 3?"
    plain = make_retriever(store, embedder, structure_weight=0.0).retrieve("PMC3", question, budget_tokens=0)
    assert plain[0].chunk.chunk_id != "PMC3-c3"
    retriever = make_retriever(store, embedder)
    assert retriever.retrieve("PMC3", question)[0].chunk.chunk_id == "PMC3-c3"
    assert retriever.retrieve("PMC3", "Which figure 3 panel?")[0].chunk.chunk_id == "PMC3-c3"
    top = retriever.retrieve("PMC3", "Which dose is listed in Supplementary Table S1?")[0]
    assert top.chunk.chunk_id == "PMC3-c5"


# --- neighbours ------------------------------------------------------------------------------------------


def test_neighbours_same_section_within_budget(store: MemoryStore, embedder: object) -> None:
    retriever = make_retriever(store, embedder)
    question = "How much did compound K reduce viral titres?"
    chunks = store.get_chunks("PMC1")
    top = retriever.retrieve("PMC1", question, top_k=1, mode="dense", budget_tokens=10_000)
    assert top[0].chunk.ordinal == 5
    # Ordinal 4 is in Methods: only the Results neighbour (6) is attached.
    assert [c.ordinal for c in top[0].neighbours] == [6]

    own = approx_tokens(chunks[5].text)
    tight = retriever.retrieve("PMC1", question, top_k=1, mode="dense", budget_tokens=own + 1)
    assert tight[0].neighbours == []
    assert retriever.retrieve("PMC1", question, top_k=1, mode="dense", budget_tokens=0)[0].neighbours == []


def test_neighbours_are_not_repeated_and_follow_rank_order(store: MemoryStore, embedder: object) -> None:
    retriever = make_retriever(store, embedder)
    passages = retriever.retrieve("PMC1", "influenza antiviral drugs", top_k=2, budget_tokens=10_000)
    retrieved = {p.chunk.chunk_id for p in passages}
    attached = [c.chunk_id for p in passages for c in p.neighbours]
    assert not retrieved & set(attached)
    assert len(attached) == len(set(attached))
    for passage in passages:
        for neighbour in passage.neighbours:
            assert abs(neighbour.ordinal - passage.chunk.ordinal) == 1
            assert neighbour.section_path == passage.chunk.section_path


def test_default_budget_is_context_tokens(embedder: object) -> None:
    filler = " ".join(["the ferrets were observed daily in their cages"] * 5)  # 40 words, 52 tokens
    topics = ["Weight loss was mild.", "Fever peaked on day three.", "Viral titres fell sharply.", "Cough."]
    store = MemoryStore(embedder)
    store.put_paper(*build_paper("PMC4", [(RESULTS, "paragraph", f"{t} {filler}") for t in topics]))
    question = "On which day did fever peak?"

    def retrieve(context_tokens: int) -> list:
        settings = Settings(top_k=1, context_tokens=context_tokens)
        return Retriever(store, embedder, settings).retrieve("PMC4", question, mode="dense")

    assert retrieve(64)[0].chunk.ordinal == 1
    assert retrieve(64)[0].neighbours == []  # 56 tokens of passage, no room for a 52-token neighbour
    assert [c.ordinal for c in retrieve(120)[0].neighbours] == [2]  # the following chunk first
    assert [c.ordinal for c in retrieve(200)[0].neighbours] == [0, 2]


# --- library ---------------------------------------------------------------------------------------------


def test_retriever_over_the_real_store(embedder: object, open_store: Callable[..., Any]) -> None:
    store = open_store()
    store.put_paper(*build_paper("PMC1", VIRUS_PAPER), embedder)
    store.put_paper(*build_paper("PMC3", FLOAT_PAPER), embedder)
    retriever = Retriever(store, embedder, Settings(top_k=3))
    assert retriever.retrieve("PMC1", "How much did compound K reduce viral titres?")[0].chunk.ordinal == 5
    assert retriever.retrieve("PMC3", "What is shown in Fig. 3?")[0].chunk.label == "Figure 3"
    hits = retriever.search_library("compound K reduced viral titres in nasal washes", k=2)
    assert hits[0].chunk.chunk_id == "PMC1-c5"


def test_search_library_spans_papers(embedder: object) -> None:
    store = MemoryStore(embedder)
    store.put_paper(*build_paper("PMC1", VIRUS_PAPER))
    store.put_paper(*build_paper("PMC3", FLOAT_PAPER))
    retriever = make_retriever(store, embedder)
    passages = retriever.search_library("compound K reduced viral titres in nasal washes", k=4)
    assert len(passages) == 4
    assert passages[0].chunk.chunk_id == "PMC1-c5"
    assert [p.rank for p in passages] == [1, 2, 3, 4]
    assert passages[0].dense_score == passages[0].score


# --- `pmcqa search` --------------------------------------------------------------------------------------


class LibraryMemoryStore(MemoryStore):
    """The stand-in with what the service facade also reads: ingest statuses and id aliases (none here)."""

    def get_status(self, paper_id: str) -> None:
        return None

    def resolve_alias(self, alias: str) -> None:
        return None


@pytest.fixture
def cli_store(embedder: object, monkeypatch: pytest.MonkeyPatch) -> MemoryStore:
    store = LibraryMemoryStore(embedder)
    store.put_paper(*build_paper("PMC1", VIRUS_PAPER))
    store.put_paper(*build_paper("PMC3", FLOAT_PAPER))
    settings = Settings(top_k=3)
    retriever = Retriever(store, embedder, settings)
    monkeypatch.setattr(search_command, "open_library", lambda: Library(settings, store, embedder, retriever))
    return store


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["search", *args])
    return result.exit_code, result.stdout


def test_cli_search_one_paper_json(cli_store: MemoryStore) -> None:
    code, out = run_cli(
        "How much did compound K reduce viral titres?", "--paper", "PMC1", "-k", "2", "--json"
    )
    assert code == 0
    result = json.loads(out)
    assert result["paper_id"] == "PMC1"
    assert [p["chunk_id"] for p in result["passages"]][0] == "PMC1-c5"
    assert len(result["passages"]) == 2
    assert set(result["passages"][0]) == set(SearchHit.model_fields)  # the same hit as POST /search
    first = result["passages"][0]
    assert set(first) >= {"chunk_id", "section", "text", "score", "start", "end"}
    assert first["section"] == "Results"


def test_cli_search_library_and_table(cli_store: MemoryStore) -> None:
    code, out = run_cli("body weight of ferrets over 14 days", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["paper_id"] is None
    assert {p["paper_id"] for p in result["passages"]} <= {"PMC1", "PMC3"}
    code, out = run_cli("body weight of ferrets", "--paper", "PMC3", "--mode", "lexical")
    assert code == 0 and "PMC3" in out
    # the service's refusal, with the same exit code as `pmcqa ask` (it was 2, a usage error, before)
    assert run_cli("x", "--paper", "PMC404")[0] == PaperNotFound.exit_code == 3
    assert run_cli("x", "--mode", "sparse")[0] == 2


def test_cli_batch_reports_bad_lines_and_goes_on(cli_store: MemoryStore, tmp_path: Path) -> None:
    queries = tmp_path / "q.jsonl"
    queries.write_text(
        "\n".join(
            [
                json.dumps({"paper_id": "PMC1", "query": "Which cells were used for titration?"}),
                "{not json",
                json.dumps({"paper_id": "PMC404", "query": "anything"}),
                json.dumps({"paper_id": "PMC1"}),
                "",
                json.dumps({"query": "fever curves of the three groups"}),
            ]
        )
    )
    code, out = run_cli("--queries", str(queries), "--json")
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 5
    assert lines[0]["passages"][0]["chunk_id"] == "PMC1-c4"
    assert lines[1]["line"] == 2 and "not JSON" in lines[1]["error"]
    assert lines[2]["line"] == 3 and "not in the library" in lines[2]["error"]
    assert lines[3]["line"] == 4 and "query" in lines[3]["error"]
    assert lines[4]["paper_id"] is None and lines[4]["passages"]


def test_cli_batch_goes_on_past_text_no_utf8_can_carry(cli_store: MemoryStore, tmp_path: Path) -> None:
    queries = tmp_path / "q.jsonl"
    queries.write_bytes(
        b'{"query": "\\ud800 lone surrogate"}\n'  # valid JSON naming a lone surrogate
        b'{"query": "fever \xff curves"}\n'  # a byte that is not UTF-8
        b'{"query": "fever curves of the three groups"}\n'
    )
    code, out = run_cli("--queries", str(queries), "--json")
    assert code == 0, out
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line.get("line") for line in lines] == [1, 2, None]
    assert all("not valid Unicode" in line["error"] for line in lines[:2])
    assert lines[2]["passages"]

