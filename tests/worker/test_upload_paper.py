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


BODILESS = (
    b"<article><front><article-meta><title-group><article-title>Stub</article-title></title-group>"
    b"<abstract><p>Only an abstract.</p></abstract></article-meta></front></article>"
)


def test_upload_without_body_is_stored_as_no_full_text_but_never_over_full_text(
    server: str, shared_data: Path
) -> None:
    post = lambda paper_id, body: httpx.post(  # noqa: E731
        f"{server}/papers", params={"id": paper_id}, content=body,
        headers={"Content-Type": "application/xml"}, timeout=120,
    )
    stub = post("PMC7000002", BODILESS)
    assert stub.status_code == 200, stub.text
    assert stub.json()["status"] == "no-full-text" and "no body text" in stub.json()["reason"]
    assert httpx.get(f"{server}/papers/PMC7000002", timeout=30).json()["source"] == "upload"  # no server path

    full = post("PMC7000003", (shared_data / ARTICLE).read_bytes())
    assert full.status_code == 200, full.text
    kept = post("PMC7000003", BODILESS)
    assert kept.status_code == 422 and kept.json()["error"] == "not_ingested"
    assert "full text already stored under PMC7000003 is kept" in kept.json()["detail"]
    stored = httpx.get(f"{server}/papers/PMC7000003", timeout=30).json()
    assert stored["status"] == "ingested" and stored["chunks"] == full.json()["chunks"]


def test_upload_id_errors_say_what_is_wrong_in_words(server: str) -> None:
    reply = httpx.post(f"{server}/papers", params={"id": "bogus"}, content=BODILESS, timeout=30)
    assert reply.status_code == 422 and reply.json()["error"] == "invalid_id", reply.text
    assert "(?" not in reply.json()["detail"] and len(reply.json()["detail"]) < 200  # not the regex
    no_id = httpx.post(f"{server}/papers", content=b"<article><body><p>Hi.</p></body></article>", timeout=60)
    assert no_id.status_code == 422 and "?id=" in no_id.json()["detail"], no_id.text
