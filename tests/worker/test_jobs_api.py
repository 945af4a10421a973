"""The jobs API over real HTTP (uvicorn on a socket) with a real worker process draining the queue."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import pytest
from worker_helpers import LiveServer, wait_for

from pmcqa.app.main import create_app
from pmcqa.core.settings import Settings


def _stub_library(settings):  # type: ignore[no-untyped-def]
    # /ingest and /jobs never touch the library; a stub keeps the embedding model out of these tests.
    return SimpleNamespace(settings=settings, store=None, close=lambda: None)


@pytest.fixture
def api(backend_settings: Settings):  # type: ignore[no-untyped-def]
    """The API on each backend: jobs and queue in SQLite files, or in the test's PostgreSQL database."""
    settings = backend_settings.model_copy(update={"job_max_ids": 50, "max_upload_bytes": 1000})
    app = create_app(settings, library_factory=_stub_library)
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        yield settings, client


def test_job_runs_to_the_end(api, workers_factory) -> None:  # type: ignore[no-untyped-def]
    settings, client = api
    ids = [f"PMC{3000 + n}" for n in range(12)] + ["PMC3000"]  # a repeat is ingested once
    reply = client.post("/ingest", json={"ids": ids})
    assert reply.status_code == 202, reply.text
    job_id = reply.json()["job_id"]
    assert reply.json()["total"] == 12 and reply.json()["status_url"] == f"/jobs/{job_id}"
    queued = client.get(f"/jobs/{job_id}").json()
    assert queued["state"] == "queued" and queued["counts"] == {"pending": 12}  # handlers only enqueue

    workers_factory(settings, ingestor="slow").start(workers=2)
    done = wait_for(lambda: (j := client.get(f"/jobs/{job_id}").json())["state"] == "done" and j, 60, "done")
    assert done["counts"] == {"ingested": 11, "not-found": 1}
    items = {item["id"]: item for item in done["items"]}
    assert items["PMC3009"] == {"id": "PMC3009", "status": "not-found", "paper_id": "PMC3009",
                                "reason": "no such id", "title": "T PMC3009", "chunks": 3}
    assert items["PMC3001"]["status"] == "ingested" and items["PMC3001"]["chunks"] == 3

    listed = client.get("/jobs").json()["jobs"]
    assert [job["job_id"] for job in listed] == [job_id] and listed[0]["items"] is None


def test_bad_requests_are_clear(api) -> None:  # type: ignore[no-untyped-def]
    settings, client = api
    empty = client.post("/ingest", json={"ids": []})
    assert empty.status_code == 422 and empty.json()["error"] == "no_ids"
    many = client.post("/ingest", json={"ids": [f"PMC{n}" for n in range(1, 52)]})
    assert many.status_code == 422 and many.json()["error"] == "too_many_ids"
    assert "at most 50" in many.json()["detail"]
    bad = client.post("/ingest", json={"ids": ["PMC1", "banana", "PMC0", "10.1234/abc"]})
    assert bad.status_code == 422 and bad.json()["invalid_ids"] == ["banana", "PMC0"]
    assert client.post("/ingest", content=b"{not json").status_code == 422
    assert client.post("/ingest", json={"ids": "PMC1"}).json()["error"] == "invalid_request"
    huge = client.post("/ingest", content=b'{"ids": ["' + b"x" * settings.max_body_bytes + b'"]}')
    assert huge.status_code == 413 and huge.json()["error"] == "payload_too_large"
    upload = client.post("/papers", content=b"<article>" + b" " * 2000 + b"</article>")
    assert upload.status_code == 413
    missing = client.get("/jobs/nope")
    assert missing.status_code == 404 and missing.json()["error"] == "job_not_found"


def test_jobs_survive_an_api_restart(backend_settings: Settings) -> None:
    settings = backend_settings
    with LiveServer(create_app(settings, library_factory=_stub_library)) as server:
        job_id = httpx.post(f"{server.url}/ingest", json={"ids": ["PMC1", "PMC2"]}).json()["job_id"]
    with LiveServer(create_app(settings, library_factory=_stub_library)) as server:
        job = httpx.get(f"{server.url}/jobs/{job_id}").json()
    assert job["total"] == 2 and [item["id"] for item in job["items"]] == ["PMC1", "PMC2"]
