"""Issue 12 on the ingest side, over real HTTP with a real worker process: POST /ingest answers 202 with a
Location, honours Idempotency-Key, job times are ISO 8601; the worker serves Prometheus metrics and writes
one JSON log line per ingest outcome carrying the request id of the POST /ingest that created the job."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from types import SimpleNamespace

import httpx
from worker_helpers import LiveServer, free_port, wait_for

from pmcqa.app.main import create_app
from pmcqa.core.settings import Settings


def _stub_library(settings):  # type: ignore[no-untyped-def]
    # /ingest and /jobs never touch the library; a stub keeps the embedding model out of these tests.
    return SimpleNamespace(settings=settings, store=None, close=lambda: None)


def test_ingest_location_idempotency_iso_times_worker_metrics_and_outcome_logs(
    backend_settings: Settings, workers_factory
) -> None:  # type: ignore[no-untyped-def]
    metrics_port = free_port()  # jobs and queue in SQLite files, or in the test's PostgreSQL database
    settings = backend_settings.model_copy(update={"worker_metrics_port": metrics_port, "log_format": "json"})
    ids = ["PMC4001", "PMC4002", "PMC4009"]
    with LiveServer(create_app(settings, library_factory=_stub_library)) as server:
        http = httpx.Client(base_url=server.url, timeout=30, follow_redirects=False)
        headers = {"Idempotency-Key": "key-1", "X-Request-ID": "ingest-req-1"}
        created = http.post("/ingest", json={"ids": ids}, headers=headers)
        assert created.status_code == 202, created.text
        job_id = created.json()["job_id"]
        assert created.headers["location"] == f"/jobs/{job_id}" == created.json()["status_url"]
        assert "idempotent-replayed" not in created.headers

        # A retry (e.g. after a timeout) returns the same job and creates nothing.
        retried = http.post("/ingest", json={"ids": ids}, headers={"Idempotency-Key": "key-1"})
        assert retried.status_code == 202 and retried.json()["job_id"] == job_id
        assert retried.headers["location"] == f"/jobs/{job_id}"
        assert retried.headers["idempotent-replayed"] == "true"
        reused = http.post("/ingest", json={"ids": ["PMC4003"]}, headers={"Idempotency-Key": "key-1"})
        assert reused.status_code == 422 and reused.json()["error"] == "idempotency_key_reused"
        other = http.post("/ingest", json={"ids": ["PMC4005"]}, headers={"Idempotency-Key": "key-2"})
        assert other.status_code == 202 and other.json()["job_id"] != job_id
        assert len(http.get("/jobs").json()["jobs"]) == 2

        queued = http.get(created.headers["location"]).json()
        stamps = [datetime.fromisoformat(queued[key]) for key in ("created", "updated")]
        assert all(stamp.utcoffset() == timedelta(0) for stamp in stamps)  # ISO 8601, UTC
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", queued["created"])
        assert queued["request_id"] == "ingest-req-1"

        workers = workers_factory(settings, ingestor="slow")
        workers.start()
        wait_for(lambda: http.get(f"/jobs/{job_id}").json()["state"] == "done", 60, "the job to finish")
        wait_for(lambda: http.get(f"/jobs/{other.json()['job_id']}").json()["state"] == "done", 60, "job 2")
        done = http.get(f"/jobs/{job_id}").json()
        assert datetime.fromisoformat(done["updated"]) >= datetime.fromisoformat(done["created"])

        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    assert 'pmcqa_worker_jobs{state="done"} 2.0' in metrics
    assert 'pmcqa_worker_jobs{state="queued"} 0.0' in metrics
    assert 'pmcqa_papers_ingested_total{status="ingested"} 3.0' in metrics
    assert 'pmcqa_papers_ingested_total{status="not-found"} 1.0' in metrics
    assert "pmcqa_worker_batch_seconds_count 2.0" in metrics
    assert "pmcqa_ncbi_requests_total" in metrics and "pmcqa_ncbi_retries_total" in metrics

    workers.stop_all()
    outcomes = [
        line
        for line in (json.loads(text) for text in workers.logs().splitlines() if text.startswith("{"))
        if line["logger"] == "pmcqa.ingest.outcome"
    ]
    assert sorted(line["requested"] for line in outcomes) == ["PMC4001", "PMC4002", "PMC4005", "PMC4009"]
    first_job = [line for line in outcomes if line["job_id"] == job_id]
    assert {line["request_id"] for line in first_job} == {"ingest-req-1"}
    assert {line["requested"]: line["status"] for line in first_job}["PMC4009"] == "not-found"


def test_one_paper_spelled_several_ways_is_one_item_and_one_request(backend_settings: Settings) -> None:
    with LiveServer(create_app(backend_settings, library_factory=_stub_library)) as server:
        http = httpx.Client(base_url=server.url, timeout=30)
        spellings = ["PMC4101", "pmc4101", " PMC4101 ", "https://pmc.ncbi.nlm.nih.gov/articles/PMC4101/",
                     "10.1234/ABC", "doi:10.1234/abc"]
        created = http.post("/ingest", json={"ids": spellings}, headers={"Idempotency-Key": "spelled"})
        assert created.status_code == 202 and created.json()["total"] == 2, created.text
        job = http.get(created.headers["location"]).json()
        assert [item["id"] for item in job["items"]] == ["PMC4101", "10.1234/ABC"]  # first spellings
        retried = http.post("/ingest", json={"ids": ["pmc4101", "10.1234/abc"]},
                            headers={"Idempotency-Key": "spelled"})
        assert retried.status_code == 202 and retried.json()["job_id"] == created.json()["job_id"]
        empty = http.post("/ingest", json={"ids": ["PMC4102"]}, headers={"Idempotency-Key": ""})
        assert empty.status_code == 422 and "idempotency" in empty.text.lower(), empty.text
