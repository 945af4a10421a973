"""The corpus report (`pmcqa report`): counts that agree with the parser, failures counted, pubmed_parser
optional."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest
import typer
from typer.testing import CliRunner

from pmcqa.app import corpus_report
from pmcqa.app.commands import report
from pmcqa.ingest.jats import parse_jats

pytest.importorskip("pmcqa.ingest.jats", reason="ingest.jats (the JATS parser) is not there yet")

SAMPLES = [
    "allofplos/allofplos/starter_corpus/journal.pbio.0030408.xml",  # one figure
    "allofplos/allofplos/starter_corpus/journal.pone.0008519.xml",  # one table
    "elife-tools/elife00270.xml",  # editorial, no floats
]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    pytest.importorskip("pubmed_parser", reason="the side-by-side row needs the report extra (pmcqa[report])")
    return corpus_report


@pytest.fixture
def corpus(shared_data: Path, tmp_path: Path) -> Path:
    """Three small real files and one broken one, in a folder of their own."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for relative in SAMPLES:
        source = shared_data / "jats" / relative
        if not source.is_file():
            pytest.skip(f"missing {source}")
        shutil.copy(source, folder / source.name)
    (folder / "broken.xml").write_text("<article><front>never closed")
    (folder / "notes.txt").write_text("not a candidate: wrong suffix")
    return folder


def test_rows_agree_with_the_parser_and_count_failures(bench: ModuleType, corpus: Path) -> None:
    files = bench.corpus_files(corpus)
    assert [f.name for f in files] == sorted(["broken.xml", *(Path(s).name for s in SAMPLES)])
    ours, theirs, floor = bench.corpus_report(files)
    assert (ours.tool, theirs.tool, floor.tool) == ("pmcqa", "pubmed_parser", "lxml parse only")
    assert ours.files == theirs.files == floor.files == 4
    assert ours.failures == theirs.failures == floor.failures == 1  # broken.xml, for every row
    assert floor.cpu_seconds > 0 and floor.paragraphs == floor.characters == 0  # times only

    papers = [paper for f in files if f.name != "broken.xml" for paper in parse_jats(f.read_bytes())]
    kinds = [block.kind for paper in papers for block in paper.blocks]
    assert ours.paragraphs == kinds.count("paragraph") > 0
    assert ours.tables == kinds.count("table") >= 1
    assert ours.captions == kinds.count("caption") >= 1
    assert ours.characters == sum(len(p.canonical_text) for p in papers)
    standalone = sum(kinds.count(kind) for kind in ("title", "caption", "table"))
    assert ours.sections > 0 and ours.chunks >= standalone > 0
    assert theirs.paragraphs > 0 and theirs.characters > 0
    assert theirs.sections is None and theirs.chunks is None  # columns pubmed_parser does not produce
    assert ours.seconds > 0 and theirs.seconds > 0


def test_pmcqa_report_command_prints_the_table(corpus: Path) -> None:
    cli = typer.Typer()
    cli.callback()(lambda: None)
    report.register(cli)
    result = CliRunner().invoke(cli, ["report", str(corpus)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "(4 files)" in result.stdout and "Error" not in result.stdout
    assert any(line.split("│")[1].strip() == "pmcqa" for line in lines if line.count("│") > 5)
    assert any(line.split("│")[1].strip() == "pubmed_parser" for line in lines if line.count("│") > 5)
    assert any(line.split("│")[1].strip() == "lxml parse only" for line in lines if line.count("│") > 5)
    assert "above the lxml parse: pmcqa" in " ".join(result.stdout.split())

    missing = CliRunner().invoke(cli, ["report", str(corpus / "nope")])
    assert missing.exit_code == 2 and "not a folder" in missing.stderr
    (corpus / "empty").mkdir()
    empty = CliRunner().invoke(cli, ["report", str(corpus / "empty")])  # a table of zeros was no report
    assert empty.exit_code == 2 and "no JATS files" in empty.stderr


def test_without_pubmed_parser_the_report_names_the_extra(
    corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pubmed_parser", None)  # import now raises ImportError: "not installed"
    rows = corpus_report.corpus_report(corpus_report.corpus_files(corpus))
    assert [row.tool for row in rows] == ["pmcqa"] and rows[0].files == 4 and rows[0].chunks

    cli = typer.Typer()
    cli.callback()(lambda: None)
    report.register(cli)
    result = CliRunner().invoke(cli, ["report", str(corpus)])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.count("│") > 5]
    assert [line.split("│")[1].strip() for line in lines] == ["pmcqa"]  # the only row
    assert "pip install 'pmcqa[report]'" in " ".join(result.stdout.split())
