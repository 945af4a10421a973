"""`pmcqa parse FILE`: JSON paper + chunks, the rich summary, and clean exit-2 errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from pmcqa.app.commands import parse

pytest.importorskip("pmcqa.ingest.jats", reason="ingest.jats (the JATS parser) is not there yet")

SMALL = "allofplos/allofplos/starter_corpus/journal.pone.0008519.xml"  # PLOS: one table, no PMCID


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    # Only this command: the test does not depend on every other module of app.commands importing cleanly.
    app = typer.Typer()
    app.callback()(lambda: None)
    parse.register(app)
    return app


@pytest.fixture
def small_file(shared_data: Path) -> Path:
    path = shared_data / "jats" / SMALL
    if not path.is_file():
        pytest.skip(f"missing {path}")
    return path


def run(cli: typer.Typer, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["parse", *args])
    return result.exit_code, result.stdout, result.stderr


def test_json_prints_paper_and_verbatim_chunks(cli: typer.Typer, small_file: Path) -> None:
    code, out, _ = run(cli, str(small_file), "--json", "--id", "pmc999")  # normalized to PMC999
    assert code == 0
    document = json.loads(out)
    paper, chunks = document["paper"], document["chunks"]
    assert paper["title"] and paper["blocks"]
    text = "\n\n".join(block["text"] for block in paper["blocks"])  # Paper.canonical_text
    assert chunks and [c["ordinal"] for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert chunk["paper_id"] == "PMC999"
        assert text[chunk["start"] : chunk["end"]] == chunk["text"]
    tables = [c for c in chunks if c["kind"] == "table"]
    assert tables and all(c["label"] == "Table 1" for c in tables)


def test_default_paper_id_is_the_one_ingest_uses(cli: typer.Typer, small_file: Path) -> None:
    # The rule of `pmcqa ingest --xml`: the PMCID, else the DOI (this PLOS file has no PMCID).
    code, out, _ = run(cli, str(small_file), "--json")
    assert code == 0
    document = json.loads(out)
    assert document["paper"]["pmcid"] is None and document["paper"]["doi"]
    assert {c["paper_id"] for c in document["chunks"]} == {document["paper"]["doi"]}


def test_a_file_without_pmcid_or_doi_needs_an_id(cli: typer.Typer, tmp_path: Path) -> None:
    path = tmp_path / "anonymous.xml"
    path.write_bytes(
        b"<article><front><article-meta><title-group><article-title>T</article-title>"
        b"</title-group></article-meta></front><body><p>Text.</p></body></article>"
    )
    code, out, err = run(cli, str(path), "--json")
    assert code == 2 and out == "" and "no PMCID or DOI" in err and "--id" in err
    code, out, _ = run(cli, str(path), "--json", "--id", "PMC5")
    assert code == 0 and {c["paper_id"] for c in json.loads(out)["chunks"]} == {"PMC5"}


def test_summary_shows_title_ids_outline_and_chunk_count(cli: typer.Typer, small_file: Path) -> None:
    code, out, _ = run(cli, str(small_file))
    assert code == 0
    document = json.loads(run(cli, str(small_file), "--json")[1])
    assert document["paper"]["doi"] in out
    assert document["paper"]["title"][:40] in out.replace("\n", " ")
    assert "sections" in out and f"{len(document['chunks'])} chunks" in out
    for section in document["paper"]["sections"]:
        assert (section["title"] or "")[:20] in out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        (b"this is not xml", "not a readable JATS article"),
        (b"<html><body><p>hi</p></body></html>", "not a readable JATS article: root element <html> holds no"),
    ],
)
def test_bad_input_exits_2_with_a_message_and_no_traceback(
    cli: typer.Typer, tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "input.xml"
    if content is not None:
        path.write_bytes(content)
    code, out, err = run(cli, str(path), "--json")
    assert code == 2
    assert message in err and "Traceback" not in err + out
    assert err.count("JATS") <= 1  # one prefix says what is wrong, not one per layer
    assert out == ""


@pytest.mark.parametrize("bad_id", ["pmid:123", "10.12/x", "not an id"])
def test_id_must_be_a_pmcid_or_doi(cli: typer.Typer, small_file: Path, bad_id: str) -> None:
    code, out, err = run(cli, str(small_file), "--json", "--id", bad_id)
    assert code == 2 and "--id" in err and out == ""


def test_id_may_be_a_doi_as_for_ingest(cli: typer.Typer, small_file: Path) -> None:
    code, out, _ = run(cli, str(small_file), "--json", "--id", "https://doi.org/10.1000/xyz")
    assert code == 0 and {c["paper_id"] for c in json.loads(out)["chunks"]} == {"10.1000/xyz"}
