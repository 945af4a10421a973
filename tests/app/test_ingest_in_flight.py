"""/ask on a paper whose ingest is in flight answers 409, and 200 once the paper is stored.

The job is real end to end except for the queue consumer: POST /ingest marks the paper `queued`; the worker's
`run_batch` runs in a thread of this process with the real pipeline (fake E-utilities → `Ingestor` → the
library's `Store`), which marks it `ingesting`; the test holds the pipeline inside `Store.put_paper` on an
Event and asks over HTTP while the write is in flight.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from fakes.eutils_server import run_fake_eutils
from fastapi.testclient import TestClient

from pmcqa.app.main import create_app
from pmcqa.app.service import Library
from pmcqa.core.settings import Settings
from pmcqa.index.retrieval import Retriever
from pmcqa.index.store import Store
from pmcqa.ingest.jobs import JobStore
from pmcqa.ingest.pipeline import Ingestor
from pmcqa.ingest.worker import build_runtime, run_batch

PMCID = "PMC7000001"  # the XMRV paper, served by the fake under an id no other test uses
# Answered far above the extractive backend's minimum confidence (0.77 vs 0.20): these tests check the
# service, not where the threshold falls ("What did the authors find ... for XMRV?" sat at 0.198: the edge).
QUESTION = "Did they detect XMRV in chronic fatigue syndrome patients?"


def test_ask_while_the_worker_ingests_the_paper_is_409_then_200(
    tmp_path: Path, embedder: Any, ingested: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    article = Path(ingested["xmrv"].source)  # the session library's JATS file of the XMRV paper
    with run_fake_eutils() as fake:
        fake.add_article_file(PMCID, article, assign="pmcid")
        settings = Settings(
            data_dir=tmp_path / "data",
            ncbi_email="tests@example.org",
            ncbi_requests_per_second=50.0,
            **fake.settings_overrides(),
        )
        store = Store(settings)
        library = Library(settings, store, embedder, Retriever(store, embedder, settings), None)
        library.load_backend(settings.answer_backend)

        inside, release = threading.Event(), threading.Event()
        store_paper = store.put_paper

        def held_put_paper(*args: Any, **kwargs: Any) -> Any:
            inside.set()
            if not release.wait(120):
                raise TimeoutError("the test never released the pipeline")
            return store_paper(*args, **kwargs)

        monkeypatch.setattr(store, "put_paper", held_put_paper)
        runtime = build_runtime(
            settings, lambda s, limiter: Ingestor(s, store=store, encoder=embedder, limiter=limiter)
        )
        ask = {"paper_id": PMCID, "question": QUESTION}
        try:
            with TestClient(create_app(settings, library_factory=lambda _settings: library)) as client:
                created = client.post("/ingest", json={"ids": [PMCID]})
                assert created.status_code == 202, created.text
                queued = client.post("/ask", json=ask)
                assert queued.status_code == 409 and "status: queued" in queued.json()["detail"]

                worker = threading.Thread(target=run_batch, args=(runtime, created.json()["job_id"], 0))
                worker.start()
                assert inside.wait(120), "the pipeline never reached put_paper"
                busy = client.post("/ask", json=ask)
                assert busy.status_code == 409, busy.text
                assert busy.json()["error"] == "paper_being_ingested"
                assert "status: ingesting" in busy.json()["detail"]
                assert client.get(f"/papers/{PMCID}").json()["status"] == "ingesting"
                assert client.delete(f"/papers/{PMCID}").status_code == 409
                assert client.post("/search", json={"query": "XMRV", "paper_id": PMCID}).status_code == 409

                release.set()
                worker.join(120)
                assert not worker.is_alive()
                answered = client.post("/ask", json=ask)
                assert answered.status_code == 200, answered.text
                answer = answered.json()
                assert answer["paper_id"] == PMCID and answer["citations"] and not answer["abstained"]
                assert client.get(f"/papers/{PMCID}").json()["status"] == "ingested"
            job = JobStore.for_settings(settings).get(created.json()["job_id"])
            assert job is not None and job.state == "done" and job.counts == {"ingested": 1}
        finally:
            release.set()
            library.close()
