"""Answer evaluation: SQuAD answer metrics, citation checks, calibration arithmetic, and real end-to-end runs
(a SQuAD file in a store of its own, a JSONL against the library, the CLI)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import make_settings
from test_evaluation import SQUAD
from typer.testing import CliRunner

from pmcqa.app.answer_evaluation import (
    check_citations,
    contains_gold,
    exact_match,
    normalize_answer,
    other_papers,
    reliability,
    run_answer_evaluation,
    token_f1,
)
from pmcqa.app.answering.base import Answer, Citation
from pmcqa.app.evaluation import EvalQuestion
from pmcqa.core.settings import Settings
from pmcqa.index.models import Chunk, PaperRecord, Passage


def test_squad_normalisation_and_scores() -> None:
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert exact_match("the cat sat.", "Cat sat") == 1.0
    assert token_f1("a cat sat on the mat", "the cat sat") == pytest.approx(2 * (2 / 4) * 1 / (2 / 4 + 1))
    assert token_f1("dog", "cat") == 0.0
    assert contains_gold("We saw that 21% of adults (n = 40) recovered.", ["22% of adults", "x"]) is False
    # Punctuation goes before matching: "21 %" and "21%" are the same answer.
    assert contains_gold("We saw that 21% of adults recovered.", ["21 % of Adults"]) is True
    assert contains_gold("concatenated", ["cat"]) is False  # whole words only


def test_reliability_table_and_ece() -> None:
    ece, rows = reliability([0.15, 0.15, 0.85, 0.95], [False, True, True, True], bins=10)
    assert [(r["bin"], r["count"]) for r in rows] == [("0.1-0.2", 2), ("0.8-0.9", 1), ("0.9-1.0", 1)]
    # |0.15 - 0.5| * 2/4 + |0.85 - 1| * 1/4 + |0.95 - 1| * 1/4
    assert ece == pytest.approx(0.35 * 0.5 + 0.15 * 0.25 + 0.05 * 0.25, abs=1e-4)
    assert reliability([], []) == (None, [])


def test_check_citations_finds_each_kind_of_bad_citation() -> None:
    text = "Alpha beta gamma. Delta epsilon."
    chunk = Chunk(chunk_id="c1", paper_id="P", ordinal=0, kind="paragraph", text=text, start=0, end=len(text))
    paper = PaperRecord(paper_id="P", text=text)
    passages = [Passage(chunk=chunk, score=1.0, rank=1)]

    def answer(*citations: Citation) -> Answer:
        return Answer(
            paper_id="P",
            question="q",
            answer="a",
            steps=[],
            citations=list(citations),
            abstained=False,
            backend="b",
            model="m",
        )

    good = Citation(chunk_id="c1", section="", quote="Alpha beta", start=0, end=10)
    moved = Citation(chunk_id="c1", section="", quote="Alpha beta", start=1, end=11)
    foreign = Citation(chunk_id="c9", section="", quote="Alpha beta", start=0, end=10)
    check = check_citations(answer(good, moved, foreign), paper, passages)
    assert (check.total, check.valid) == (3, 1)
    assert "differs" in check.problems[0] and "not a retrieved chunk" in check.problems[1]


def test_wrong_paper_is_the_next_paper_in_file_order() -> None:
    questions = [EvalQuestion(str(i), paper, "q", ["a"]) for i, paper in enumerate("AABCC")]
    assert other_papers(questions) == {"A": "B", "B": "C", "C": "A"}
    assert other_papers(questions[:2]) == {}


def assert_consistent(metrics: dict[str, Any]) -> None:
    assert metrics["citations_valid"] in (None, 1.0)
    if metrics["answered"]:
        assert metrics["contains_gold"] == pytest.approx(
            metrics["selective_accuracy"] * metrics["answered"], abs=1e-3
        )
    assert 0.0 <= metrics["f1"] <= 1.0 and metrics["exact_match"] <= metrics["f1"] + 1e-9
    assert metrics["latency_p50_s"] <= metrics["latency_p95_s"]


def test_squad_file_end_to_end(tmp_path: Path, embedder: Any) -> None:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(SQUAD))
    user = tmp_path / "user"
    # The user's library is on a PostgreSQL server that does not answer: the eval must never touch it.
    settings = Settings(data_dir=user, chunk_min_tokens=0, database_url="postgresql://127.0.0.1:1/library")
    report = run_answer_evaluation(path, settings, embedder=embedder, store_dir=tmp_path / "eval")
    data = report.as_dict(details=True)
    metrics = data["metrics"]
    assert (metrics["questions"], data["papers"], metrics["errors"]) == (4, 2, 0)
    assert metrics["wrong_paper_questions"] == 4  # each asked of the other article too
    assert not user.exists()  # the user's library is never touched
    assert_consistent(metrics)
    for row in data["questions"]:
        assert row["other"]["paper_id"] != row["own"]["paper_id"]
        assert row["own"]["confidence"] is not None  # the extractive backend always estimates it
        if not row["own"]["abstained"]:
            assert row["own"]["claims"] == row["own"]["claims_supported"] >= 1


def test_jsonl_against_the_library(tmp_path: Path, embedder: Any, library_dir: Path, ingested: Any) -> None:
    rows = [
        {
            "paper_id": "PMC2795199",
            "question": "Was XMRV detected in the blood of patients with chronic fatigue syndrome?",
            "answers": ["XMRV"],
        },
        {
            "paper_id": "pmid:16060722",  # any id form the service accepts
            "question": "What is the probability that a research claim is true?",
            "answers": ["probability"],
        },
        {"paper_id": "PMC404404", "question": "Is this paper stored?", "answers": ["no"]},
    ]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    report = run_answer_evaluation(path, make_settings(library_dir), embedder=embedder)
    data = report.as_dict(details=True)
    metrics = data["metrics"]
    assert metrics["questions"] == 3 and metrics["errors"] == 1
    missing = data["questions"][2]["own"]
    assert missing["error"].startswith("paper_not_found") and missing["abstained"]
    answered = [row for row in data["questions"][:2] if not row["own"]["abstained"]]
    assert answered
    for row in answered:  # scored as the metric says, whichever sentence the backend chose
        assert row["contains_gold"] == contains_gold(row["own"]["answer"], row["answers"])
        assert row["own"]["citations"] == row["own"]["citations_valid"] >= 1
    assert metrics["citations_valid"] == 1.0
    assert data["questions"][0]["other"]["paper_id"] == "PMC1182327"


def test_eval_command_prints_the_answer_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pmcqa.app.cli import cli
    from pmcqa.core.settings import get_settings

    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(SQUAD))
    monkeypatch.setenv("PMCQA_DATA_DIR", str(tmp_path / "user"))
    get_settings.cache_clear()  # the command reads the process-wide settings
    runner = CliRunner()
    result = runner.invoke(cli, ["eval", str(path), "--answers", "--limit", "2", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["backend"] == "extractive" and data["metrics"]["questions"] == 2
    table = runner.invoke(cli, ["eval", str(path), "--answers", "--limit", "2", "--min-confidence", "0"])
    assert table.exit_code == 0, table.output
    assert "selective accuracy" in table.stdout and "citations valid" in table.stdout
    assert not (tmp_path / "user").exists()


def test_eval_refuses_what_would_waste_or_fake_a_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pmcqa.app.cli import cli
    from pmcqa.core.settings import get_settings

    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(SQUAD))
    monkeypatch.setenv("PMCQA_DATA_DIR", str(tmp_path / "user"))
    get_settings.cache_clear()
    runner = CliRunner()

    def said(result: Any) -> str:
        return " ".join(result.output.split())  # rich wraps long lines

    nowhere = runner.invoke(cli, ["eval", str(path), "--answers", "--details", str(tmp_path / "no" / "d")])
    assert nowhere.exit_code == 2 and "no folder" in said(nowhere)  # before the run, not after it
    alone = runner.invoke(cli, ["eval", str(path), "--details", str(tmp_path / "d.json")])
    assert alone.exit_code == 2 and "--details needs --answers" in said(alone)
    # A backend that cannot answer stops the run (it scored every question 0 and exited 0).
    monkeypatch.setenv("PMCQA_OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    get_settings.cache_clear()
    down = runner.invoke(cli, ["eval", str(path), "--answers", "--limit", "1", "--backend", "openai"])
    assert down.exit_code == 5 and "not ready" in said(down), down.output
