"""`finalize`: only verbatim, retrieved spans leave the service."""

from __future__ import annotations

import pytest

from pmcqa.app.answering.base import CitedSpan, Draft
from pmcqa.app.answering.citations import finalize, locate_quote
from pmcqa.core.settings import Settings
from pmcqa.index.models import Chunk, PaperRecord, Passage

TEXT = (
    "Title of the paper\n\n"
    "Spo0A is the key regulator of sporulation.  It binds\n  DNA with high affinity.\n\n"
    "Toxins A and B are the main virulence factors.\n\n"
    "Unretrieved paragraph about something else."
)


def _chunk(n: int, text: str, section: str) -> Chunk:
    start = TEXT.index(text)
    return Chunk(
        chunk_id=f"c{n}",
        paper_id="PMC1",
        ordinal=n,
        section_path=[section],
        kind="paragraph",
        text=text,
        start=start,
        end=start + len(text),
    )


PAPER = PaperRecord(paper_id="PMC1", title="Title of the paper", text=TEXT)
C1 = _chunk(1, "Spo0A is the key regulator of sporulation.  It binds\n  DNA with high affinity.", "Intro")
C2 = _chunk(2, "Toxins A and B are the main virulence factors.", "Results")
C3 = _chunk(3, "Unretrieved paragraph about something else.", "Discussion")
PASSAGES = [Passage(chunk=C1, score=1.0, rank=1, neighbours=[C2])]


def _final(*spans: CitedSpan, abstained: bool = False):
    return finalize(Draft(answer="x", cited=list(spans), abstained=abstained), PAPER, PASSAGES)


def _verbatim(citation) -> bool:
    return PAPER.text[citation.start : citation.end] == citation.quote


def test_exact_quote_is_located_in_its_chunk():
    (citation,) = _final(CitedSpan(chunk_id="c1", quote="the key regulator of sporulation"))
    assert _verbatim(citation)
    assert citation.quote == "the key regulator of sporulation"
    assert citation.section == "Intro"
    assert C1.start <= citation.start < citation.end <= C1.end


def test_whitespace_insensitive_match_maps_back_to_exact_offsets():
    # The model re-flowed the line break and the double space; the citation keeps the paper's own text.
    (citation,) = _final(CitedSpan(chunk_id="c1", quote="sporulation. It binds DNA with high affinity."))
    assert _verbatim(citation)
    assert citation.quote == "sporulation.  It binds\n  DNA with high affinity."


def test_offsets_that_match_the_quote_are_kept():
    start = TEXT.index("Toxins A and B")
    span = CitedSpan(chunk_id="c2", quote="Toxins A and B", start=start, end=start + 14)
    (citation,) = _final(span)
    assert (citation.start, citation.end, citation.quote) == (start, start + 14, "Toxins A and B")


def test_wrong_offsets_fall_back_to_locating_the_quote():
    (citation,) = _final(CitedSpan(chunk_id="c2", quote="main virulence factors", start=0, end=5))
    assert _verbatim(citation)
    assert citation.quote == "main virulence factors"


def test_offsets_without_quote_must_lie_inside_the_chunk():
    assert _final(CitedSpan(chunk_id="c2", start=0, end=10)) == []
    (citation,) = _final(CitedSpan(chunk_id="c2", start=C2.start, end=C2.start + 6))
    assert citation.quote == "Toxins"


def test_span_without_quote_or_offsets_cites_the_whole_chunk():
    (citation,) = _final(CitedSpan(chunk_id="c2"))
    assert citation.quote == C2.text and _verbatim(citation)


def test_neighbour_chunks_may_be_cited_but_unretrieved_chunks_are_dropped():
    assert len(_final(CitedSpan(chunk_id="c2", quote="Toxins A and B"))) == 1  # neighbour of a passage
    assert _final(CitedSpan(chunk_id="c3", quote="Unretrieved paragraph")) == []  # exists, not retrieved
    assert _final(CitedSpan(chunk_id="nope", quote="Toxins A and B")) == []


