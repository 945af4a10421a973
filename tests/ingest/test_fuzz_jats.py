"""Property-based fuzzing of the JATS parser and the chunker over mutated real articles (hypothesis).

Each case takes a small real article from ../shared/data/jats and applies a few mutations: truncation,
random bytes, deleted, swapped and moved elements, deep nesting, huge table spans, many distinct element
names, inserted fragments (MathML, lists, tables) and duplicated subtrees. For every case:

- `parse_jats` returns papers or raises `JatsError` (its documented error, a ValueError); nothing else;
- time and traced memory stay bounded (generous limits: they catch blow-ups, not drift);
- every chunk's ``[start, end)`` slices the paper's canonical text to exactly its text, in order, within
  the token budget (bar one unsplittable word).

Hypothesis runs derandomized and without an example database, so every run (and CI) sees the same cases.
"""

from __future__ import annotations

import copy
import os
import time
import tracemalloc
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from pmcqa.core.settings import Settings
from pmcqa.index.models import Chunk, ChunkingParams
from pmcqa.ingest.chunking import CHUNKER_VERSION, TokenCounter, chunk_paper, load_token_counter
from pmcqa.ingest.jats import JatsError, parse_jats
from pmcqa.ingest.models import Paper
from pmcqa.ingest.xml import parse_xml

SHARED_JATS = (
    Path(os.environ.get("PMCQA_SHARED_DIR", Path(__file__).resolve().parents[3] / "shared")) / "data/jats"
)
# Small, varied real articles: a boxed-text eLife insight, nested PLOS sections, a PLOS table, eLife
# decision letter and author response (sub-articles).
SEEDS = (
    "elife-tools/elife07586.xml",
    "allofplos/allofplos/starter_corpus/journal.pbio.1001044.xml",
    "allofplos/allofplos/starter_corpus/journal.pmed.0030445.xml",
    "elife-tools/elife06003.xml",
)
MATHML = 'xmlns:mml="http://www.w3.org/1998/Math/MathML"'
FRAGMENTS = (
    "<inline-formula><alternatives><tex-math>\\alpha+1</tex-math>"
    f"<mml:math {MATHML}><mml:mi>a</mml:mi><mml:mo>+</mml:mo><mml:mn>1</mml:mn></mml:math>"
    "</alternatives></inline-formula>",
    '<disp-formula id="e1"><label>(1)</label>'
    "<math><mrow><mi>x</mi><mo>=</mo><mn>2</mn></mrow></math></disp-formula>",
    "<list><list-item><p>one</p><list><list-item><p>nested</p></list-item></list></list-item></list>",
    '<table-wrap id="tx"><label>Table X</label><table><thead>'
    '<tr><th rowspan="2">G</th><th colspan="2">O</th></tr><tr><th>d</th><th>a</th></tr></thead>'
    "<tbody><tr><td>t</td><td>1</td><td>2</td></tr></tbody></table></table-wrap>",
    "<sec><title>Inserted</title><p>A sentence. Another one, e.g. this.</p>"
    "<boxed-text><p>Box.</p></boxed-text></sec>",
    '<p>Cite <xref ref-type="bibr" rid="B1 B2">1,2</xref> and '
    '<fig id="fx"><caption><p>Legend.</p></caption></fig></p>',
    '<sub-article article-type="reply"><front-stub><title-group><article-title>Reply</article-title>'
    "</title-group></front-stub><body><p>Response text.</p></body></sub-article>",
)
SPAN_BOMB = '<table><tr><td rowspan="200" colspan="200">x</td></tr><tr><td rowspan="0">y</td></tr></table>'
WRAPPERS = (
    "sec",
    "italic",
    "p",
    "boxed-text",
    "list",
    "list-item",
    "disp-quote",
    "td",
    "inline-formula",
    "math",
)
SPAN_VALUES = ("0", "1", "2", "200", "1000000", "-5", "x", "\u00b2", " 3 ", "99999999999999999999")
NAME_CHARS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_.0123456789", min_size=0, max_size=12)
MAX_TOKENS = 64
PARAMS = ChunkingParams(version=CHUNKER_VERSION, tokenizer="fuzz", max_tokens=MAX_TOKENS, min_tokens=16)
# Per case, parse and chunk together: seconds, and traced Python memory beyond a fixed allowance.
TIME_LIMIT_S = 20.0
MEMORY_BASE = 48_000_000
MEMORY_PER_INPUT_BYTE = 200

