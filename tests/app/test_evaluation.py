"""Retrieval evaluation: SQuAD/JSONL loading, COVID-QA contexts as Papers, metric arithmetic, a real run."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from pmcqa.app.evaluation import (
    build_store,
    context_hit_rate,
    context_to_paper,
    evaluate,
    load_eval_set,
    load_squad,
    run_evaluation,
    score_ranking,
)
from pmcqa.core.settings import Settings
from pmcqa.index.models import Chunk
from pmcqa.index.retrieval import Retriever, approx_tokens

HEADER = (
    "https://www.ncbi.nlm.nih.gov/pmc/articles/PMC1234567/\n\nSHA: abc\n\n"
    "Authors: Doe, Jane; Roe, Rick\nDate: 2020-01-01\nDOI: 10.1/x\nLicense: cc-by"
)


def words(text: str, *, pad_front: bool = False) -> str:
    """A 20-word paragraph (26 approximate tokens): the text padded with neutral filler."""
    tokens = text.split()
    filler = (
        "lorem ipsum dolor sit amet consectetur adipiscing elit sed eiusmod tempor incididunt labore magna"
    )
    pad = filler.split()[: 20 - len(tokens)]
    return " ".join(pad + tokens if pad_front else tokens + pad)


# Article A: q1 answered by the paragraph it names; q2's answer crosses a paragraph (= chunk) boundary.
PARA_A1 = words("Text: Ferrets infected with strain alpha developed fever within two days")
PARA_A2 = words("The ferret colony was housed at the zoology campus until spring", pad_front=True)
PARA_A3 = words("summer when new cages arrived for every ferret in the colony")
CONTEXT_A = "\n\n".join(
    ["Ferret fever", HEADER, "Abstract: A study of ferret fever and housing.", PARA_A1, PARA_A2, PARA_A3]
)
# Article B: q3 answered at rank 1; q4's answer sits in the paragraph BM25 ranks second.
PARA_B1 = words("Text: Remdesivir lowered viral load in hamsters by tenfold")
PARA_B2 = words("Hamsters hamsters hamsters hamsters weight weight recorded daily with scales")
PARA_B3 = words("Body weight of hamsters recovered after eight days")
CONTEXT_B = "\n\n".join(["Hamster drugs", PARA_B1, PARA_B2, PARA_B3])


def qa(qid: str, question: str, answer: str, context: str) -> dict[str, Any]:
    return {
        "id": qid,
        "question": question,
        "answers": [{"text": answer, "answer_start": context.index(answer)}],
    }


SQUAD = {
    "data": [
        {
            "paragraphs": [
                {
                    "document_id": 11,
                    "context": CONTEXT_A,
                    "qas": [
                        qa(
                            "q1",
                            "What did ferrets infected with strain alpha develop?",
                            "fever within two days",
                            CONTEXT_A,
                        ),
                        qa("q2", "Where was the colony housed?", "campus until spring\n\nsummer", CONTEXT_A),
                    ],
                }
            ]
        },
        {
            "paragraphs": [
                {
                    "document_id": 12,
                    "context": CONTEXT_B,
                    "qas": [
                        qa("q3", "What did remdesivir lower in hamsters?", "viral load", CONTEXT_B),
                        qa("q4", "When did the weight of hamsters recover?", "after eight days", CONTEXT_B),
                    ],
                }
            ]
        },
    ]
}


@pytest.fixture
def squad_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(SQUAD))
    return path


def test_context_becomes_a_paper_with_the_same_text() -> None:
    paper = context_to_paper(CONTEXT_A + "\n\n\n\ntrailing paragraph")
    assert paper.canonical_text == CONTEXT_A + "\n\n\n\ntrailing paragraph"
    assert paper.pmcid == "PMC1234567"
    assert paper.title == "Ferret fever"
    kinds = [(b.kind, b.section_path) for b in paper.blocks]
    assert kinds[0] == ("title", ["Title"])
    assert kinds[1:4] == [("paragraph", ["Metadata"])] * 3
    assert kinds[4] == ("abstract", ["Abstract"])
    assert all(kind == ("paragraph", ["Body"]) for kind in kinds[5:])


def test_load_squad_ids_and_limit(squad_file: Path) -> None:
    eval_set = load_squad(squad_file, "tiny")
    assert [pid for pid, _ in eval_set.papers] == ["PMC1234567", "COVIDQA-12"]
    assert [q.qid for q in eval_set.questions] == ["q1", "q2", "q3", "q4"]
    limited = load_squad(squad_file, limit=3)
    assert len(limited.questions) == 3 and len(limited.papers) == 2
    assert len(load_squad(squad_file, limit=1).papers) == 1


def test_load_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    rows = [
        {"paper_id": "PMC1", "question": "a?", "answers": ["x", {"text": "y"}]},
        {"paper_id": "PMC2", "question": "b?", "answer": "z"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    eval_set = load_eval_set(path)
    assert [(q.paper_id, q.answers) for q in eval_set.questions] == [("PMC1", ["x", "y"]), ("PMC2", ["z"])]
    assert eval_set.papers == []


def test_jsonl_ids_are_canonical_and_answers_a_list(tmp_path: Path) -> None:
    path = tmp_path / "q.JSONL"  # any case of the suffix
    path.write_text(json.dumps({"paper_id": "pmc1790863", "question": "a?", "answers": "zebrafish liver"}))
    (question,) = load_eval_set(path).questions
    assert question.paper_id == "PMC1790863"  # one paper, however spelled
    assert question.answers == ["zebrafish liver"]  # one answer, not one per character


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ('["PMC1", "q"]', "line 2: expected a JSON object"),
        ('{"paper_id": "PMC1"}', "line 2: 'question' must be a non-empty string"),
        ('{"paper_id": "PMC1", "question": "q", "answers": 3}', "line 2: 'answers' must be a list"),
        ('{"paper_id": "banana!", "question": "q"}', "line 2: not a paper id"),
        ('{"paper_id": "PMC1", "question": "q"', "line 2: Expecting"),
    ],
)
def test_a_malformed_jsonl_line_names_the_line(tmp_path: Path, line: str, says: str) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text('{"paper_id": "PMC1", "question": "ok?"}\n' + line + "\n")
    with pytest.raises(ValueError, match=re.escape(f"q.jsonl {says}")):
        load_eval_set(path)


@pytest.mark.parametrize("content", ["[]", '{"data": null}', '{"data": [{"no": "paragraphs"}]}'])
def test_json_that_is_not_squad_is_a_value_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "q.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="not a SQuAD file"):
        load_eval_set(path)


def chunk(cid: str, text: str) -> Chunk:
    return Chunk(chunk_id=cid, paper_id="P", ordinal=0, kind="paragraph", text=text, start=0, end=len(text))


def test_score_ranking_budgets_and_rank() -> None:
    ranked = [chunk("a", "x " * 10), chunk("b", "the  gold\nanswer here"), chunk("c", "gold answer again")]
    normalised = {c.chunk_id: " ".join(c.text.split()).casefold() for c in ranked}
    tokens = {"a": 13, "b": 6, "c": 4}
    first, hits = score_ranking(ranked, [" Gold answer "], normalised, tokens, budgets=(13, 18, 19, 100))
    assert first == 2
    # 13 tokens hold only "a"; "b" needs 19 in all.
    assert hits == {13: False, 18: False, 19: True, 100: True}
    assert score_ranking(ranked, ["absent"], normalised, tokens, budgets=(100,)) == (None, {100: False})


@pytest.fixture
def tiny_store(squad_file: Path, tmp_path: Path, embedder: Any) -> Any:
    settings = Settings(data_dir=tmp_path / "eval", chunk_min_tokens=0)
    store = build_store(load_squad(squad_file), settings, embedder, "test")
    yield store
    store.close()


def test_metric_arithmetic_on_a_tiny_squad_file(tiny_store: Any, squad_file: Path, embedder: Any) -> None:
    # One chunk per paragraph (chunk_min_tokens=0), each body paragraph 26 approximate tokens.
    assert all(approx_tokens(p) == 26 for p in (PARA_A1, PARA_A2, PARA_A3, PARA_B1, PARA_B2, PARA_B3))
    retriever = Retriever(tiny_store, embedder, Settings())
    questions = load_squad(squad_file).questions
    report = evaluate(retriever, questions, ["lexical", "dense", "hybrid"], budgets=(20, 30, 60))
    data = report.as_dict()
    assert (data["questions"], data["papers"]) == (4, 2)
    assert (data["answer_in_a_chunk"], data["answer_crosses_chunks"]) == (3, 1)

    lexical = data["modes"]["lexical"]
    # q1, q3 at rank 1; q2 nowhere (crosses chunks); q4 at rank 2 (PARA_B2 repeats "hamsters"/"weight").
    assert lexical["mrr"] == pytest.approx((1 + 0 + 1 + 0.5) / 4)
    assert (lexical["r@1"], lexical["r@5"]) == (0.5, 0.75)
    # 20 tokens hold no passage, 30 hold one, 60 hold two.
    assert (lexical["hit@20"], lexical["hit@30"], lexical["hit@60"]) == (0.0, 0.5, 0.75)
    for mode in ("dense", "hybrid"):
        row = data["modes"][mode]
        assert row["questions"] == 4
        assert row["hit@60"] <= 0.75  # never above the ceiling of 3 answerable questions
    # Questions on papers the store lacks are counted as misses.
    orphan = [questions[0].__class__("q5", "PMC404", "anything?", ["x"])]
    assert evaluate(retriever, questions + orphan, ["lexical"]).as_dict()["modes"]["lexical"]["mrr"] == (
        pytest.approx(2.5 / 5)
    )


def test_neighbours_recover_an_answer_across_a_chunk_boundary_only_when_merged(
    tiny_store: Any, squad_file: Path, embedder: Any
) -> None:
    questions = [q for q in load_squad(squad_file).questions if q.qid == "q2"]
    with_neighbours = Retriever(tiny_store, embedder, Settings())
    without = Retriever(tiny_store, embedder, Settings(), neighbour_offsets=())
    # The crossing answer is inside PARA_A2 + PARA_A3 merged, and nowhere else.
    assert context_hit_rate(with_neighbours, questions, budget=60, neighbour_share=0.5) == 1.0
    assert context_hit_rate(without, questions, budget=60, neighbour_share=0.5) == 0.0


@pytest.mark.slow
def test_covid_qa_dev_three_articles(tmp_path: Path, embedder: Any, shared_data: Path) -> None:
    # shared_data skips the test with a reason when ../shared/data is absent (conftest.shared_path's rule).
    dev = shared_data / "covid-qa/dev.json"
    if not dev.is_file():
        pytest.skip(f"shared test data not found: {dev}")
    data = json.loads(dev.read_text())
    keep = {1545, 1550, 2459}  # the three shortest dev articles (42 questions)
    subset = {"data": [a for a in data["data"] if a["paragraphs"][0]["document_id"] in keep]}
    assert len(subset["data"]) == 3
    path = tmp_path / "dev3.json"
    path.write_text(json.dumps(subset))

    report = run_evaluation(path, Settings(data_dir=tmp_path / "user"), embedder=embedder)
    data = report.as_dict()
    assert data["questions"] == 42 and data["papers"] == 3
    assert not (tmp_path / "user").exists()  # the user's library is never touched
    assert data["answer_in_a_chunk"] >= 40  # COVID-QA answers are short spans; few cross chunks
    modes = data["modes"]
    for budget in ("hit@512", "hit@1024", "hit@2048"):
        assert modes["hybrid"][budget] >= min(modes["dense"][budget], modes["lexical"][budget])
    for mode in modes.values():
        # Budgets are nested, so the hit rate never falls as the budget grows ...
        assert mode["hit@512"] <= mode["hit@1024"] <= mode["hit@2048"] <= data["ceiling"]
        # ... and retrieval is far better than chance (a random chunk order gives MRR ≈ 0.15 here).
        assert mode["mrr"] > 0.4


def test_eval_store_keeps_papers_of_this_chunker_and_rechunks_the_others(
    squad_file: Path, tmp_path: Path, embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pmcqa.ingest.chunking as chunking
    from pmcqa.index.store import Store

    settings = Settings(data_dir=tmp_path / "eval", chunk_min_tokens=0)
    eval_set = load_squad(squad_file)
    build_store(eval_set, settings, embedder, "test").close()
    stored: list[str] = []
    put_papers = Store.put_papers

    def spy(self: Store, items: Any, encoder: Any) -> None:
        items = list(items)
        stored.extend(record.paper_id for record, *_ in items)
        put_papers(self, items, encoder)

    monkeypatch.setattr(Store, "put_papers", spy)
    build_store(eval_set, settings, embedder, "test").close()
    assert stored == []  # same chunker, same text: nothing is re-chunked
    monkeypatch.setattr(chunking, "CHUNKER_VERSION", chunking.CHUNKER_VERSION + 1)
    store = build_store(eval_set, settings, embedder, "test")
    try:
        assert sorted(stored) == sorted(paper_id for paper_id, _ in eval_set.papers)
        assert all(store.get_paper(p).chunking.version == chunking.CHUNKER_VERSION for p in stored)
    finally:
        store.close()
