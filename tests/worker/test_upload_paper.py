"""POST /papers: one local JATS article, ingested synchronously through the real pipeline and store."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from worker_helpers import LiveServer, fake_worker_settings, wait_for

from pmcqa.app.main import create_app

ARTICLE = "jats/allofplos/allofplos/starter_corpus/journal.pbio.0030408.xml"  # short commentary


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    pytest.importorskip("pmcqa.ingest.pipeline", reason="ingest.pipeline (Ingestor) not available")
    settings = fake_worker_settings(tmp_path_factory.mktemp("upload"), max_upload_bytes=2_000_000)
    with LiveServer(create_app(settings)) as live:
        # The library (embedding model) loads in the background after the port opens.
        wait_for(lambda: httpx.get(f"{live.url}/readyz", timeout=10).status_code == 200, 300, "/readyz 200")
        yield live.url


def test_upload_returns_id_and_outline(server: str, shared_data: Path) -> None:
    body = (shared_data / ARTICLE).read_bytes()
    reply = httpx.post(f"{server}/papers", params={"id": "PMC7000001"}, content=body,
                       headers={"Content-Type": "application/xml"}, timeout=120)
    assert reply.status_code == 200, reply.text
    paper = reply.json()
    assert paper["paper_id"] == "PMC7000001" and paper["status"] == "ingested"
    assert paper["title"] == "Stimulating the Brain Makes the Fingers More Sensitive"
    assert paper["chunks"] and paper["chunks"] > 0
    assert isinstance(paper["outline"], list)
    stored = httpx.get(f"{server}/papers/PMC7000001", timeout=30).json()
    assert stored["title"] == paper["title"] and stored["chunks"] == paper["chunks"]


def test_upload_rejects_what_is_not_an_article(server: str) -> None:
    empty = httpx.post(f"{server}/papers", content=b"   ", timeout=30)
    assert empty.status_code == 422 and empty.json()["error"] == "empty_body"
    junk = httpx.post(f"{server}/papers", content=b"<not-jats>hello</not-jats>", timeout=60)
    assert junk.status_code == 422 and junk.json()["error"] == "not_ingested", junk.text
