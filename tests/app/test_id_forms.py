"""One paper named five ways gives the same result through every door: `pmcqa search --paper`, `pmcqa ask`,
POST /search and POST /ask all go through the service facade, which reads ids with one grammar."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from pmcqa.app.cli import cli

PAPER_ID = "PMC1182327"
QUESTION = "What is the probability that a research claim is true?"
FORMS = [
    "PMC1182327.1",
    "pmcid:PMC1182327",
    "https://pmc.ncbi.nlm.nih.gov/articles/PMC1182327/",
    "1182327",  # a bare number reads as a PMCID by default (bare_digits)
    "doi",  # the DOI from the stored record
]
runner = CliRunner()


def passages_of(body: dict[str, Any]) -> list[tuple[str, int, int]]:
    return [(hit["chunk_id"], hit["start"], hit["end"]) for hit in body["passages"]]


def answer_of(body: dict[str, Any]) -> tuple[str, str, list[tuple[str, int, int]]]:
    cited = [(citation["chunk_id"], citation["start"], citation["end"]) for citation in body["citations"]]
    return body["paper_id"], body["answer"], cited


@pytest.fixture(scope="module")
def cli_env(library_dir: Any) -> dict[str, str]:
    """The CLI on the session library, with NCBI out of reach (every form here resolves offline)."""
    return {
        "PMCQA_DATA_DIR": str(library_dir),
        "PMCQA_EUTILS_URL": "http://127.0.0.1:9/entrez/eutils/",
        "PMCQA_IDCONV_URL": "http://127.0.0.1:9/idconv/",
    }


@pytest.fixture(scope="module")
def expected(client: Any) -> tuple[list[tuple[str, int, int]], tuple[str, str, list[tuple[str, int, int]]]]:
    """Passages and answer for the canonical PMCID, over HTTP."""
    search = client.post("/search", json={"query": QUESTION, "paper_id": PAPER_ID, "k": 4})
    answer = client.post("/ask", json={"paper_id": PAPER_ID, "question": QUESTION})
    assert search.status_code == 200 and answer.status_code == 200, (search.text, answer.text)
    assert len(search.json()["passages"]) == 4 and answer.json()["citations"]
    return passages_of(search.json()), answer_of(answer.json())


@pytest.mark.parametrize("form", FORMS)
def test_every_id_form_gives_the_same_result_everywhere(
    form: str, client: Any, ingested: dict[str, Any], cli_env: dict[str, str], expected: Any
) -> None:
    paper = ingested["ioannidis"].doi if form == "doi" else form
    assert paper and paper != PAPER_ID
    passages, answer = expected

    http_search = client.post("/search", json={"query": QUESTION, "paper_id": paper, "k": 4})
    assert http_search.status_code == 200, http_search.text
    assert http_search.json()["paper_id"] == PAPER_ID and passages_of(http_search.json()) == passages
    cli_search = runner.invoke(cli, ["search", QUESTION, "--paper", paper, "-k", "4", "--json"], env=cli_env)
    assert cli_search.exit_code == 0, cli_search.output
    assert json.loads(cli_search.stdout)["paper_id"] == PAPER_ID
    assert passages_of(json.loads(cli_search.stdout)) == passages

    http_ask = client.post("/ask", json={"paper_id": paper, "question": QUESTION})
    assert http_ask.status_code == 200, http_ask.text
    assert answer_of(http_ask.json()) == answer
    cli_ask = runner.invoke(cli, ["ask", paper, QUESTION, "--json"], env=cli_env)
    assert cli_ask.exit_code == 0, cli_ask.output
    assert answer_of(json.loads(cli_ask.stdout)) == answer


def test_a_bare_number_not_in_the_library_names_the_other_reading(
    client: Any, ingested: dict[str, Any], cli_env: dict[str, str]
) -> None:
    """`424242` reads as PMC424242; when no such paper is stored, every door says how to ask for PMID 424242
    (as `pmcqa ingest` does), not only that PMC424242 is missing."""
    hint = "if you meant PMID 424242, pass pmid:424242"
    for path, body in [
        ("/ask", {"paper_id": "424242", "question": QUESTION}),
        ("/search", {"query": QUESTION, "paper_id": "424242"}),
    ]:
        response = client.post(path, json=body)
        assert response.status_code == 404 and hint in response.json()["detail"], response.text
    assert client.get("/papers/424242").status_code == 404 and hint in client.get("/papers/424242").text
    for args in (["ask", "424242", QUESTION], ["papers", "show", "424242"]):
        result = runner.invoke(cli, args, env=cli_env)
        assert result.exit_code == 3 and hint in result.output, result.output
    spelled_out = client.post("/ask", json={"paper_id": "PMC424242", "question": QUESTION})
    assert spelled_out.status_code == 404 and "if you meant" not in spelled_out.text  # no other reading
