"""A PostgreSQL library without Redis, end to end: a real `pmcqa worker` process (the real pipeline and
embedding model) drains a job from the PostgresHuey queue against the fake E-utilities server.

Nothing of the job machinery lives in a file: the jobs, their leases, the worker registry, the id map and the
queue are tables of the library database, and every paper is fetched and stored exactly once.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import psycopg
import pytest
from fakes.eutils_server import run_fake_eutils
from pydantic import SecretStr
from worker_helpers import fake_worker_settings, wait_for

from pmcqa.index.store import open_store
from pmcqa.ingest import worker
from pmcqa.ingest.jobs import JobStore, PostgresJobStore, live_workers
from pmcqa.ingest.worker import describe_queue, enqueue_job, get_huey

PMCIDS = [f"PMC{7100 + n}" for n in range(5)]
BY_PMID = ("PMC7200", "71007200")  # requested as pmid:…, resolved through the ID Converter (the id map)
MISSING = "PMC7999"


def _article(pmcid: str, pmid: str | None = None) -> bytes:
    topic = f"protein {pmcid[3:]}"
    paragraphs = "".join(
        f"<p>In experiment {n} the {topic} bound its receptor {n + 2} times more often than the control, "
        f"which suggests that {topic} regulates the pathway studied in section {n}.</p>"
        for n in range(6)
    )
    pmid_id = f'<article-id pub-id-type="pmid">{pmid}</article-id>' if pmid else ""
    return (
        '<article article-type="research-article"><front><journal-meta><journal-title-group><journal-title>'
        "Test Journal</journal-title></journal-title-group></journal-meta><article-meta>"
        f'<article-id pub-id-type="pmcid">{pmcid}</article-id>{pmid_id}'
        f"<title-group><article-title>The role of {topic}</article-title></title-group>"
        f"<abstract><p>We studied {topic}.</p></abstract></article-meta></front>"
        f"<body><sec><title>Results</title>{paragraphs}</sec></body></article>"
    ).encode()


@pytest.mark.slow
def test_a_real_worker_drains_a_job_on_postgres_without_redis(
    tmp_path: Path, workers_factory, scratch_postgres_database
) -> None:  # type: ignore[no-untyped-def]
    url = scratch_postgres_database("e2e")
    with run_fake_eutils() as fake:
        for pmcid in PMCIDS:
            fake.add_article(pmcid, _article(pmcid))
        fake.add_article(BY_PMID[0], _article(*BY_PMID))
        fake.add_idmap(BY_PMID[0], pmid=BY_PMID[1])
        settings = fake_worker_settings(
            tmp_path, database_url=SecretStr(url), job_batch_size=2, job_lease_s=10.0,
            ncbi_backoff_s=0.01, ncbi_backoff_max_s=0.05, **fake.settings_overrides(),
        )  # fmt: skip
        assert settings.redis_url is None
        assert describe_queue(settings).startswith("PostgreSQL queue")
        jobs = JobStore.for_settings(settings)
        assert isinstance(jobs, PostgresJobStore)
        requested = [*PMCIDS, f"pmid:{BY_PMID[1]}", MISSING]
        job = enqueue_job(settings, requested)
        assert len(get_huey(settings).pending()) == 4  # 7 ids in batches of 2, waiting in PostgreSQL

        workers = workers_factory(settings)
        proc = workers.start(workers=2)  # the real `python -m pmcqa.app.cli worker`
        wait_for(lambda: live_workers(settings), 120, "the worker to register in the database")
        done = wait_for(lambda: (j := jobs.get(job.job_id)) and j.finished and j, 300, "the job to finish")
        workers.stop_all()
        fetched = Counter(i for r in fake.requests_to("efetch") for i in r.ids())

    assert done.state == "done", workers.logs()
    assert done.counts == {"ingested": 6, "not-found": 1}, done.items
    assert proc.returncode == 0, workers.logs()
    assert not live_workers(settings)  # a graceful stop deregistered it
    papers = [*PMCIDS, BY_PMID[0]]
    # Fetched exactly once each (no batch ran twice) and stored exactly once, whole.
    assert fetched == Counter(pmcid[3:] for pmcid in [*papers, MISSING]), fetched  # efetch takes digits
    with open_store(settings) as store:
        assert sorted(p.paper_id for p in store.list_papers(limit=100)) == sorted(papers)
        for item in done.items:
            if item.status != "ingested":
                continue
            chunk_ids = [chunk.chunk_id for chunk in store.get_chunks(item.paper_id)]
            assert chunk_ids and len(chunk_ids) == len(set(chunk_ids)) == item.chunks
            assert store.get_status(item.paper_id).status == "ingested"
    assert {i.id: i.paper_id for i in done.items}[f"pmid:{BY_PMID[1]}"] == BY_PMID[0]

    # Nothing of the job machinery in a file; all of it in the database.
    for name in ("jobs.sqlite3", "queue.sqlite3", "idmap.sqlite3"):
        assert not (settings.data_dir / name).exists(), name
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM huey_task").fetchone() == (0,)  # drained
        assert conn.execute("SELECT count(*) FROM job_batches WHERE done = 1").fetchone() == (4,)
        idmap = conn.execute("SELECT pmcid FROM idmap WHERE kind = 'pmid' AND key = %s", (BY_PMID[1],))
        assert idmap.fetchone() == (BY_PMID[0],)


def test_processes_starting_together_on_a_new_database_create_the_queue_once(
    tmp_path: Path, scratch_postgres_database
) -> None:  # type: ignore[no-untyped-def]
    """huey's own table creation fails when several processes run it at once on a new database; the queue
    is built with it done once under a lock, so every racer gets a working queue."""
    url = scratch_postgres_database("hueyddl")
    settings = fake_worker_settings(tmp_path, database_url=SecretStr(url))
    start, built, errors = threading.Barrier(8), [], []

    def build() -> None:
        start.wait()
        try:
            built.append(worker._make_huey(settings))  # what each process does first (no per-process cache)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(built) == 8, errors
    built[0].enqueue(built[0].task(name="probe")(lambda: None).s())
    assert [huey.pending_count() for huey in built] == [1] * 8  # one queue, seen by all


def test_tasks_lost_from_the_postgres_queue_are_requeued(
    tmp_path: Path, workers_factory, scratch_postgres_database
) -> None:  # type: ignore[no-untyped-def]
    """Batches neither leased nor in the queue (their tasks taken by a worker killed before it leased them, or
    deleted) are seen missing from `PostgresHuey.pending()` and re-queued after a lease's length."""
    url = scratch_postgres_database("lost")
    settings = fake_worker_settings(tmp_path, database_url=SecretStr(url), job_lease_s=1.0)
    jobs = JobStore.for_settings(settings)
    job = enqueue_job(settings, [f"PMC{500 + n}" for n in range(10)])
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("DELETE FROM huey_task").rowcount == 2  # both batches' tasks gone
    workers_factory(settings, ingestor="slow").start(workers=1)
    done = wait_for(lambda: (j := jobs.get(job.job_id)) and j.finished and j, 60, "the job to finish")
    assert done.state == "done" and done.counts == {"ingested": 9, "not-found": 1}
    assert "re-queued 2 batch(es)" in (done.notice or ""), done.notice
