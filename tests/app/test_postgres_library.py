"""The service over a PostgreSQL library (`PMCQA_DATABASE_URL`): the same routes, answers and refusals as over
SQLite. The session's real papers are copied, with their vectors, into a fresh database; the API opens it
through `open_library` as a deployed replica would.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_read_only_commands
from fastapi.testclient import TestClient
from pydantic import SecretStr
from typer.testing import CliRunner

from pmcqa.app.cli import cli
from pmcqa.app.main import create_app
from pmcqa.app.service import Library
from pmcqa.core.settings import Settings, get_settings
from pmcqa.core.status import Status
from pmcqa.index.library import open_library
from pmcqa.index.store import open_store

QUESTION = "Why are most published research findings false?"


@pytest.fixture
def pg_client(library, embedder, scratch_postgres_database, tmp_path: Path) -> Iterator:
    url = scratch_postgres_database("api")
    # The session library's settings, on PostgreSQL, with a data dir of its own (nothing shared but the URL).
    settings = library.settings.model_copy(
        update={"data_dir": tmp_path / "replica", "database_url": SecretStr(url)}
    )
    source = library.store  # the session's SQLite library
    with open_store(settings) as target:
        for paper_id in source.paper_ids():
            record = source.get_paper(paper_id)
            assert record is not None
            _, vectors = source.get_vectors(paper_id)
            target.put_paper(record, source.get_chunks(paper_id), embedder, vectors=vectors)
    parts = open_library(settings, writable=True, embedder=embedder)
    assert type(parts.store).__name__ == "PostgresStore"
    replica = Library(settings, parts.store, parts.embedder, parts.retriever, None)
    replica.load_backend(settings.answer_backend)
    app = create_app(settings, library_factory=lambda _settings: replica)
    with TestClient(app) as client:
        yield client, replica
    replica.close()


def test_the_api_answers_lists_searches_and_deletes_on_postgres(pg_client, ingested) -> None:
    client, library = pg_client
    answer = client.post("/ask", json={"paper_id": "pmid:16060722", "question": QUESTION})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["paper_id"] == "PMC1182327" and not body["abstained"] and body["citations"]
    text = ingested["ioannidis"].text
    for citation in body["citations"]:  # verbatim spans of the stored paper, as on SQLite
        assert text[citation["start"] : citation["end"]] == citation["quote"]

    papers = client.get("/papers").json()
    assert papers["total"] == 2 and {p["paper_id"] for p in papers["papers"]} == {"PMC1182327", "PMC2795199"}
    detail = client.get("/papers/10.1371/journal.pone.0008519").json()
    assert detail["paper_id"] == "PMC2795199" and detail["status"] == "ingested"

    # Library-wide search goes through the store's library search (HNSW where pgvector is installed).
    wide = client.post("/search", json={"query": "retrovirus in chronic fatigue syndrome", "k": 2})
    assert wide.status_code == 200, wide.text
    assert wide.json()["passages"][0]["paper_id"] == "PMC2795199"

    library.store.set_status("PMC2795199", Status.INGESTING)
    assert client.post("/search", json={"query": "XMRV", "paper_id": "PMC2795199"}).status_code == 409
    library.store.set_status("PMC2795199", Status.INGESTED)

    assert client.delete("/papers/PMC2795199").status_code == 200
    assert client.get("/papers/PMC2795199").status_code == 404
    again = client.post("/search", json={"query": "retrovirus in chronic fatigue syndrome", "k": 2})
    assert all(hit["paper_id"] != "PMC2795199" for hit in again.json()["passages"])


def _terminate_backends(url: str) -> None:
    import psycopg

    database = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        )


def test_a_database_restart_costs_no_request_and_an_outage_is_a_503(pg_client, monkeypatch) -> None:
    client, library = pg_client
    assert client.get("/papers").status_code == 200
    url = library.settings.database_url.get_secret_value()
    _terminate_backends(url)  # what a server restart does to the pool's connections
    for _ in range(3):  # each dropped connection is replaced, not handed to a request to fail (a 500 each)
        assert client.get("/papers").status_code == 200

    import psycopg

    def down(*_args: object, **_kwargs: object) -> None:
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(type(library.store), "list_papers", down)  # the database is gone mid-request
    refused = client.get("/papers")
    assert refused.status_code == 503 and refused.json()["error"] == "database_unavailable", refused.text
    assert refused.headers["Retry-After"]


def _tables(url: str) -> list[str]:
    import psycopg

    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
    return [row[0] for row in rows]


def test_read_only_commands_refuse_a_database_without_the_library_and_create_nothing(
    scratch_postgres_database, monkeypatch, tmp_path: Path, capsys, request
) -> None:
    """A database without pmcqa's tables (a mistyped database name): ask, search, papers, jobs and eval of
    JSONL questions exit 2 naming it, as for a missing PMCQA_DATA_DIR, where they migrated it into an empty
    library and answered "not found" or nothing. A writer still creates the tables; readers then use them."""
    url = scratch_postgres_database("readers")
    data_dir = tmp_path / "data"
    monkeypatch.setenv("PMCQA_DATABASE_URL", url)
    monkeypatch.setenv("PMCQA_DATA_DIR", str(data_dir))
    get_settings.cache_clear()  # eval reads the process-wide settings: these, and none cached after
    request.addfinalizer(get_settings.cache_clear)
    for args, code, last_line in run_read_only_commands(monkeypatch, capsys, tmp_path):
        assert code == 2 and last_line == (
            f"pmcqa: no library in the PostgreSQL database {url} (it has no pmcqa tables): check "
            "PMCQA_DATABASE_URL, or run `pmcqa ingest` or `pmcqa serve` first (they create them)"
        ), (args, last_line)
        assert _tables(url) == [] and not data_dir.exists(), args

    with open_store(Settings()):  # what `ingest`, `serve`, `worker` and `reindex` open: it creates them
        pass
    assert "papers" in _tables(url)
    listed = CliRunner().invoke(cli, ["papers", "list", "--json"])
    assert listed.exit_code == 0 and json.loads(listed.stdout)["total"] == 0, listed.output
    assert CliRunner().invoke(cli, ["jobs"]).exit_code == 0