def test_invented_quotes_are_dropped():
    assert _final(CitedSpan(chunk_id="c1", quote="Spo0A is irrelevant to sporulation")) == []
    # Text of the paper, but not of the cited chunk, is not accepted either.
    assert _final(CitedSpan(chunk_id="c1", quote="Toxins A and B")) == []
    assert _final(CitedSpan(chunk_id="c1", quote="   ")) == []


def test_duplicates_collapse_and_order_is_kept():
    citations = _final(
        CitedSpan(chunk_id="c2", quote="Toxins A and B"),
        CitedSpan(chunk_id="c1", quote="Spo0A"),
        CitedSpan(chunk_id="c2", quote="Toxins A and B"),
    )
    assert [c.quote for c in citations] == ["Toxins A and B", "Spo0A"]


def test_abstained_draft_has_no_citations():
    assert _final(CitedSpan(chunk_id="c1", quote="Spo0A"), abstained=True) == []


def test_chunk_whose_offsets_drifted_from_the_paper_text_is_not_trusted():
    drifted = C2.model_copy(update={"start": C2.start + 3, "end": C2.end + 3})
    passages = [Passage(chunk=drifted, score=1.0, rank=1)]
    draft = Draft(answer="x", cited=[CitedSpan(chunk_id="c2", quote="Toxins A and B")])
    assert finalize(draft, PAPER, passages) == []


def test_locate_quote_returns_none_for_absent_text():
    assert locate_quote("not there", C1) is None


def test_running_text_citations_have_no_label():
    (citation,) = _final(CitedSpan(chunk_id="c1", quote="Spo0A"))
    assert citation.label is None and citation.place == "Intro"


def test_citation_of_a_real_table_names_its_label_and_section(shared_data):
    # pmed.1001518 Table 1, chunked as ingest chunks it (whitespace words stand in for the tokenizer).
    from pmcqa.ingest.chunking import TokenCounter, chunk_paper, chunking_params, to_record
    from pmcqa.ingest.jats import parse_jats

    path = shared_data / "jats/allofplos/allofplos/starter_corpus/journal.pmed.1001518.xml"
    if not path.is_file():
        pytest.skip(f"shared JATS file not found: {path}")
    (paper,) = parse_jats(path.read_bytes())
    params = chunking_params(Settings())
    chunks = chunk_paper(paper, "PMC1", TokenCounter("words", lambda text: len(text.split())), params)
    record = to_record(paper, "PMC1", params, None)
    quote = "Age: Mean (SD); Acupuncture + Usual Care: 43·4 (13·24)"
    table = next(c for c in chunks if quote in c.text)
    assert table.kind == "table" and table.label == "Table 1"
    passages = [Passage(chunk=table, score=1.0, rank=1)]
    draft = Draft(answer="x", cited=[CitedSpan(chunk_id=table.chunk_id, quote=quote)])
    (citation,) = finalize(draft, record, passages)
    assert citation.quote == quote and record.text[citation.start : citation.end] == quote
    assert citation.label == "Table 1"
    assert citation.section == table.section and citation.section  # the section path, as for any chunk
    assert citation.place == f"{table.section} > Table 1"


def test_ask_over_http_cites_a_real_table_by_its_label_and_section(client):
    # The xmrv paper (journal.pone.0008519) as ingested from ../shared/data/jats: its primers are in Table 1.
    question = "What is the sequence of the XMRV forward outer primer?"
    response = client.post("/ask", json={"paper_id": "PMC2795199", "question": question})
    assert response.status_code == 200, response.text
    body = response.json()
    tables = [c for c in body["citations"] if c["label"] == "Table 1"]
    assert tables, body["citations"]
    assert tables[0]["section"] == "Methods > Patients > PCR detection of XMRV and MLV sequences"
    assert "CATTCTGTATCAGTTAACCTAC" in tables[0]["quote"]