FUZZ_SETTINGS = settings(
    derandomize=True,
    database=None,
    deadline=timedelta(seconds=60),  # the per-case TIME_LIMIT_S assertion is the real bound
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


@pytest.fixture(scope="module")
def seeds() -> list[bytes]:
    missing = [name for name in SEEDS if not (SHARED_JATS / name).is_file()]
    if missing:
        pytest.skip(
            f"shared JATS seeds not found under {SHARED_JATS} (expected ../shared/data beside the checkout)"
        )
    return [(SHARED_JATS / name).read_bytes() for name in SEEDS]


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    return load_token_counter(Settings())


# --- mutations ---------------------------------------------------------------------------------------------


def _elements(root: etree._Element) -> list[etree._Element]:
    return [el for el in root.iter() if isinstance(el.tag, str) and el is not root]


def _pick(data: st.DataObject, items: list[etree._Element]) -> etree._Element:
    return items[data.draw(st.integers(0, len(items) - 1))]


def _is_inside(el: etree._Element, other: etree._Element) -> bool:
    return el is other or any(ancestor is other for ancestor in el.iterancestors())


def mutate_tree(data: st.DataObject, root: etree._Element) -> None:
    """One structural mutation of the parsed article, in place."""
    elements = _elements(root)
    if not elements:
        root.append(etree.fromstring(data.draw(st.sampled_from(FRAGMENTS))))
        return
    kind = data.draw(
        st.sampled_from(
            ["delete", "swap", "move", "wrap", "spans", "table", "names", "insert", "comment", "duplicate"]
        ),
        label="kind",
    )
    el = _pick(data, elements)
    if kind == "delete":
        el.getparent().remove(el)
    elif kind == "swap":
        other = _pick(data, elements)
        if not (_is_inside(el, other) or _is_inside(other, el)):
            marker = etree.Element("marker")
            el.addprevious(marker)
            other.addprevious(el)
            marker.addprevious(other)
            marker.getparent().remove(marker)
    elif kind == "move":
        target = _pick(data, elements)
        if not _is_inside(target, el):
            target.insert(data.draw(st.integers(0, len(target))), el)
    elif kind == "wrap":  # deep nesting: a chain of wrappers around an element
        # Around the parser's limit and far past it (libxml2 itself stops at 2048 levels).
        depth = data.draw(st.sampled_from([1, 3, 20, 60, 126, 127, 128, 129, 250, 600, 1500]), label="depth")
        names = data.draw(st.lists(st.sampled_from(WRAPPERS), min_size=1, max_size=3))
        outer = etree.Element(names[0])
        inner = outer
        for level in range(1, depth):
            inner = etree.SubElement(inner, names[level % len(names)])
        el.addprevious(outer)
        inner.append(el)
    elif kind == "spans":  # huge, odd or bogus spans on table cells (a span-bomb table if there are none)
        cells = [c for c in elements if etree.QName(c).localname in ("td", "th", "entry")]
        if not cells:
            el.append(etree.fromstring(SPAN_BOMB))
            cells = [c for c in el.iter("td")]
        for cell in cells[: data.draw(st.integers(1, 50))]:
            for attribute in ("rowspan", "colspan", "morerows"):
                if data.draw(st.booleans()):
                    cell.set(attribute, data.draw(st.sampled_from(SPAN_VALUES)))
    elif kind == "table":  # a generated hostile table: spans on every row, a long header over many rows
        rows = data.draw(st.sampled_from([1, 2, 30, 300, 1000]), label="rows")
        rowspan, colspan = data.draw(st.sampled_from(SPAN_VALUES)), data.draw(st.sampled_from(SPAN_VALUES))
        header = "H" * data.draw(st.sampled_from([0, 10, 1000, 20_000]), label="header")
        cell = f'<tr><td rowspan="{rowspan}" colspan="{colspan}">x</td></tr>'
        head = f"<thead><tr><th>{header}</th></tr></thead>"
        el.append(
            etree.fromstring(f"<table-wrap><table>{head}<tbody>{cell * rows}</tbody></table></table-wrap>")
        )
    elif kind == "names":  # many distinct element names, and renamed elements
        count = data.draw(st.sampled_from([1, 10, 2000]), label="names")
        prefix = data.draw(NAME_CHARS)
        for n in range(count):
            etree.SubElement(el, f"z{prefix}{n}").text = "w"
        for other in elements[: data.draw(st.integers(0, 20))]:
            other.tag = f"r{data.draw(NAME_CHARS)}"
    elif kind == "insert":
        fragment = etree.fromstring(data.draw(st.sampled_from(FRAGMENTS)))
        el.insert(data.draw(st.integers(0, len(el))), fragment)
    elif kind == "comment":  # the restricted-article marker, and a processing instruction, anywhere
        el.addprevious(etree.Comment(" The publisher of this article does not allow downloading "))
        el.insert(0, etree.ProcessingInstruction("pi", "data"))
    else:  # duplicate a subtree a few times next to itself
        for _ in range(data.draw(st.integers(1, 5))):
            el.addnext(copy.deepcopy(el))


def mutate_bytes(data: st.DataObject, raw: bytes) -> bytes:
    """Truncate the bytes, or overwrite or insert random bytes."""
    kind = data.draw(st.sampled_from(["truncate", "overwrite", "insert"]), label="bytes")
    if not raw:
        return raw
    at = data.draw(st.integers(0, len(raw) - 1), label="at")
    if kind == "truncate":
        return raw[:at]
    noise = data.draw(st.binary(min_size=1, max_size=64))
    return raw[:at] + noise + raw[at + (len(noise) if kind == "overwrite" else 0) :]


# --- properties --------------------------------------------------------------------------------------------


def assert_chunks_slice_the_text(paper: Paper, chunks: list[Chunk], counter: TokenCounter) -> None:
    text = paper.canonical_text
    for ordinal, chunk in enumerate(chunks):
        assert chunk.ordinal == ordinal
        assert 0 <= chunk.start < chunk.end <= len(text)
        assert text[chunk.start : chunk.end] == chunk.text
        assert chunk.text == chunk.text.strip()
        assert counter.count(chunk.text) <= MAX_TOKENS or len(chunk.text.split()) == 1
    assert all(a.end <= b.start for a, b in zip(chunks, chunks[1:], strict=False))


def parse_and_chunk(raw: bytes, counter: TokenCounter) -> list[tuple[Paper, list[Chunk]]]:
    """Parse and chunk one input within the time and memory limits; JatsError is the one allowed failure."""
    started = time.perf_counter()
    tracemalloc.start()
    try:
        try:
            papers = parse_jats(raw)
        except JatsError:
            papers = []
        results = [(paper, chunk_paper(paper, "PMC1", counter, PARAMS)) for paper in papers]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - started
    assert elapsed < TIME_LIMIT_S, f"{elapsed:.1f} s for {len(raw)} bytes"
    assert peak < MEMORY_BASE + MEMORY_PER_INPUT_BYTE * len(raw), f"{peak} bytes traced for {len(raw)} bytes"
    for paper, chunks in results:
        assert_chunks_slice_the_text(paper, chunks, counter)
    return results


@settings(FUZZ_SETTINGS, max_examples=200)
@given(data=st.data())
def test_mutated_articles_parse_or_fail_cleanly_and_chunk_verbatim(
    data: st.DataObject, seeds: list[bytes], counter: TokenCounter
) -> None:
    root = parse_xml(data.draw(st.sampled_from(seeds), label="seed"))
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        mutate_tree(data, root)
    raw = etree.tostring(root)
    if data.draw(st.integers(0, 3), label="damage bytes too") == 3:  # a quarter: most damage is fatal
        raw = mutate_bytes(data, raw)
    parse_and_chunk(raw, counter)


@settings(FUZZ_SETTINGS, max_examples=60)
@given(data=st.data())
def test_damaged_bytes_parse_or_fail_cleanly(
    data: st.DataObject, seeds: list[bytes], counter: TokenCounter
) -> None:
    raw = data.draw(st.sampled_from(seeds), label="seed")
    for _ in range(data.draw(st.integers(1, 3), label="damages")):
        raw = mutate_bytes(data, raw)
    parse_and_chunk(raw, counter)


def test_unmutated_seeds_parse_and_chunk(seeds: list[bytes], counter: TokenCounter) -> None:
    # The fuzz cases start from articles that work: each parses to one paper with chunks.
    for raw in seeds:
        [(paper, chunks)] = parse_and_chunk(raw, counter)
        assert paper.full_text and len(chunks) > 3
