"""The crash test on the real pipeline: fake E-utilities → Ingestor → Store, worker SIGKILLed mid-job.

After the restart every id is ingested exactly once: one record per paper, its chunks once (unique ids, one
vector each), and at the moment of the kill no paper was visible without all its chunks.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from fakes.eutils_server import Fault, run_fake_eutils
from worker_helpers import fake_worker_settings, wait_for

from pmcqa.index.store import Store
from pmcqa.ingest.jobs import JobStore
from pmcqa.ingest.worker import enqueue_job


def small_articles(shared_data: Path, count: int) -> list[Path]:
    rows = [json.loads(line) for line in (shared_data / "jats" / "INVENTORY.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("has_body") and r.get("n_articles") == 1 and r["body_chars"] < 12_000]
    rows.sort(key=lambda r: r["body_chars"])
    return [shared_data / "jats" / r["file"] for r in rows[:count]]


def assert_complete(store, paper_ids: list[str]) -> int:  # type: ignore[no-untyped-def]
    """Every stored paper has all its chunks, each once, each with a vector; returns the chunk total."""
    total = 0
    for paper_id in paper_ids:
        chunks = store.get_chunks(paper_id)
        assert chunks, f"{paper_id} visible without chunks"
        ids = [chunk.chunk_id for chunk in chunks]
        assert len(ids) == len(set(ids)), f"duplicate chunks in {paper_id}"
        vector_ids, vectors = store.get_vectors(paper_id)
        assert sorted(vector_ids) == sorted(ids) and len(vectors) == len(ids)
        total += len(ids)
    return total


@pytest.mark.slow
def test_sigkill_mid_job_real_pipeline(tmp_path: Path, shared_data: Path, workers_factory) -> None:  # type: ignore[no-untyped-def]
    files = small_articles(shared_data, 5)
    ids = [f"PMC{8000001 + n}" for n in range(len(files))] + ["PMC8999999"]  # the last one is not in PMC
    with run_fake_eutils() as fake:
        for pmcid, path in zip(ids, files, strict=False):
            fake.add_article_file(pmcid, path, assign="pmcid")
        fake.script("efetch", *[Fault(delay_s=0.5) for _ in range(10)])  # slow NCBI: time to kill mid-job
        settings = fake_worker_settings(
            tmp_path, job_batch_size=2, job_lease_s=3.0, ncbi_backoff_s=0.01, ncbi_backoff_max_s=0.05,
            **fake.settings_overrides(),
        )
        jobs = JobStore.for_settings(settings)
        job = enqueue_job(settings, ids)
        procs = workers_factory(settings)

        def finished() -> int:
            current = jobs.get(job.job_id, items=False)
            return current.total - current.counts.get("pending", 0)

        first = procs.start(workers=1)
        wait_for(lambda: finished() >= 2, 180, "the first batch")
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert finished() < len(ids), "the job ended before the kill"
        with Store(settings) as store:  # what a reader sees right after the kill: whole papers or none
            visible = [paper.paper_id for paper in store.list_papers(limit=100)]
            assert_complete(store, visible)

        procs.start(workers=1)
        wait_for(lambda: (j := jobs.get(job.job_id)) and j.finished, 180, "the job to finish")
    done = jobs.get(job.job_id)
    assert done.state == "done", procs.logs()
    assert done.counts == {"ingested": len(files), "not-found": 1}, done.items
    assert "re-enqueueing job" in procs.logs()
    with Store(settings) as store:
        assert store.count_papers() == len(files)
        total = assert_complete(store, ids[:-1])
        assert store.count_chunks() == total
        for item in done.items[:-1]:
            assert item.paper_id == item.id and item.chunks == len(store.get_chunks(item.id))
